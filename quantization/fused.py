"""Fused autograd Functions: accelerators of the quantizers' plain ``soft`` formulas.

Each Function computes what a quantizer's ``soft(x)`` in quantizers.py computes, with a
hand-written backward pass that saves less memory and launches fewer kernels than autograd
does for the plain formula; tests/test_quantizers.py checks values and gradients against the
plain ``soft`` in float64. The quantizers' ``forward`` (soft mode) and the stacked training
engine (models/engine.py, through :func:`forward_by_hand`) run these; the plain formulas are
what the paper writes and what the tests compare to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

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
    # NOTE[DIFF]: sigmoid outputs below 1e-20 are exactly 0 (the paper's sigmoid gives denormal numbers)
    return nn.functional.threshold_(arguments, SIGMOID_FLOOR, 0.0)


def _sigmoid_steps(x: torch.Tensor, thresholds: torch.Tensor, tau: float) -> torch.Tensor:
    """``sigmoid(x / tau - t_k / tau)`` laid out feature-major: x [n, d], thresholds [d, M] -> [d, M, n].

    Both terms are rounded alike (as in :class:`Thermometer`), so ``x == t_k`` gives exactly 0.5.
    """
    x_t = (x.T * (1 / tau)).contiguous()  # [d, n]: long rows keep the broadcasting vectorized
    steps = torch.sub(x_t.unsqueeze(1), (thresholds * (1 / tau)).unsqueeze(-1))
    return _saturated_sigmoid_(steps)


class SteppedSum(torch.autograd.Function):
    """``v_0 + sum_k s_k (v_k - v_{k-1})``, or ``sum_k s_k`` without values, ``s_k = sigmoid((x - t_k) / tau)``.

    x [n, d], thresholds [d, M], values [d, M + 1] or None -> [n, d]: SQplus's and SQ's ``soft``. Given
    ``value`` [n, d] (the hard mode's output), it returns that instead, with the same gradient: the
    straight-through estimate.
    """

    @staticmethod
    def forward(ctx, x, thresholds, values, tau, value=None):
        steps = _sigmoid_steps(x, thresholds, tau)  # [d, M, n]
        diffs = None if values is None else values[:, 1:] - values[:, :-1]  # [d, M]
        ctx.save_for_backward(steps, diffs)
        ctx.tau = tau
        if value is not None:
            return value
        if values is None:
            out = steps.sum(dim=1)  # [d, n]
        else:
            out = torch.baddbmm(values[:, :1, None], diffs.unsqueeze(1), steps).squeeze(1)  # [d, n]
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
        return grad_x, grad_thresholds, grad_values, None, None


class Thermometer(torch.autograd.Function):
    """``sigmoid((x[..., None] - t) / tau).flatten(1)``: x [n, d], thresholds [d, M] -> [n, d * M] (Bw-SQ's soft).

    Given ``value`` [n, d * M] (the hard mode's output), it returns that instead, with the same gradient:
    the straight-through estimate.
    """

    @staticmethod
    def forward(ctx, x, thresholds, tau, value=None):
        steps = _saturated_sigmoid_(torch.sub((x * (1 / tau)).unsqueeze(-1), thresholds * (1 / tau)))  # [n, d, M]
        ctx.save_for_backward(steps)
        ctx.tau = tau
        return steps.flatten(1) if value is None else value

    @staticmethod
    def backward(ctx, grad):  # grad [n, d * M]
        (steps,) = ctx.saved_tensors
        slope = torch.ops.aten.sigmoid_backward(grad.reshape(steps.shape), steps)  # g s (1 - s) [n, d, M]
        grad_x = slope.sum(dim=-1) / ctx.tau if ctx.needs_input_grad[0] else None
        grad_thresholds = slope.sum(dim=0).mul_(-1 / ctx.tau) if ctx.needs_input_grad[1] else None
        return grad_x, grad_thresholds, None, None


class LSQRound(torch.autograd.Function):
    """``round(u) s`` with ``u = clamp(x / s, Q_n, Q_p)``, straight through the rounding (LSQ's ``soft``).

    x [n, d], step_size [d] -> [n, d]. ``d/ds = (round(u) - [Q_n <= x / s <= Q_p] x / s) grad_scale`` (the
    gradient scale of LSQ; the value uses s itself), ``d/dx = [Q_n <= x / s <= Q_p]``.
    """

    @staticmethod
    def forward(ctx, x, step_size, q_min, q_max, grad_scale):
        z = x / step_size  # [n, d]
        u = z.clamp(q_min, q_max)
        level = u.round()
        ctx.save_for_backward(z, u, level)
        ctx.grad_scale = grad_scale
        return level * step_size

    @staticmethod
    def backward(ctx, grad):  # grad [n, d]
        z, u, level = ctx.saved_tensors
        # NOTE[DIFF]: a value at a clamp bound passes its gradient (torch's clamp: 0 there since 2.14)
        inside = u == z  # where the clamp passes the gradient, bounds included
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step_size = None
        if ctx.needs_input_grad[1]:
            grad_step_size = (grad * torch.where(inside, level - z, level)).sum(dim=0).mul_(ctx.grad_scale)
        return grad_x, grad_step_size, None, None, None


def _rise_table(p: torch.Tensor) -> torch.Tensor:
    """``[-rise reversed, 0, rise] / R`` with ``rise = cumsum(p)``: segment weights p [d, R, G] -> [d, K]."""
    rise = p.flatten(1).cumsum(dim=-1)  # [d, R*G], rises to R
    zero = rise.new_zeros(rise.shape[0], 1)
    return torch.cat([rise.flip(-1).neg_(), zero, rise], dim=-1).div_(p.shape[1])


@functools.cache
def rise_matrix(segments: int, granularity: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """``C`` [R*G, K] with ``table(p) == p.flatten(1) @ C``; None where C would be large."""
    width = segments * granularity
    if width * (2 * width + 1) > DENSE_RISE_LIMIT:
        return None
    return _rise_table(torch.eye(width, dtype=dtype, device=device).view(width, segments, granularity))


@functools.cache
def _row_starts(rows: int, size: int, device: torch.device) -> torch.Tensor:
    """``[0, size, 2 size, ...]`` [rows]: where each row of a [rows, size] tensor starts in its ``view(-1)``."""
    return torch.arange(0, rows * size, size, device=device)


def histogram(u: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts [d, bins] of u [n, d] in equal bins from each feature's min to its max, as ``torch.histc`` counts.

    ``torch.histc`` widens the range of a feature whose values are all equal to min - 1 .. max + 1,
    so they count in the middle bin (a batch of one row, or a feature constant within the batch).
    """
    low, high = torch.aminmax(u, dim=0)  # [d]
    # NOTE[DIFF]: a feature constant in the batch counts in the middle bin (the paper's code gives no rule)
    equal = (high == low).to(u.dtype)
    low = low - equal
    width = (high - low).add_(equal)  # 2 where equal
    index = (u - low).div_(width).mul_(bins).long().clamp_(0, bins - 1)  # [n, d]
    counts = u.new_zeros(u.shape[1], bins)
    counts.T.scatter_add_(0, index, torch.ones_like(u))
    return counts


class LLTLookup(torch.autograd.Function):
    """``(T[f, round((K - 1) / 2 (u + 1))] + u - sg(u)) s`` with ``T`` the soft table of ``softmax(logits / tau)``.

    logits [d, R, G], log_scale [d] (``s = exp(log_scale)``), x [n, d] -> [n, d]; ``u = clamp(x / s, -1, 1)``,
    sg stops the gradient (LLT's ``soft``). With ``reweight`` the gradient reaching ``T[f, k]`` is multiplied by
    ``N / (K (sqrt(h_fk) + 1e-5))``, h the K-bin histogram of u per feature.
    """

    @staticmethod
    def forward(ctx, logits, log_scale, x, tau, reweight):
        p = torch.softmax(logits / tau, dim=-1)  # [d, R, G]
        rise = rise_matrix(*logits.shape[1:], logits.dtype, logits.device)  # [R*G, K] or None
        table = _rise_table(p) if rise is None else p.flatten(1) @ rise  # [d, K]
        scale = log_scale.exp()  # [d]
        z = x / scale  # [n, d]
        u = torch.clamp(z, -1.0, 1.0)
        # NOTE[DIFF]: NaN takes table entry 0 (level -R, index 0), as on the device; the paper's code has no NaN rule
        position = (u + 1).mul_((table.shape[1] - 1) / 2).round_().nan_to_num_(0.0).long()
        entry = position.add_(_row_starts(*table.shape, x.device))  # in T.view(-1)
        out = table.take(entry).mul_(scale)  # [n, d]
        reweighted = reweight and ctx.needs_input_grad[0] and x.shape[0] > 0  # no rows: nothing to count
        counts = histogram(u, table.shape[1]) if reweighted else None  # [d, K]
        # NOTE[DIFF]: x = +-s counts as inside the clamp (bounds included), as in LSQ
        inside = u == z if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None  # the clamp's gradient
        scale_slope = torch.addcmul(out, x, inside, value=-1) if ctx.needs_input_grad[1] else None  # d out / d log_s
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
            rise = rise_matrix(segments, granularity, p.dtype, p.device)
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


FusedCall = tuple[type[torch.autograd.Function], tuple]  # a fused Function and the arguments of its forward


def forward_by_hand(call: FusedCall) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
    """Run a fused Function's forward by hand, without an autograd graph; return its output and a
    function that takes d loss / d output and adds the parameters' gradients to their ``.grad``.

    Gradients go to the arguments that are ``nn.Parameter`` needing a gradient (never to the
    rows). This spares the stacked training engine autograd's bookkeeping on every batch.
    """
    function, arguments = call
    hand = _HandContext(tuple(isinstance(a, nn.Parameter) and a.requires_grad for a in arguments))
    with torch.no_grad():
        out = function.forward(hand, *arguments)

    def backward(grad: torch.Tensor) -> None:
        with torch.no_grad():
            for argument, argument_grad in zip(arguments, function.backward(hand, grad)):
                if argument_grad is None:
                    continue
                if argument.grad is None:
                    argument.grad = argument_grad
                else:
                    argument.grad += argument_grad

    return out, backward
