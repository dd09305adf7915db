"""The input quantizers of the paper, one ``nn.Module`` per method.

Every quantizer has three faces:

- ``soft(x)``: the paper's differentiable surrogate, written as its formula in plain autograd;
- ``encode(x)``: standardized features ``[n, d]`` -> int64 indices ``[n, d]`` in ``0..n_levels - 1``,
  what the device transmits (as on the device, NaN gives index 0 and +-inf the extreme indices);
- ``decode(index)``: indices -> the network input ``[n, out_features]``, what the server feeds
  to the network (indices a device cannot send are refused).

``encode`` and ``decode`` check what they are given and call the subclass's ``_encode`` and
``_decode``, which trust their input. ``forward(x)`` checks its rows once; in hard mode
(``quantizer.hard = True``, used for every reported loss) it is ``_decode(_encode(x))``, so a split
deployment reproduces the model exactly; in soft mode it runs the fused autograd Function of
quantization/fused.py that computes ``soft(x)`` (tested equal to it; faster, and what the
protocol's numbers come from), or ``soft(x)`` itself where a quantizer has no fused Function.

With ``straight_through = True`` (a quantizer with trainable parameters) soft mode runs the
straight-through estimate instead, :meth:`Quantizer.hard_with_soft_gradient`: forward the hard
mode's value ``decode(encode(x))``, exactly the codes a device sends, backward the gradient of
``soft(x)`` at the current ``tau``. The threshold quantizers (SQ, SQplus, Bw-SQ) run it through
their fused Functions, the others through the plain formula.

The temperature ``tau`` is a plain attribute set by the training loop; quantizers without a
temperature ignore it. Modules hold no device of their own: they follow their parameters and
inputs (``model.to(device)``). ``forward`` casts its rows to the quantizer's ``dtype`` (float32
unless the module was converted), so float64 rows give float32 outputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from core.checks import whole_number

from .fused import FusedCall, LLTLookup, LSQRound, SteppedSum, Thermometer, forward_by_hand
from .schedule import check_temperature
from .thresholds import (
    bits_of_thresholds,
    check_bits,
    check_rows,
    decode_midpoints,
    hard_index,
    midpoints,
    steps_from_index,
    threshold_ranks,
)

MIN_STATISTIC = 1e-8  # floor of the LSQ / LLT scale statistics, for constant features


def clamp_inclusive(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``clamp(x, low, high)`` whose gradient is 1 where ``low <= x <= high`` (bounds included) and 0 outside.

    The project's convention for a value exactly at a bound, the one LSQ's straight-through
    estimator states (``Q_n <= x / s <= Q_p``). torch's own ``clamp`` changed its choice in 2.14
    (0 at a scalar bound, 0.5 at a tensor bound; 1 before), so plain-autograd code uses this.
    """
    # NOTE[DIFF]: bounds inclusive whatever torch's clamp does
    return torch.where((x >= low) & (x <= high), x, x.detach().clamp(low, high))


class Quantizer(nn.Module):
    """Base class: the checked entries ``encode``, ``decode`` and ``forward`` around a subclass's
    trusting ``_encode`` (rows [n, d] -> int64 [n, d]), ``_decode`` (int64 [n, d] -> [n, out_features])
    and ``soft`` (plain autograd), plus optionally ``soft_function``, the fused Function computing ``soft``
    (and ``straight_through_function``, the one computing ``hard_with_soft_gradient``).
    """

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.n_features = whole_number("n_features", n_features, minimum=1)
        self.hard = False
        self.tau = 1.0
        self._straight_through = False

    @property
    def tau(self) -> float:
        """The temperature of the soft surrogate, finite and > 0 (it falls during training)."""
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = check_temperature(value)

    @property
    def straight_through(self) -> bool:
        """Whether soft mode (training) runs :meth:`hard_with_soft_gradient` instead of :meth:`soft`: the hard
        mode's value forward, the soft surrogate's gradient at ``tau`` backward. Hard mode is unaffected."""
        return self._straight_through

    @straight_through.setter
    def straight_through(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"straight_through must be True or False, got {value!r}")
        if value and not any(p.requires_grad for p in self.parameters()):
            raise ValueError(f"this {type(self).__name__} has no trainable parameters, so it trains on its hard "
                             "outputs already; straight_through is for a trainable quantizer (trainable=True)")
        self._straight_through = value

    @property
    def out_features(self) -> int:
        """Width of the network input this quantizer produces."""
        return self.n_features

    @property
    def n_levels(self) -> int:
        """How many indices a device can send per feature, ``0..n_levels - 1`` (``2**bits``)."""
        return 2**self.bits

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the quantizer's parameters and buffers (torch's default without any)."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized features [n, d] -> int64 indices [n, d] in ``0..n_levels - 1`` (the device's half)."""
        return self._encode(self.checked_rows(x))

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Integer indices [n, d] in ``0..n_levels - 1`` -> the network input [n, out_features] (the server's half)."""
        return self._decode(self.checked_index(index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n, out_features], in self.dtype
        """Hard mode: ``_decode(_encode(x))``; soft mode: the fused Function computing ``soft(x)`` (``soft``
        itself where there is none), in training and in the soft evaluations alike; with ``straight_through``
        the fused Function computing ``hard_with_soft_gradient(x)`` (or that method itself)."""
        x = self.checked_rows(x)
        if self.hard:
            # NOTE[DIFF]: every hard-mode output is decode(encode(x)), exactly what a deployment computes
            return self._decode(self._encode(x))
        call = self._soft_mode_call(x)
        return self._soft_mode(x) if call is None else call[0].apply(*call[1])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _encode")

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _decode")

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable training surrogate [n, d] -> [n, out_features], in plain autograd."""
        raise NotImplementedError(f"{type(self).__name__} must implement soft")

    def soft_function(self, x: torch.Tensor) -> FusedCall | None:
        """The fused autograd Function computing ``soft(x)`` and its arguments, or None (then ``soft`` runs)."""
        return None

    def hard_with_soft_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """The straight-through estimate, x [n, d] -> [n, out_features]: the value of the hard mode,
        ``decode(encode(x))`` exactly, with the gradient of ``soft(x)`` at the current ``tau``:
        ``hard + (soft - sg(soft))``, sg stopping the gradient (``soft - sg(soft)`` is exactly 0).
        What soft mode runs with ``straight_through``, in plain autograd."""
        soft = self.soft(x)  # first: LLT sets its scale from its first training batch
        return self._hard_value(x) + (soft - soft.detach())

    def straight_through_function(self, x: torch.Tensor) -> FusedCall | None:
        """The fused autograd Function computing ``hard_with_soft_gradient(x)`` and its arguments, or None
        (then that method runs)."""
        return None

    def _hard_value(self, x: torch.Tensor) -> torch.Tensor:
        """``_decode(_encode(x))`` without a gradient: the value the fused straight-through Functions return."""
        with torch.no_grad():
            return self._decode(self._encode(x))

    def _soft_mode(self, x: torch.Tensor) -> torch.Tensor:
        return self.hard_with_soft_gradient(x) if self.straight_through else self.soft(x)

    def _soft_mode_call(self, x: torch.Tensor) -> FusedCall | None:
        return self.straight_through_function(x) if self.straight_through else self.soft_function(x)

    def soft_with_backward(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """What soft mode computes, ``soft(x)`` [n, d] -> [n, out_features] (with ``straight_through``:
        ``hard_with_soft_gradient(x)``), and a function that takes d loss / d output and adds the parameters'
        gradients to their ``.grad`` (x gets no gradient): the stacked engine's call.

        With a fused Function both halves run by hand (:func:`quantization.fused.forward_by_hand`);
        otherwise through autograd.
        """
        x = x.detach()
        call = self._soft_mode_call(x)
        if call is not None:
            return forward_by_hand(call)
        with torch.enable_grad():
            out = self._soft_mode(x)
        return out.detach(), lambda grad: torch.autograd.backward(out, grad) if out.requires_grad else None

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
        int64, so that ``_decode``'s arithmetic cannot wrap around (uint8 payloads, say)."""
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


# =========================================================================== threshold methods
class ThresholdQuantizer(Quantizer):
    """Base of the threshold methods: per feature ``M = 2**bits - 1`` thresholds ``t_1..t_M`` [d, M].

    Hard encode (the device's rule): ``index(x) = #{k : x > t_k}`` in ``0..M``, strict ``>``, NaN
    exceeds nothing. With ``trainable=False`` the thresholds are buffers and the quantizer is hard
    from the start (its ``soft`` is the hard mode); with ``trainable=True`` they are a parameter
    trained through the sigmoid steps ``sigma((x - t_k) / tau)``, which round to ``[x > t_k]``
    (0.5 rounds to 0), what the hard mode computes even where training leaves them out of order.
    ``straight_through=True`` (trainable only) trains on the hard steps with the sigmoids' gradient
    (:meth:`Quantizer.hard_with_soft_gradient`).
    """

    def __init__(self, thresholds: torch.Tensor, trainable: bool = False, straight_through: bool = False) -> None:
        super().__init__(bits_of_thresholds(thresholds), thresholds.shape[0])
        if not thresholds.is_meta and not torch.isfinite(thresholds).all():  # meta: shapes only (save_model's check)
            raise ValueError("thresholds must be finite; compute them from rows without NaN or infinite values")
        self.trainable = trainable
        thresholds = thresholds.detach().clone()
        if not thresholds.is_floating_point():  # whole-number thresholds, say
            thresholds = thresholds.to(torch.get_default_dtype())
        if trainable:
            self.thresholds = nn.Parameter(thresholds)  # [d, M]
        else:
            self.register_buffer("thresholds", thresholds)  # [d, M]
            self.register_buffer("fixed_ranks", threshold_ranks(thresholds))  # [d, M]
        self.straight_through = straight_through

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # [n, d] -> int64 [n, d]
        return hard_index(x, self.thresholds.detach())

    def hard_steps(self, index: torch.Tensor) -> torch.Tensor:
        """The 0/1 steps ``[x > t_k]`` rebuilt from indices [n, d] -> [n, d, M], also for unsorted thresholds."""
        ranks = threshold_ranks(self.thresholds.detach()) if self.trainable else self.fixed_ranks
        return steps_from_index(index, ranks, self.thresholds.dtype)

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed thresholds: the hard mode itself."""
        return self._decode(self._encode(x))

    def straight_through_function(self, x: torch.Tensor) -> FusedCall | None:
        """The soft step's fused Function, handed the hard value to return (its backward stays the soft one)."""
        call = self.soft_function(x)
        return None if call is None else (call[0], (*call[1], self._hard_value(x)))


class SQQuantizer(ThresholdQuantizer):
    """SQ: per feature one input, the (soft) number of thresholds exceeded.

    soft: ``sum_k sigma((x - t_k) / tau)``, a soft index in ``(0, M)``, x [n, d] -> [n, d];
    hard: the index ``#{k : x > t_k}`` itself (encode: :class:`ThresholdQuantizer`).
    """

    def __init__(self, thresholds: torch.Tensor, trainable: bool = True, straight_through: bool = False) -> None:
        super().__init__(thresholds, trainable, straight_through)

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            return super().soft(x)
        steps = torch.sigmoid((x.unsqueeze(-1) - self.thresholds) / self.tau)  # [n, d, M]
        return steps.sum(dim=-1)

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        return index.to(self.thresholds.dtype)

    def soft_function(self, x: torch.Tensor) -> FusedCall | None:
        return (SteppedSum, (x, self.thresholds, None, self.tau)) if self.trainable else None


class SQplusQuantizer(ThresholdQuantizer):
    """SQplus: SQ with a learnable output value per interval, ``v`` [d, M + 1] started at the midpoints.

    soft: ``v_0 + sum_k sigma((x - t_k) / tau) (v_k - v_{k-1})``, x [n, d] -> [n, d];
    hard: ``v_{index(x)}`` (with unsorted thresholds: ``v_0 + sum_k [x > t_k] (v_k - v_{k-1})``).
    """

    def __init__(self, thresholds: torch.Tensor, trainable: bool = True, straight_through: bool = False) -> None:
        super().__init__(thresholds, trainable, straight_through)
        # NOTE[DIFF]: the values are used and learned; the paper's code creates them but computes SQplus as SQ
        self.interval_values = nn.Parameter(midpoints(self.thresholds.detach()))  # [d, M + 1]

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            return super().soft(x)
        steps = torch.sigmoid((x.unsqueeze(-1) - self.thresholds) / self.tau)  # [n, d, M]
        values = self.interval_values
        return values[:, 0] + (steps * values.diff(dim=-1)).sum(dim=-1)

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        values = self.interval_values
        return values[:, 0] + (self.hard_steps(index) * values.diff(dim=-1)).sum(dim=-1)

    def soft_function(self, x: torch.Tensor) -> FusedCall | None:
        return (SteppedSum, (x, self.thresholds, self.interval_values, self.tau)) if self.trainable else None


class BwSQQuantizer(ThresholdQuantizer):
    """Bw-SQ (the paper's method): the network sees every step of every feature (a thermometer code).

    soft: ``sigma((x_f - t_fk) / tau)`` for each threshold ``t_fk`` of feature f, the M of a feature
    side by side: x [n, d] -> [n, d * M]; hard: ``[x_f > t_fk]``, decoded from the index
    ``#{k : x_f > t_fk}`` (encode: :class:`ThresholdQuantizer`). ``trainable=False`` gives Bw-MQ and
    Bw-QQ: fixed min-max or quantile thresholds, hard 0/1 steps from the start.
    """

    def __init__(self, thresholds: torch.Tensor, trainable: bool = True, straight_through: bool = False) -> None:
        super().__init__(thresholds, trainable, straight_through)

    @property
    def out_features(self) -> int:
        """Width of the network input: ``d * M``."""
        return self.n_features * self.thresholds.shape[1]

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            return super().soft(x)
        steps = torch.sigmoid((x.unsqueeze(-1) - self.thresholds) / self.tau)  # [n, d, M]
        return steps.flatten(1)

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        return self.hard_steps(index).flatten(1)

    def soft_function(self, x: torch.Tensor) -> FusedCall | None:
        return (Thermometer, (x, self.thresholds, self.tau)) if self.trainable else None


class MidpointQuantizer(ThresholdQuantizer):
    """Pr-MQ, Pr-QQ, Po-MQ, Po-QQ: fixed sorted thresholds, the network sees the midpoint of the interval.

    hard (and soft): ``q_{index(x)}`` with ``q_0 = t_1 - (t_2 - t_1) / 2``, ``q_k = (t_k + t_{k+1}) / 2``,
    ``q_M = t_M + (t_M - t_{M-1}) / 2``: x [n, d] -> [n, d].
    """

    def __init__(self, thresholds: torch.Tensor) -> None:
        super().__init__(thresholds, trainable=False)
        self.register_buffer("interval_values", midpoints(self.thresholds))  # [d, M + 1]

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        return decode_midpoints(index, self.interval_values)


# =========================================================================== external baselines
class LSQQuantizer(Quantizer):
    """Learned step size quantization (Esser et al. 2020), one step size ``s_f`` per feature, signed levels.

    soft: ``round_ste(clamp(x / s', Q_n, Q_p)) s'`` with ``s' = s g + sg(s - s g)`` (value s, gradient
    scaled by ``g = 1 / sqrt(Q_p numel(x))``) and ``round_ste(z) = z + sg(round(z) - z)``, x [n, d] -> [n, d];
    hard: index ``round(clamp(x / s, Q_n, Q_p)) - Q_n``, decoded to ``(index + Q_n) s``.
    ``Q_n = -2**(bits-1)``, ``Q_p = 2**(bits-1) - 1``. The step size is ``step_size``; models saved
    when it was called ``step`` load too.
    """

    def __init__(self, bits: int, n_features: int) -> None:
        super().__init__(bits, n_features)
        self.q_min, self.q_max = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.step_size = nn.Parameter(torch.ones(self.n_features))  # [d]

    @torch.no_grad()
    def init_step_size(self, x: torch.Tensor) -> LSQQuantizer:
        """Set ``s_f = 2 mean|x_f| / sqrt(Q_p)`` from the training rows x [n, d] (never 0)."""
        mean_abs = check_rows(x, self.n_features).abs().mean(dim=0)
        # NOTE[DIFF]: mean|x_f| is floored at 1e-8, so that a feature of zeros gets a step size > 0
        self.step_size.copy_(2 * mean_abs.clamp_min(MIN_STATISTIC) / math.sqrt(self.q_max))
        return self

    def grad_scale(self, x: torch.Tensor) -> float:
        """LSQ's step-size gradient scale ``g = 1 / sqrt(Q_p numel(x))`` for a batch x (no rows: 1 / sqrt(Q_p))."""
        return 1.0 / math.sqrt(self.q_max * max(x.numel(), 1))

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        s, g = self.step_size, self.grad_scale(x)
        s = s * g + (s - s * g).detach()
        z = clamp_inclusive(x / s, self.q_min, self.q_max)
        return (z + (z.round() - z).detach()) * s

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.clamp(x / self.step_size.detach(), self.q_min, self.q_max)
        z = z.nan_to_num_(nan=self.q_min)  # NOTE[DIFF]: NaN sends index 0, as on the device
        # NOTE[DIFF]: LSQ sends level - Q_n in 0..2**b - 1; the paper defines no wire format for it
        return torch.round(z).long() - self.q_min

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        return (index + self.q_min).to(self.step_size.dtype) * self.step_size

    def soft_function(self, x: torch.Tensor) -> FusedCall:
        return LSQRound, (x, self.step_size, self.q_min, self.q_max, self.grad_scale(x))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *arguments) -> None:
        if prefix + "step" in state_dict:  # a model saved before the parameter was called step_size
            state_dict[prefix + "step_size"] = state_dict.pop(prefix + "step")
        super()._load_from_state_dict(state_dict, prefix, *arguments)


class LLTQuantizer(Quantizer):
    """Learnable lookup table quantization (Wang et al. 2022), signed table, per feature.

    Table logits ``L`` [d, R, G] with ``R = 2**(bits-1) - 1`` segments per sign and granularity ``G``;
    table ``T = [-c reversed, 0, c] / R`` of ``K = 2 R G + 1`` entries, ``c = cumsum(p)`` of ``p = softmax(L / tau)``
    (soft) or of the one-hot arg-max of each segment (hard); scale ``s = exp(log_scale)``.
    soft: ``(T[i] + u - sg(u)) s`` with ``u = clamp(x / s, -1, 1)`` and ``i = round(R G (u + 1))``; in training the
    gradient reaching ``T[k]`` is multiplied by ``N / (K (sqrt(h_k) + 1e-5))``, h the K-bin histogram of u.
    hard: the transmitted index is the hard table's level ``R T[i] + R`` in ``0..2R`` (``2**bits - 1`` levels).
    """

    def __init__(self, bits: int, n_features: int, granularity: int) -> None:
        super().__init__(bits, n_features)
        self.segments = 2 ** (self.bits - 1) - 1
        self.granularity = whole_number("granularity", granularity, minimum=1)
        self.table_size = 2 * self.segments * self.granularity + 1
        self.logits = nn.Parameter(torch.zeros(self.n_features, self.segments, self.granularity))
        self.log_scale = nn.Parameter(torch.zeros(self.n_features))  # [d]
        self.scale_initialized = False  # a Python flag (saved as extra state): no device sync per batch

    @property
    def n_levels(self) -> int:
        """How many indices a device can send per feature: the ``2R + 1 = 2**bits - 1`` table levels."""
        return 2 * self.segments + 1

    def get_extra_state(self) -> dict[str, bool]:
        return {"scale_initialized": self.scale_initialized}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.scale_initialized = state["scale_initialized"]

    def table(self, hard: bool) -> torch.Tensor:
        """The lookup table ``[d, K]`` in ``[-1, 1]``: soft (softmax at tau) or hard (arg-max)."""
        if hard:
            p = nn.functional.one_hot(self.logits.argmax(dim=-1), self.granularity).to(self.logits.dtype)
        else:
            p = torch.softmax(self.logits / self.tau, dim=-1)  # [d, R, G]
        c = p.flatten(1).cumsum(dim=-1)  # [d, R*G], rises to R
        return torch.cat([-c.flip(-1), torch.zeros_like(c[:, :1]), c], dim=-1) / self.segments

    def _look_up(self, table: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``T[f, round(R G (u + 1))]`` for u [n, d] in [-1, 1] and a table [d, K] -> [n, d]."""
        # NOTE[DIFF]: NaN takes entry 0 (level -R, index 0), as on the device; the paper's code has no NaN rule
        position = ((u + 1) * ((self.table_size - 1) / 2)).round().nan_to_num(0.0).long()
        return table[torch.arange(self.n_features, device=u.device), position]

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        self._init_scale_once(x)
        table = self.table(hard=False)  # [d, K]
        if self.training and x.shape[0] > 0:
            with torch.no_grad():
                weight = x.shape[0] / (self.table_size * (self._histogram(x).sqrt() + 1e-5))  # [d, K]
            table = table.detach() + (table - table.detach()) * weight
        s = self.log_scale.exp()
        u = clamp_inclusive(x / s, -1.0, 1.0)
        return (self._look_up(table, u) + u - u.detach()) * s

    def _histogram(self, x: torch.Tensor) -> torch.Tensor:
        """Counts [d, K] of ``u = clamp(x / s, -1, 1)`` per feature in K bins over the batch's own min..max."""
        u = torch.clamp(x / self.log_scale.exp(), -1.0, 1.0)
        # NOTE[DIFF]: a feature constant in the batch counts in the middle bin (torch.histc widens its range by 1),
        # the paper's code gives no rule
        return torch.stack([torch.histc(f, self.table_size, f.min().item(), f.max().item()) for f in u.T])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u = torch.clamp(x / self.log_scale.exp(), -1.0, 1.0)
            level = self._look_up(self.table(hard=True), u) * self.segments  # [n, d]
        # NOTE[DIFF]: LLT sends its table level 0..2R (fits b bits), not its table position
        return torch.round(level).long() + self.segments

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        level = (index - self.segments).to(self.log_scale.dtype) / self.segments
        return level * self.log_scale.exp()

    @torch.no_grad()
    def _init_scale_once(self, x: torch.Tensor) -> None:
        """In training, set ``s_f = 3 std(x_f)`` (never 0) from the first batch of rows x [n, d] (one row: spread 0)."""
        if not self.training or self.scale_initialized or x.shape[0] == 0:
            return
        spread = x.std(dim=0) if x.shape[0] > 1 else torch.zeros_like(x[0])
        # NOTE[DIFF]: std(x_f) is floored at 1e-8, so that a constant feature (or one row) gets a finite log scale
        self.log_scale.copy_(torch.log(3 * spread.clamp_min(MIN_STATISTIC)))
        self.scale_initialized = True

    def soft_function(self, x: torch.Tensor) -> FusedCall:
        self._init_scale_once(x)
        # in training the gradient reaching the table is reweighted by the histogram of u
        return LLTLookup, (self.logits, self.log_scale, x, self.tau, self.training)
