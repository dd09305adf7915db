"""The input quantizers of the paper, one ``nn.Module`` each.

Every quantizer splits into an edge half and a cloud half:

- ``encode(x)``: standardized features ``[n, d]`` -> int64 indices ``[n, d]`` in ``0..2**bits - 1``,
  what the device transmits;
- ``decode(index)``: indices -> the network input ``[n, out_features]``, what the server feeds
  to the MLP;
- ``soft(x)``: the differentiable surrogate used while training (and for the soft-mode
  evaluations of SPEC section 5).

In hard mode (``quantizer.hard = True``, used for every reported loss) ``forward(x)`` is
literally ``decode(encode(x))``, so a split deployment reproduces the model exactly. The
sigmoid temperature ``tau`` is a plain attribute set by the training loop; quantizers without a
temperature ignore it. Modules hold no device of their own: they follow their parameters and
inputs (``model.to(device)``), CPU or CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .thresholds import (
    check_bits,
    decode_midpoints,
    hard_index,
    midpoints,
    n_thresholds,
    steps_from_index,
    threshold_ranks,
)

READOUTS = ("index", "thermometer", "values", "midpoint")
MIN_STATISTIC = 1e-8  # floor of the LSQ / LLT scale statistics, for constant features


class Quantizer(nn.Module):
    """Base class: hard ``decode(encode(x))`` in hard mode, ``soft(x)`` otherwise."""

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.n_features = n_features
        self.hard = False
        self.tau = 1.0

    @property
    def out_features(self) -> int:
        """Width of the network input this quantizer produces."""
        return self.n_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n, out_features]
        return self.decode(self.encode(x)) if self.hard else self.soft(x)


class ThresholdQuantizer(Quantizer):
    """Per-feature thresholds with a step (``[x > t]``, or ``sigmoid((x - t) / tau)`` in training).

    ``readout`` says what the network sees of the ``M`` step outputs of a feature:
    ``"index"`` their sum (SQ), ``"thermometer"`` all of them (Bw-*), ``"values"`` a learnable
    value per interval, ``v_0 + sum_k step_k (v_k - v_{k-1})`` (SQplus), ``"midpoint"`` the
    midpoint of the interval (Pr-*, Po-*; fixed thresholds only). With ``trainable=False`` the
    thresholds are buffers and the steps are hard from the start.
    """

    def __init__(self, thresholds: torch.Tensor, readout: str, trainable: bool = False) -> None:
        n_features, m = thresholds.shape
        super().__init__(int(math.log2(m + 1)), n_features)
        if m != n_thresholds(self.bits):
            raise ValueError(f"expected 2**bits - 1 thresholds per feature, got {m}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "midpoint" and trainable:
            raise ValueError("the midpoint readout needs fixed (sorted) thresholds")
        self.readout = readout
        self.trainable = trainable
        thresholds = thresholds.detach().clone()
        if trainable:
            self.thresholds = nn.Parameter(thresholds)  # [d, M]
        else:
            self.register_buffer("thresholds", thresholds)  # [d, M]
            self.register_buffer("fixed_ranks", threshold_ranks(thresholds))  # [d, M]
        if readout == "values":
            self.interval_values = nn.Parameter(midpoints(thresholds))  # [d, M + 1]
        elif readout == "midpoint":
            self.register_buffer("interval_values", midpoints(thresholds))  # [d, M + 1]

    @property
    def out_features(self) -> int:
        m = self.thresholds.shape[1]
        return self.n_features * m if self.readout == "thermometer" else self.n_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return hard_index(x, self.thresholds.detach())

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        dtype = self.thresholds.dtype
        if self.readout == "index":
            return index.to(dtype)
        if self.readout == "midpoint":
            return decode_midpoints(index, self.interval_values)
        ranks = threshold_ranks(self.thresholds.detach()) if self.trainable else self.fixed_ranks
        return self._read(steps_from_index(index, ranks, dtype))

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            return self.decode(self.encode(x))
        steps = torch.sigmoid((x[..., None] - self.thresholds) / self.tau)  # [n, d, M]
        return self._read(steps)

    def _read(self, steps: torch.Tensor) -> torch.Tensor:  # [n, d, M] -> [n, out_features]
        if self.readout == "thermometer":
            return steps.flatten(1)
        if self.readout == "index":
            return steps.sum(dim=-1)
        values = self.interval_values
        return values[:, 0] + (steps * values.diff(dim=-1)).sum(dim=-1)


class LSQQuantizer(Quantizer):
    """Learned step size quantization (Esser et al. 2020), one step per feature, signed levels."""

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__(bits, n_features)
        self.q_min, self.q_max = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.step = nn.Parameter(torch.ones(n_features))  # [d]

    @torch.no_grad()
    def init_step(self, x: torch.Tensor) -> "LSQQuantizer":
        """Set ``s_f = 2 mean|x_f| / sqrt(Q_p)`` from the training rows x [n, d] (never 0)."""
        self.step.copy_(2 * x.abs().mean(dim=0).clamp_min(MIN_STATISTIC) / math.sqrt(self.q_max))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.clamp(x / self.step.detach(), self.q_min, self.q_max)
        return torch.round(z).long() - self.q_min

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        return (index + self.q_min).to(self.step.dtype) * self.step

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        grad_scale = 1.0 / math.sqrt(self.q_max * x.numel())
        step = self.step * grad_scale + (self.step - self.step * grad_scale).detach()
        z = torch.clamp(x / step, self.q_min, self.q_max)
        z = z + (torch.round(z) - z).detach()  # straight-through rounding
        return z * step


class LLTQuantizer(Quantizer):
    """Learnable lookup table quantization (Wang et al. 2022), signed table, per feature.

    Table logits ``[d, R, G]`` with ``R = 2**(bits-1) - 1`` segments per sign and granularity
    ``G``; the transmitted index is the table level ``0..2R`` (``2**bits - 1`` levels).
    """

    def __init__(self, bits: int, n_features: int, granularity: int) -> None:
        super().__init__(bits, n_features)
        self.segments = 2 ** (self.bits - 1) - 1
        self.granularity = granularity
        self.table_size = 2 * self.segments * granularity + 1
        self.logits = nn.Parameter(torch.zeros(n_features, self.segments, granularity))
        self.log_scale = nn.Parameter(torch.zeros(n_features))  # [d]
        self.scale_initialized = False  # a Python flag (saved as extra state): no device sync per batch

    def get_extra_state(self) -> dict[str, bool]:
        return {"scale_initialized": self.scale_initialized}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.scale_initialized = state["scale_initialized"]

    def table(self, hard: bool) -> torch.Tensor:
        """The lookup table ``[d, K]`` in ``[-1, 1]``: soft (softmax at tau) or hard (arg-max)."""
        if hard:
            winners = self.logits.argmax(dim=-1)
            p = nn.functional.one_hot(winners, self.granularity).to(self.logits.dtype)
        else:
            p = torch.softmax(self.logits / self.tau, dim=-1)  # [d, R, G]
        rise = p.flatten(1).cumsum(dim=-1)  # [d, R*G], rises to R
        zero = torch.zeros_like(rise[:, :1])
        return torch.cat([-rise.flip(-1), zero, rise], dim=-1) / self.segments

    def _table_position(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamped ``u = x / s`` [n, d] and its table entry ``round(R G (u + 1))`` [n, d]."""
        u = torch.clamp(x / self.log_scale.exp(), -1.0, 1.0)
        position = torch.round((self.table_size - 1) / 2 * (u + 1)).long()
        return u, position

    def _lookup(self, table: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        features = torch.arange(self.n_features, device=position.device)
        return table[features, position]  # [n, d]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, position = self._table_position(x)
            level = self._lookup(self.table(hard=True), position) * self.segments
        return torch.round(level).long() + self.segments

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        level = (index - self.segments).to(self.log_scale.dtype) / self.segments
        return level * self.log_scale.exp()

    @torch.no_grad()
    def _init_scale(self, x: torch.Tensor) -> None:
        self.log_scale.copy_(torch.log(3 * x.std(dim=0).clamp_min(MIN_STATISTIC)))
        self.scale_initialized = True

    def _gradient_weights(self, u: torch.Tensor) -> torch.Tensor:
        """``N / (K (sqrt(h) + 1e-5))`` per table entry [d, K], h the histogram of u per feature."""
        with torch.no_grad():
            low, high = u.min(dim=0).values, u.max(dim=0).values  # [d]
            width = (high - low).clamp_min(torch.finfo(u.dtype).tiny)
            bins = ((u - low) / width * self.table_size).long().clamp_(0, self.table_size - 1)
            counts = torch.zeros(self.n_features, self.table_size, device=u.device, dtype=u.dtype)
            counts.scatter_add_(1, bins.T, torch.ones_like(bins.T, dtype=u.dtype))
            return u.shape[0] / (self.table_size * (counts.sqrt() + 1e-5))

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.scale_initialized:
            self._init_scale(x)
        scale = self.log_scale.exp()
        u, position = self._table_position(x)
        table = self.table(hard=False)
        if self.training and table.requires_grad:
            weights = self._gradient_weights(u)
            table.register_hook(lambda grad: grad * weights)  # the value stays, the gradient is reweighted
        return (self._lookup(table, position) + u - u.detach()) * scale
