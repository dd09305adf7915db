"""The input quantizers of the paper, one ``nn.Module`` each.

Every quantizer splits into an edge half and a cloud half:

- ``encode(x)``: standardized features ``[n, d]`` -> int64 indices ``[n, d]`` in ``0..n_levels - 1``,
  what the device transmits (as on the device, NaN gives index 0 and +-inf the extreme indices);
- ``decode(index)``: indices -> the network input ``[n, out_features]``, what the server feeds
  to the MLP (indices a device cannot send are refused);
- ``soft(x)``: the differentiable surrogate used while training (and for the soft-mode
  evaluations of SPEC section 5); ``soft_with_backward(x)`` computes it together with a function
  that writes the parameters' gradients, what the training loop calls.

In hard mode (``quantizer.hard = True``, used for every reported loss) ``forward(x)`` is
literally ``decode(encode(x))``, so a split deployment reproduces the model exactly. The
sigmoid temperature ``tau`` is a plain attribute set by the training loop; quantizers without a
temperature ignore it. Modules hold no device of their own: they follow their parameters and
inputs (``model.to(device)``), CPU or CUDA. ``forward`` casts its input to the quantizer's
``dtype`` (float32 unless the module was converted), so float64 rows give float32 outputs.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import torch
from torch import nn

from .schedule import check_temperature
from .thresholds import (
    bits_of_thresholds,
    check_bits,
    check_count,
    check_rows,
    decode_midpoints,
    hard_index,
    midpoints,
    steps_from_index,
    threshold_ranks,
)

READOUTS = ("index", "thermometer", "values", "midpoint")
MIN_STATISTIC = 1e-8  # floor of the LSQ / LLT scale statistics, for constant features
DENSE_RISE_LIMIT = 2**16  # entries up to which the LLT table is one matmul with a cached matrix
SIGMOID_LIMIT = 80.0  # |argument| at which sigmoid saturates (float32: 1, or 2e-35)
SIGMOID_FLOOR = 1e-20  # sigmoid outputs below it are set to 0


def _saturated_sigmoid_(arguments: torch.Tensor) -> torch.Tensor:
    """``sigmoid`` in place, exactly 0 below ``SIGMOID_FLOOR``: sigmoid of large arguments yields
    denormal numbers, and on x86 every operation that touches them (the sigmoid itself, the
    first layer's matmuls) runs many times slower. Late in training, at small tau, most
    arguments are large.
    """
    arguments.clamp_(-SIGMOID_LIMIT, SIGMOID_LIMIT).sigmoid_()
    return nn.functional.threshold_(arguments, SIGMOID_FLOOR, 0.0)


def clamp_inclusive(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``clamp(x, low, high)`` whose gradient is 1 where ``low <= x <= high`` (bounds included) and 0 outside.

    The project's convention for a value exactly at a bound, the one LSQ's straight-through
    estimator states (``Q_n <= x / s <= Q_p``). torch's own ``clamp`` changed its choice in 2.14
    (0 at a scalar bound, 0.5 at a tensor bound; 1 before), so plain-autograd code uses this.
    """
    return torch.where((x >= low) & (x <= high), x, x.detach().clamp(low, high))


def _sigmoid_steps(x: torch.Tensor, thresholds: torch.Tensor, tau: float) -> torch.Tensor:
    """``sigmoid(x / tau - t_k / tau)`` laid out feature-major: x [n, d], thresholds [d, M] -> [d, M, n].

    Both terms are rounded alike (as in ``_Thermometer``), so ``x == t_k`` gives exactly 0.5.
    """
    x_t = (x.T * (1 / tau)).contiguous()  # [d, n]: long rows keep the broadcasting vectorized
    steps = torch.sub(x_t.unsqueeze(1), (thresholds * (1 / tau)).unsqueeze(-1))
    return _saturated_sigmoid_(steps)


class _SteppedSum(torch.autograd.Function):
    """``v_0 + sum_k s_k (v_k - v_{k-1})``, or ``sum_k s_k`` without values, ``s_k = sigmoid((x - t_k) / tau)``.

    x [n, d], thresholds [d, M], values [d, M + 1] or None -> [n, d] (SQplus, SQ in training).
    """

    @staticmethod
    def forward(ctx, x, thresholds, values, tau):
        steps = _sigmoid_steps(x, thresholds, tau)  # [d, M, n]
        if values is None:
            diffs, out = None, steps.sum(dim=1)  # [d, n]
        else:
            diffs = values[:, 1:] - values[:, :-1]  # [d, M]
            out = torch.baddbmm(values[:, :1, None], diffs.unsqueeze(1), steps).squeeze(1)  # [d, n]
        ctx.save_for_backward(steps, diffs)
        ctx.tau = tau
        return out.T.contiguous()

    @staticmethod
    def backward(ctx, grad):  # grad [n, d]
        steps, diffs = ctx.saved_tensors
        grad_t = grad.T.contiguous().unsqueeze(1)  # [d, 1, n]
        slope = torch.ops.aten.sigmoid_backward(grad_t, steps)  # g s (1 - s) [d, M, n]
        grad_x = grad_thresholds = grad_values = None
        if ctx.needs_input_grad[0]:
            weighted = slope.sum(dim=1) if diffs is None else torch.bmm(diffs.unsqueeze(1), slope).squeeze(1)
            grad_x = weighted.T / ctx.tau
        if ctx.needs_input_grad[1]:
            factor = -1 / ctx.tau if diffs is None else diffs * (-1 / ctx.tau)
            grad_thresholds = slope.sum(dim=-1).mul_(factor)  # [d, M]
        if ctx.needs_input_grad[2]:
            grad_diffs = torch.bmm(grad_t, steps.transpose(1, 2)).squeeze(1)  # [d, M]
            grad_values = torch.cat([grad_t.sum(dim=-1), grad_diffs], dim=1)  # [d, M + 1]
            grad_values[:, :-1].sub_(grad_diffs)
        return grad_x, grad_thresholds, grad_values, None


class _Thermometer(torch.autograd.Function):
    """``sigmoid((x[..., None] - t) / tau).flatten(1)``: x [n, d], thresholds [d, M] -> [n, d * M] (Bw-SQ)."""

    @staticmethod
    def forward(ctx, x, thresholds, tau):
        steps = _saturated_sigmoid_(torch.sub((x * (1 / tau)).unsqueeze(-1), thresholds * (1 / tau)))  # [n, d, M]
        ctx.save_for_backward(steps)
        ctx.tau = tau
        return steps.flatten(1)

    @staticmethod
    def backward(ctx, grad):  # grad [n, d * M]
        (steps,) = ctx.saved_tensors
        slope = torch.ops.aten.sigmoid_backward(grad.reshape(steps.shape), steps)  # g s (1 - s) [n, d, M]
        grad_x = slope.sum(dim=-1) / ctx.tau if ctx.needs_input_grad[0] else None
        grad_thresholds = slope.sum(dim=0).mul_(-1 / ctx.tau) if ctx.needs_input_grad[1] else None
        return grad_x, grad_thresholds, None


class _LSQRound(torch.autograd.Function):
    """``round(u) s`` with ``u = clamp(x / s, Q_n, Q_p)``, straight through the rounding.

    x [n, d], step [d] -> [n, d]. ``d/ds = (round(u) - [Q_n <= x / s <= Q_p] x / s) grad_scale`` (the
    gradient scale of LSQ; the value uses s itself), ``d/dx = [Q_n <= x / s <= Q_p]``.
    """

    @staticmethod
    def forward(ctx, x, step, q_min, q_max, grad_scale):
        z = x / step  # [n, d]
        u = z.clamp(q_min, q_max)
        level = u.round()
        ctx.save_for_backward(z, u, level)
        ctx.grad_scale = grad_scale
        return level * step

    @staticmethod
    def backward(ctx, grad):  # grad [n, d]
        z, u, level = ctx.saved_tensors
        inside = u == z  # where the clamp passes the gradient
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            grad_step = (grad * torch.where(inside, level - z, level)).sum(dim=0).mul_(ctx.grad_scale)
        return grad_x, grad_step, None, None, None


def _rise_table(p: torch.Tensor) -> torch.Tensor:
    """``[-rise reversed, 0, rise] / R`` with ``rise = cumsum(p)``: segment weights p [d, R, G] -> [d, K]."""
    rise = p.flatten(1).cumsum(dim=-1)  # [d, R*G], rises to R
    zero = rise.new_zeros(rise.shape[0], 1)
    return torch.cat([rise.flip(-1).neg_(), zero, rise], dim=-1).div_(p.shape[1])


@functools.lru_cache(maxsize=None)
def _rise_matrix(segments: int, granularity: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """``C`` [R*G, K] with ``_rise_table(p) == p.flatten(1) @ C``; None where C would be large."""
    width = segments * granularity
    if width * (2 * width + 1) > DENSE_RISE_LIMIT:
        return None
    return _rise_table(torch.eye(width, dtype=dtype, device=device).view(width, segments, granularity))


@functools.lru_cache(maxsize=None)
def _row_starts(rows: int, size: int, device: torch.device) -> torch.Tensor:
    """``[0, size, 2 size, ...]`` [rows]: where each row of a [rows, size] tensor starts in its ``view(-1)``."""
    return torch.arange(0, rows * size, size, device=device)


def _clamped_position(x: torch.Tensor, scale: torch.Tensor, table_size: int) -> tuple[torch.Tensor, ...]:
    """``z = x / s``, ``u = clamp(z, -1, 1)`` and the table entry ``round((K - 1) / 2 (u + 1))``, all [n, d].

    NaN gets entry 0 (level -R, index 0), as on the device.
    """
    z = x / scale
    u = torch.clamp(z, -1.0, 1.0)
    position = (u + 1).mul_((table_size - 1) / 2).round_().nan_to_num_(0.0).long()
    return z, u, position


def _histogram(u: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts [d, bins] of u [n, d] in equal bins from each feature's min to its max.

    As ``torch.histc``: a feature whose values are all equal spans min - 1 .. max + 1, so they
    count in the middle bin (a batch of one row, or a feature constant within the batch).
    """
    low, high = torch.aminmax(u, dim=0)  # [d]
    equal = (high == low).to(u.dtype)
    low = low - equal
    width = (high - low).add_(equal)  # 2 where equal
    index = (u - low).div_(width).mul_(bins).long().clamp_(0, bins - 1)  # [n, d]
    counts = u.new_zeros(u.shape[1], bins)
    counts.T.scatter_add_(0, index, torch.ones_like(u))
    return counts


class _LLTLookup(torch.autograd.Function):
    """``(T[f, round((K - 1) / 2 (u + 1))] + u - sg(u)) s`` with ``T = _rise_table(softmax(logits / tau))``.

    logits [d, R, G], log_scale [d] (``s = exp(log_scale)``), x [n, d] -> [n, d]; ``u = clamp(x / s, -1, 1)``,
    sg stops the gradient. With ``reweight`` the gradient reaching ``T[f, k]`` is multiplied by
    ``N / (K (sqrt(h_fk) + 1e-5))``, h the K-bin histogram of u per feature.
    """

    @staticmethod
    def forward(ctx, logits, log_scale, x, tau, reweight):
        p = torch.softmax(logits / tau, dim=-1)  # [d, R, G]
        rise = _rise_matrix(*logits.shape[1:], logits.dtype, logits.device)  # [R*G, K] or None
        table = _rise_table(p) if rise is None else p.flatten(1) @ rise  # [d, K]
        scale = log_scale.exp()  # [d]
        z, u, position = _clamped_position(x, scale, table.shape[1])
        entry = position.add_(_row_starts(*table.shape, x.device))  # in T.view(-1)
        out = table.take(entry).mul_(scale)  # [n, d]
        reweighted = reweight and ctx.needs_input_grad[0] and x.shape[0] > 0  # no rows: nothing to count
        counts = _histogram(u, table.shape[1]) if reweighted else None  # [d, K]
        inside = u == z if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None  # the clamp's gradient
        scale_slope = torch.addcmul(out, x, inside, value=-1) if ctx.needs_input_grad[1] else None  # d out / d log_scale
        ctx.save_for_backward(p, scale, entry, counts, scale_slope, inside)
        ctx.tau = tau
        return out

    @staticmethod
    def backward(ctx, grad):  # grad [n, d]
        p, scale, entry, counts, scale_slope, inside = ctx.saved_tensors
        grad_logits = grad_log_scale = grad_x = None
        if ctx.needs_input_grad[0]:
            d, segments, granularity = p.shape
            width = segments * granularity
            grad_table = grad.new_zeros(d, 2 * width + 1)  # [d, K]
            # index_put_ accumulates deterministically on CUDA too
            grad_table.view(-1).index_put_((entry.view(-1),), (grad * scale).view(-1), accumulate=True)
            factor = 1 / ctx.tau  # collects the constant factors
            if counts is not None:
                grad_table.div_(counts.sqrt().add_(1e-5))
                factor *= grad.shape[0] / (2 * width + 1)
            rise = _rise_matrix(segments, granularity, p.dtype, p.device)
            if rise is None:
                # rise_j sits at T[R G + 1 + j] and, negated, at T[R G - 1 - j]; p_i adds to every rise_j, j >= i
                grad_rise = grad_table[:, width + 1 :].flip(-1) - grad_table[:, :width]  # [d, R*G], reversed
                grad_p = grad_rise.cumsum(dim=-1).flip(-1).view(p.shape)
                factor /= segments
            else:
                grad_p = (grad_table @ rise.T).view(p.shape)
            grad_logits = torch.ops.aten._softmax_backward_data(grad_p, p, -1, p.dtype).mul_(factor)
        if ctx.needs_input_grad[1]:
            grad_log_scale = torch.linalg.vecdot(grad, scale_slope, dim=0)
        if ctx.needs_input_grad[2]:
            grad_x = grad * inside
        return grad_logits, grad_log_scale, grad_x, None, None


class _HandContext:
    """Stands in for autograd's ``ctx`` when a Function's forward and backward are called by hand."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[torch.Tensor | None, ...] = ()

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None:
        self.saved_tensors = tensors


SoftFunction = tuple[type[torch.autograd.Function], tuple]  # a fused Function and its arguments


class Quantizer(nn.Module):
    """Base class: hard ``decode(encode(x))`` in hard mode, ``soft(x)`` otherwise.

    A subclass implements ``encode`` (starting from ``self.checked_rows(x)``, as ``forward`` does)
    and ``decode`` (starting from ``self.checked_index(index)``), and for training either ``soft`` (plain autograd) or ``soft_function`` (a
    fused autograd Function, whose backward the training loop also calls by hand).
    """

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.n_features = check_count("n_features", n_features)
        self.hard = False
        self.tau = 1.0

    @property
    def tau(self) -> float:
        """The temperature of the soft surrogate, finite and > 0 (it falls during training)."""
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = check_temperature(value)

    @property
    def out_features(self) -> int:
        """Width of the network input this quantizer produces."""
        return self.n_features

    @property
    def n_levels(self) -> int:
        """How many indices a device can send per feature, ``0..n_levels - 1`` (``2**bits``)."""
        return 2**self.bits

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized features [n, d] -> int64 indices [n, d] in ``0..n_levels - 1``."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode")

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Indices [n, d] -> the network input [n, out_features]."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode")

    def soft_function(self, x: torch.Tensor) -> SoftFunction | None:
        """The fused autograd Function computing ``soft(x)`` and its arguments, or None."""
        return None

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable training surrogate [n, d] -> [n, out_features]."""
        call = self.soft_function(x)
        if call is None:
            raise NotImplementedError(f"{type(self).__name__} must implement soft or soft_function")
        function, arguments = call
        return function.apply(*arguments)

    def soft_with_backward(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """``soft(x)`` [n, d] -> [n, out_features] and a function that takes d loss / d output and sets
        the parameters' ``.grad`` (x gets no gradient).

        With a fused Function both halves run by hand, without an autograd graph, which spares
        the training loop autograd's bookkeeping on every batch; otherwise through autograd.
        """
        x = x.detach()
        call = self.soft_function(x)
        if call is None:
            with torch.enable_grad():
                out = self.soft(x)
            return out.detach(), lambda grad: torch.autograd.backward(out, grad) if out.requires_grad else None
        function, arguments = call
        ctx = _HandContext(tuple(isinstance(a, nn.Parameter) and a.requires_grad for a in arguments))
        with torch.no_grad():
            out = function.forward(ctx, *arguments)

        def backward(grad: torch.Tensor) -> None:
            with torch.no_grad():
                for argument, argument_grad in zip(arguments, function.backward(ctx, grad)):
                    if argument_grad is None:
                        continue
                    if argument.grad is None:
                        argument.grad = argument_grad
                    else:
                        argument.grad += argument_grad

        return out, backward

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the quantizer's parameters and buffers (torch's default without any)."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())

    def checked_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Check that x is rows [n, n_features] and cast them to ``self.dtype`` (float64 rows, numpy's
        default, into a float32 quantizer, say), so that ``encode`` and ``forward`` compare alike."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.n_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a tensor of rows [n, {self.n_features}] (one column per feature), got {shape}; "
                             "make one row 2-D with x[None], convert numpy rows with torch.as_tensor")
        return x.to(self.dtype)

    def checked_index(self, index: torch.Tensor) -> torch.Tensor:
        """Check that ``index`` is integer indices [n, n_features] in ``0..n_levels - 1`` and return them as
        int64, so that ``decode``'s arithmetic cannot wrap around (uint8 payloads, say)."""
        if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.is_complex() \
                or index.dtype == torch.bool or index.ndim != 2 or index.shape[1] != self.n_features:
            shape = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
            raise ValueError(f"expected integer indices [n, {self.n_features}], got {shape}")
        index = index.long()
        if index.numel():
            low, high = torch.aminmax(index)
            if (low < 0) | (high >= self.n_levels):  # one device sync
                raise ValueError(f"indices must lie in 0..{self.n_levels - 1} at {self.bits} bits, got "
                                 f"{low.item()}..{high.item()}: the payload is damaged or was packed at another bit "
                                 "width or for another method")
        return index

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n, out_features], in self.dtype
        return self.decode(self.encode(x)) if self.hard else self.soft(self.checked_rows(x))  # encode checks its rows


class ThresholdQuantizer(Quantizer):
    """Per-feature thresholds with a step (``[x > t]``, or ``sigmoid((x - t) / tau)`` in training).

    ``readout`` says what the network sees of the ``M`` step outputs of a feature:
    ``"index"`` their sum (SQ), ``"thermometer"`` all of them (Bw-*), ``"values"`` a learnable
    value per interval, ``v_0 + sum_k step_k (v_k - v_{k-1})`` (SQplus), ``"midpoint"`` the
    midpoint of the interval (Pr-*, Po-*; fixed thresholds only). With ``trainable=False`` the
    thresholds are buffers and the steps are hard from the start.
    """

    def __init__(self, thresholds: torch.Tensor, readout: str, trainable: bool = False) -> None:
        super().__init__(bits_of_thresholds(thresholds), thresholds.shape[0])
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "midpoint" and trainable:
            raise ValueError("the midpoint readout needs fixed (sorted) thresholds")
        if not thresholds.is_meta and not torch.isfinite(thresholds).all():  # meta: shapes only (save_model's check)
            raise ValueError("thresholds must be finite; compute them from rows without NaN or infinite values")
        self.readout = readout
        self.trainable = trainable
        thresholds = thresholds.detach().clone()
        if not thresholds.is_floating_point():  # whole-number thresholds, say
            thresholds = thresholds.to(torch.get_default_dtype())
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
        """Width of the network input: ``d * M`` for the thermometer, else ``d``."""
        m = self.thresholds.shape[1]
        return self.n_features * m if self.readout == "thermometer" else self.n_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return hard_index(self.checked_rows(x), self.thresholds.detach())

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        index, dtype = self.checked_index(index), self.thresholds.dtype
        if self.readout == "index":
            return index.to(dtype)
        if self.readout == "midpoint":
            return decode_midpoints(index, self.interval_values)
        ranks = threshold_ranks(self.thresholds.detach()) if self.trainable else self.fixed_ranks
        return self._read(steps_from_index(index, ranks, dtype))

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        return super().soft(x) if self.trainable else self.decode(self.encode(x))

    def soft_function(self, x: torch.Tensor) -> SoftFunction | None:
        if not self.trainable:
            return None
        if self.readout == "thermometer":
            return _Thermometer, (x, self.thresholds, self.tau)
        values = self.interval_values if self.readout == "values" else None
        return _SteppedSum, (x, self.thresholds, values, self.tau)

    def _read(self, steps: torch.Tensor) -> torch.Tensor:  # hard steps [n, d, M] -> [n, out_features]
        if self.readout == "thermometer":
            return steps.flatten(1)
        values = self.interval_values  # "values"; "index" and "midpoint" decode without steps
        return values[:, 0] + (steps * values.diff(dim=-1)).sum(dim=-1)


class LSQQuantizer(Quantizer):
    """Learned step size quantization (Esser et al. 2020), one step per feature, signed levels."""

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__(bits, n_features)
        self.q_min, self.q_max = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.step = nn.Parameter(torch.ones(self.n_features))  # [d]

    @torch.no_grad()
    def init_step(self, x: torch.Tensor) -> "LSQQuantizer":
        """Set ``s_f = 2 mean|x_f| / sqrt(Q_p)`` from the training rows x [n, d] (never 0)."""
        mean_abs = check_rows(x, self.n_features).abs().mean(dim=0)
        self.step.copy_(2 * mean_abs.clamp_min(MIN_STATISTIC) / math.sqrt(self.q_max))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.clamp(self.checked_rows(x) / self.step.detach(), self.q_min, self.q_max).nan_to_num_(nan=self.q_min)  # NaN: index 0
        return torch.round(z).long() - self.q_min

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        return (self.checked_index(index) + self.q_min).to(self.step.dtype) * self.step

    def soft_function(self, x: torch.Tensor) -> SoftFunction:
        grad_scale = 1.0 / math.sqrt(self.q_max * max(x.numel(), 1))  # no rows: no gradient to scale
        return _LSQRound, (x, self.step, self.q_min, self.q_max, grad_scale)


class LLTQuantizer(Quantizer):
    """Learnable lookup table quantization (Wang et al. 2022), signed table, per feature.

    Table logits ``[d, R, G]`` with ``R = 2**(bits-1) - 1`` segments per sign and granularity
    ``G``; the transmitted index is the table level ``0..2R`` (``2**bits - 1`` levels).
    """

    def __init__(self, bits: int, n_features: int, granularity: int) -> None:
        super().__init__(bits, n_features)
        self.segments = 2 ** (self.bits - 1) - 1
        self.granularity = check_count("granularity", granularity)
        self.table_size = 2 * self.segments * self.granularity + 1
        self.logits = nn.Parameter(torch.zeros(self.n_features, self.segments, self.granularity))
        self.log_scale = nn.Parameter(torch.zeros(self.n_features))  # [d]
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
        return _rise_table(p)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, _, position = _clamped_position(self.checked_rows(x), self.log_scale.exp(), self.table_size)
            features = torch.arange(self.n_features, device=position.device)
            level = self.table(hard=True)[features, position] * self.segments  # [n, d]
        return torch.round(level).long() + self.segments

    @property
    def n_levels(self) -> int:
        """How many indices a device can send per feature: the ``2R + 1 = 2**bits - 1`` table levels."""
        return 2 * self.segments + 1

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        level = (self.checked_index(index) - self.segments).to(self.log_scale.dtype) / self.segments
        return level * self.log_scale.exp()

    @torch.no_grad()
    def _init_scale(self, x: torch.Tensor) -> None:
        """Set ``s_f = 3 std(x_f)`` (never 0) from the first training batch x [n, d]; one row has spread 0."""
        spread = x.std(dim=0) if x.shape[0] > 1 else torch.zeros_like(x[0])
        self.log_scale.copy_(torch.log(3 * spread.clamp_min(MIN_STATISTIC)))
        self.scale_initialized = True

    def soft_function(self, x: torch.Tensor) -> SoftFunction:
        if self.training and not self.scale_initialized and x.shape[0] > 0:
            self._init_scale(x)
        # in training the gradient reaching the table is reweighted by the histogram of u
        return _LLTLookup, (self.logits, self.log_scale, x, self.tau, self.training)
