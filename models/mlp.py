"""The multilayer perceptron of SPEC section 4 and the edge/cloud split model around it."""

from __future__ import annotations

import torch
from torch import nn

from quantization import Quantizer


class MLP(nn.Sequential):
    """``[in] + [hidden] * layers + [1]`` with ReLU and Dropout after every hidden layer."""

    def __init__(self, in_features: int, hidden_neurons: int, hidden_layers: int, dropout: float) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_neurons), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_neurons
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, in] -> [n]
        return super().forward(x).squeeze(-1)


class SplitModel(nn.Module):
    """An edge quantizer and a cloud MLP: ``forward(x) = mlp(quantizer(x))``.

    ``edge(x)`` gives the ``b``-bit index per feature that a device sends, ``cloud(index)`` the
    prediction the server computes from it; ``cloud(edge(x))`` equals the hard-mode forward.
    Without a quantizer (full precision) the MLP sees the features themselves. Inputs are cast
    to the model's dtype (float64 rows into a float32 model, say).
    """

    def __init__(self, quantizer: Quantizer | None, mlp: MLP) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n]
        if self.quantizer is None:
            return self.mlp(x.to(self.mlp[-1].weight.dtype))
        return self.mlp(self.quantizer(x))

    def _require_quantizer(self) -> Quantizer:
        if self.quantizer is None:
            raise ValueError("a full-precision model has no edge/cloud split: it sends float features")
        return self.quantizer

    def edge(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized features [n, d] -> int64 indices [n, d] in 0..n_levels - 1 of the quantizer."""
        return self._require_quantizer().encode(x)

    def cloud(self, index: torch.Tensor) -> torch.Tensor:
        """Transmitted indices [n, d] in 0..n_levels - 1 of the quantizer (else a ValueError) -> predictions [n]."""
        quantizer = self._require_quantizer()
        return self.mlp(quantizer.decode(quantizer.checked_index(index)))

    def set_hard(self, hard: bool) -> None:
        """Hard quantization (what a deployment computes) or the soft training surrogate."""
        if self.quantizer is not None:
            self.quantizer.hard = hard

    def set_temperature(self, tau: float) -> None:
        """Sigmoid / softmax temperature of the quantizer (ignored where it has none)."""
        if self.quantizer is not None:
            self.quantizer.tau = tau
