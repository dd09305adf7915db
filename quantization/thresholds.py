"""Threshold initialisation and the hard encode/decode rules of SPEC section 2.

All functions take per-feature thresholds of shape ``[d, M]`` with ``M = 2**bits - 1`` and
work on CPU and CUDA tensors alike (results live on the device of the input).
"""

from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int) -> int:
    """Return ``bits`` if it lies in 2..8, else raise a ValueError that says what to do."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def n_thresholds(bits: int) -> int:
    """Number of thresholds per feature, ``M = 2**bits - 1``."""
    return 2 ** check_bits(bits) - 1


def quantile_thresholds(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-feature quantiles at levels ``k / 2**bits``, ``k = 1..M`` (linear interpolation).

    x: [n, d] -> [d, M]. Computed in float64 and returned in the dtype of ``x``.
    """
    levels = torch.arange(1, n_thresholds(bits) + 1, dtype=torch.float64, device=x.device)
    levels = levels / 2**bits
    return torch.quantile(x.double(), levels, dim=0).T.to(x.dtype).contiguous()


def minmax_thresholds(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Evenly spaced thresholds ``min + (max - min) / M * (k - 0.5)``, ``k = 1..M``.

    x: [n, d] -> [d, M].
    """
    m = n_thresholds(bits)
    low, high = x.double().min(dim=0).values, x.double().max(dim=0).values  # [d]
    k = torch.arange(1, m + 1, dtype=torch.float64, device=x.device) - 0.5  # [M]
    return (low[:, None] + (high - low)[:, None] / m * k).to(x.dtype).contiguous()


def hard_index(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Number of thresholds each value exceeds (strict ``>``): x [n, d] -> int64 [n, d] in 0..M."""
    return (x[..., None] > thresholds).sum(dim=-1)


def threshold_ranks(thresholds: torch.Tensor) -> torch.Tensor:
    """Rank of every threshold among its feature's thresholds: [d, M] -> int64 [d, M].

    Ties get consecutive ranks. ``x > t_k`` holds exactly when ``rank_k < hard_index(x)``,
    so the server rebuilds every step output from the transmitted index, in any order.
    """
    order = torch.argsort(thresholds, dim=-1, stable=True)
    return torch.argsort(order, dim=-1, stable=True)


def steps_from_index(index: torch.Tensor, ranks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 pattern ``[x > t_k]`` rebuilt from indices: index [n, d], ranks [d, M] -> [n, d, M]."""
    return (ranks < index[..., None]).to(dtype)


def midpoints(thresholds: torch.Tensor) -> torch.Tensor:
    """Decoded value per interval of sorted thresholds: [d, M] -> [d, M + 1] (needs M >= 2)."""
    t = torch.sort(thresholds, dim=-1).values
    inner = (t[:, 1:] + t[:, :-1]) / 2
    first = t[:, :1] - (t[:, 1:2] - t[:, :1]) / 2
    last = t[:, -1:] + (t[:, -1:] - t[:, -2:-1]) / 2
    return torch.cat([first, inner, last], dim=-1)


def decode_midpoints(index: torch.Tensor, interval_values: torch.Tensor) -> torch.Tensor:
    """Look up each feature's value of its interval: index [n, d], values [d, M + 1] -> [n, d]."""
    d = interval_values.shape[0]
    features = torch.arange(d, device=index.device)
    return interval_values[features, index]
