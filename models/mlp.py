"""The paper's multilayer perceptron and the edge/cloud split model around any network."""

from __future__ import annotations

import torch
from torch import nn

from quantization import Quantizer


class MLP(nn.Sequential):
    """``[in] + [hidden] * layers + [outputs]`` with ReLU and Dropout after every hidden layer.

    One output (regression) gives one prediction per row ``[n]``; ``outputs = C >= 2`` gives the
    class scores (logits) ``[n, C]`` of a classification.
    """

    def __init__(self, in_features: int, hidden_neurons: int, hidden_layers: int, dropout: float,
                 outputs: int = 1) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_neurons), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_neurons
        layers.append(nn.Linear(width, outputs))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, in] -> [n], or [n, C] for C >= 2 outputs
        return super().forward(x).squeeze(-1)


class SplitModel(nn.Module):
    """An edge quantizer and a cloud network: ``forward(x) = mlp(quantizer(x))``.

    ``mlp`` is this project's :class:`MLP` or any network mapping ``[n, out_features]`` to one
    prediction per row ``[n]``, or to class scores ``[n, C]`` (the plain training loop trains either;
    the stacked engine only the MLP).
    ``edge(x)`` gives the ``b``-bit index per feature that a device sends, ``cloud(index)`` the
    prediction the server computes from it; ``cloud(edge(x))`` equals the hard-mode forward.
    Without a quantizer (full precision) the network sees the features themselves. Inputs are
    cast to the model's dtype (float64 rows into a float32 model, say).
    """

    def __init__(self, quantizer: Quantizer | None, mlp: nn.Module) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.mlp = mlp

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the network's parameters (torch's default without any)."""
        return next((p.dtype for p in self.mlp.parameters() if p.is_floating_point()), torch.get_default_dtype())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n], or class scores [n, C]
        if self.quantizer is None:
            return self.mlp(x.to(self.dtype))
        return self.mlp(self.quantizer(x))

    def _require_quantizer(self) -> Quantizer:
        if self.quantizer is None:
            raise ValueError("a full-precision model has no edge/cloud split: it sends float features")
        return self.quantizer

    def edge(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized features [n, d] -> int64 indices [n, d] in 0..n_levels - 1 of the quantizer."""
        return self._require_quantizer().encode(x)

    def cloud(self, index: torch.Tensor) -> torch.Tensor:
        """Transmitted indices [n, d] in 0..n_levels - 1 of the quantizer (else a ValueError) -> predictions [n]
        (a classifier's: class scores [n, C])."""
        return self.mlp(self._require_quantizer().decode(index))  # decode checks the indices from the wire

    def set_hard(self, hard: bool) -> None:
        """Hard quantization (what a deployment computes) or the soft training surrogate."""
        if self.quantizer is not None:
            self.quantizer.hard = hard

    def set_temperature(self, tau: float) -> None:
        """Sigmoid / softmax temperature of the quantizer (ignored where it has none)."""
        if self.quantizer is not None:
            self.quantizer.tau = tau
