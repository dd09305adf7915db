"""Threshold initialisation and the hard encode/decode rules (strict ``>``, midpoints).

Per-feature thresholds have the shape ``[d, M]`` with ``M = 2**bits - 1``; every function
works on CPU and CUDA tensors alike (results live on the device of the input).
"""

from __future__ import annotations

import torch

from core.checks import MAX_BITS, MIN_BITS, check_bits


def n_thresholds(bits: int) -> int:
    """Number of thresholds per feature, ``M = 2**bits - 1``."""
    return 2 ** check_bits(bits) - 1


def bits_of_thresholds(thresholds: torch.Tensor) -> int:
    """The bit width of thresholds ``[d, 2**bits - 1]``, else a ValueError that says what shape is needed."""
    if thresholds.ndim != 2:
        raise ValueError(
            f"thresholds must have shape [d, 2**bits - 1] (a row per feature), got shape {tuple(thresholds.shape)}"
        )
    widths = [n_thresholds(bits) for bits in range(MIN_BITS, MAX_BITS + 1)]
    m = thresholds.shape[1]
    if m not in widths:
        allowed = ", ".join(map(str, widths[:-1])) + f" or {widths[-1]}"
        raise ValueError(
            f"expected 2**bits - 1 thresholds per feature ({allowed} for {MIN_BITS} to {MAX_BITS} bits), got {m}"
        )
    return MIN_BITS + widths.index(m)


def check_rows(x: torch.Tensor, n_features: int | None = None) -> torch.Tensor:
    """Return ``x`` if it holds at least one row of shape ``[n, d]`` (``d = n_features`` if given), all finite,
    else raise."""
    d = "d" if n_features is None else n_features
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of rows [n, {d}], got {type(x).__name__}; "
                        "convert numpy rows with torch.as_tensor")
    if x.ndim != 2 or x.shape[0] == 0 or (n_features is not None and x.shape[1] != n_features):
        raise ValueError(f"x must be training rows of shape [n, {d}] with n >= 1, got shape {tuple(x.shape)}")
    if x.is_floating_point() and not x.is_meta and not torch.isfinite(x).all():  # meta: shapes only
        raise ValueError("x holds NaN or infinite values; "
                         "drop or impute them before computing thresholds or statistics")
    return x


def _thresholds_dtype(x: torch.Tensor) -> torch.dtype:
    """Floating inputs keep their dtype; integer (or bool) inputs get torch's default float dtype."""
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def quantile_thresholds(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-feature quantiles at levels ``k / 2**bits``, ``k = 1..M`` (linear interpolation).

    x: [n, d] -> [d, M]. Computed in float64 and returned in the dtype of a floating ``x``
    (torch's default float dtype for integer ``x``).
    """
    m = n_thresholds(bits)
    levels = torch.arange(1, m + 1, dtype=torch.float64, device=x.device) / (m + 1)
    return torch.quantile(check_rows(x).double(), levels, dim=0).T.to(_thresholds_dtype(x)).contiguous()


def minmax_thresholds(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Evenly spaced thresholds ``min + (max - min) / M * (k - 0.5)``, ``k = 1..M``.

    x: [n, d] -> [d, M], in the dtype of a floating ``x`` (torch's default float dtype for integer ``x``).
    """
    m = n_thresholds(bits)
    low, high = torch.aminmax(check_rows(x).double(), dim=0)  # [d]
    k = torch.arange(1, m + 1, dtype=torch.float64, device=x.device) - 0.5  # [M]
    return (low[:, None] + (high - low)[:, None] / m * k).to(_thresholds_dtype(x)).contiguous()


def hard_index(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Number of thresholds each value exceeds (strict ``>``): x [n, d] -> int64 [n, d] in 0..M."""
    # NOTE[DIFF]: strict [x > t]; the paper's code rounds sigmoid((x - t) / tau), which can round 0.5 down
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
