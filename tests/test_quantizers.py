"""Tests of quantization/quantizers.py and fused.py: the threshold quantizers (SQ, SQplus, Bw-*, Pr-/Po-*), LSQ and LLT.

Expected values are worked out by hand (comments) or with numpy, independently of the code
under test (the paper's definitions and those of the LSQ and LLT papers).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from deployment.export import build_encoder
from models import MLP, SavedModel, Setting, SplitModel
from quantization import (
    BwSQQuantizer,
    LLTQuantizer,
    LSQQuantizer,
    MidpointQuantizer,
    SQplusQuantizer,
    SQQuantizer,
    ThresholdQuantizer,
)
from quantization.fused import LLTLookup, SteppedSum, Thermometer, histogram, rise_matrix
from quantization.quantizers import clamp_inclusive

T3 = torch.tensor([[-1.0, 0.0, 1.0]])  # one feature, 2 bits
X = torch.tensor([[-2.0], [-1.0], [-0.5], [0.0], [0.3], [1.0], [5.0]])
INDEX = [0, 0, 1, 1, 2, 2, 3]  # strict ">": -1 exceeds nothing, 1 exceeds -1 and 0
MID = [-1.5, -1.5, -0.5, -0.5, 0.5, 0.5, 1.5]  # midpoints of [-1, 0, 1]: -1.5, -0.5, 0.5, 1.5
THERMO = {0: [0, 0, 0], 1: [1, 0, 0], 2: [1, 1, 0], 3: [1, 1, 1]}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hard(q):
    q.hard = True
    return q


def soft_path(q, x, path):
    """The soft output of q: the fused Function its forward runs, or its plain ``soft`` formula."""
    return q(x) if path == "fused" else q.soft(x)


PATHS = ["fused", "plain"]
TRAINABLE = {"index": SQQuantizer, "values": SQplusQuantizer, "thermometer": BwSQQuantizer}  # by what the network sees


# =========================================================================== ThresholdQuantizer
@pytest.mark.parametrize("make", [SQQuantizer, BwSQQuantizer, SQplusQuantizer, MidpointQuantizer])
def test_encode_hand_case(make):
    q = make(T3)
    assert q.bits == 2
    assert q.encode(X).squeeze(1).tolist() == INDEX
    assert q.encode(X).dtype == torch.int64


def test_midpoint_readout_hand_case():
    q = hard(MidpointQuantizer(T3))
    assert q.out_features == 1
    assert q(X).squeeze(1).tolist() == MID
    assert q.decode(torch.tensor([[0], [1], [2], [3]])).squeeze(1).tolist() == [-1.5, -0.5, 0.5, 1.5]
    # fixed thresholds: soft mode is the hard quantization too
    q.hard = False
    assert q(X).squeeze(1).tolist() == MID


@pytest.mark.parametrize("trainable", [False, True])
def test_thermometer_hard_hand_case(trainable):
    q = hard(BwSQQuantizer(T3, trainable=trainable))
    assert q.out_features == 3
    out = q(X)
    assert out.shape == (7, 3)
    assert out.tolist() == [THERMO[i] for i in INDEX]


def test_thermometer_two_features_layout():
    # feature-major: [f0 bits..., f1 bits...]
    t = torch.tensor([[-1.0, 0.0, 1.0], [10.0, 20.0, 30.0]])
    q = hard(BwSQQuantizer(t))
    assert q.out_features == 6
    out = q(torch.tensor([[0.5, 25.0], [-3.0, 31.0]]))
    assert out.tolist() == [[1, 1, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def test_sq_index_readout_hard_hand_case():
    q = hard(SQQuantizer(T3))
    assert q.out_features == 1
    out = q(X)
    assert out.dtype == torch.float32
    assert out.squeeze(1).tolist() == [float(i) for i in INDEX]


def test_sqplus_hard_output_is_value_of_interval():
    q = hard(SQplusQuantizer(T3))
    # initial values are the midpoints
    np.testing.assert_allclose(q.interval_values.detach().numpy(), [[-1.5, -0.5, 0.5, 1.5]])
    assert q(X).squeeze(1).tolist() == MID
    v = [3.0, -7.0, 0.25, 11.0]
    with torch.no_grad():
        q.interval_values.copy_(torch.tensor([v]))
    np.testing.assert_allclose(q(X).squeeze(1).detach().numpy(), [v[i] for i in INDEX], atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_soft_outputs_are_sigmoids(tau, path):
    x = X.squeeze(1).numpy().astype(np.float64)
    t = np.array([-1.0, 0.0, 1.0])
    s = sigmoid((x[:, None] - t[None]) / tau)  # [7, 3]

    q = BwSQQuantizer(T3)
    q.tau = tau
    np.testing.assert_allclose(soft_path(q, X, path).detach().numpy(), s, rtol=1e-5, atol=1e-6)

    q = SQQuantizer(T3)
    q.tau = tau
    np.testing.assert_allclose(soft_path(q, X, path).squeeze(1).detach().numpy(), s.sum(1), rtol=1e-5, atol=1e-6)

    q = SQplusQuantizer(T3)
    v = np.array([3.0, -7.0, 0.25, 11.0])
    with torch.no_grad():
        q.interval_values.copy_(torch.tensor(v[None], dtype=torch.float32))
    q.tau = tau
    expected = v[0] + (s * np.diff(v)[None]).sum(1)
    np.testing.assert_allclose(soft_path(q, X, path).squeeze(1).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
@pytest.mark.parametrize("value", [2.3, 35.1, -0.62784415])
def test_soft_step_at_its_threshold_is_one_half(readout, value):
    # sigmoid(0) = 0.5 exactly, at any tau: x - t must not pick up rounding (x / tau - t / tau
    # rounds both terms alike; -t / tau + x * (1 / tau) in one fused step does not)
    q = TRAINABLE[readout](torch.tensor([[value, value + 10, value + 20]]))
    if readout == "values":
        with torch.no_grad():
            q.interval_values.copy_(torch.tensor([[0.0, 1.0, 1.0, 1.0]]))  # output = the first step
    q.tau = 1e-4
    with torch.no_grad():
        out = q.soft(torch.tensor([[value]]))
    assert out.flatten()[0].item() == 0.5 and (out.flatten()[1:] == 0).all()


def test_hard_mode_with_unsorted_thresholds_matches_steps():
    """Bw-SQ / SQplus in hard mode equal [x > t_k] read out, even with unordered thresholds."""
    rng = np.random.default_rng(3)
    t = rng.normal(size=(3, 7))  # 3 bits, unsorted
    t[1, 2] = t[1, 5]  # a tie
    x = rng.normal(size=(400, 3))
    x[:5, 1] = t[1, 2]  # values exactly on a threshold
    steps = (x[:, :, None] > t[None]).astype(np.float32)  # [n, d, M]
    xt = torch.tensor(x, dtype=torch.float32)
    tt = torch.tensor(t, dtype=torch.float32)

    q = hard(BwSQQuantizer(tt))
    np.testing.assert_array_equal(q(xt).numpy(), steps.reshape(400, 21))

    q = hard(SQplusQuantizer(tt))
    v = rng.normal(size=(3, 8))
    with torch.no_grad():
        q.interval_values.copy_(torch.tensor(v, dtype=torch.float32))
    expected = v[:, 0][None] + (steps * np.diff(v, axis=1)[None]).sum(-1)
    np.testing.assert_allclose(q(xt).detach().numpy(), expected, rtol=1e-5, atol=1e-5)

    # hard equals the rounding of the soft sigmoids at a tiny temperature (0.5 rounds to 0)
    q = BwSQQuantizer(tt)
    q.tau = 1e-4
    away = np.abs(x[:, :, None] - t[None]).min(-1).min(-1) > 1e-2
    rounded = torch.round(q(xt)).detach().numpy()
    np.testing.assert_array_equal(rounded[away], steps.reshape(400, 21)[away])


def test_threshold_quantizers_are_one_class_per_method():
    assert all(issubclass(make, ThresholdQuantizer) for make in (*TRAINABLE.values(), MidpointQuantizer))
    with pytest.raises(TypeError):  # the midpoint readout needs fixed (sorted) thresholds
        MidpointQuantizer(T3, trainable=True)


@pytest.mark.parametrize("bits", range(2, 9))
def test_threshold_quantizer_bits_follow_from_the_width(bits):
    q = SQQuantizer(torch.zeros(2, 2**bits - 1), trainable=False)
    assert q.bits == bits and type(q.bits) is int and q.n_features == 2


@pytest.mark.parametrize("width", [0, 1, 2, 4, 6, 8, 14, 16, 254, 256, 511])
def test_threshold_quantizer_names_the_allowed_widths(width):
    message = r"expected 2\*\*bits - 1 thresholds per feature \(3, 7, 15, 31, 63, 127 or 255 for 2 to 8 bits\)"
    with pytest.raises(ValueError, match=message + f", got {width}$"):
        SQQuantizer(torch.zeros(3, width), trainable=False)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 3), ()])
def test_threshold_quantizer_needs_a_row_per_feature(shape):
    with pytest.raises(ValueError, match=r"thresholds must have shape \[d, 2\*\*bits - 1\]"):
        SQQuantizer(torch.zeros(shape), trainable=False)


def test_threshold_quantizer_copies_its_thresholds():
    t = T3.clone()
    q = SQQuantizer(t)
    t.fill_(100.0)
    assert q.thresholds.detach().tolist() == [[-1.0, 0.0, 1.0]]


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
def test_gradients_reach_trainable_thresholds(readout):
    rng = np.random.default_rng(1)
    t = torch.tensor(np.sort(rng.normal(size=(2, 7)), axis=1), dtype=torch.float32)
    q = TRAINABLE[readout](t)
    q.tau = 0.5
    x = torch.tensor(rng.normal(size=(64, 2)), dtype=torch.float32)
    w = torch.tensor(rng.normal(size=(64, q.out_features)), dtype=torch.float32)
    (q(x) * w).sum().backward()
    assert q.thresholds.grad is not None
    assert torch.all(q.thresholds.grad != 0)
    if readout == "values":
        assert q.interval_values.grad is not None and torch.all(q.interval_values.grad != 0)
    names = {n for n, _ in q.named_parameters()}
    assert "thresholds" in names


@pytest.mark.parametrize("path", PATHS)
def test_threshold_gradient_value_hand_case(path):
    # SQ, one feature: d/dt_k sigma((x - t_k)/tau) = -sigma'(z_k)/tau with sigma' = s(1 - s)
    q = SQQuantizer(T3)
    q.tau = 0.5
    x = torch.tensor([[0.2]])
    soft_path(q, x, path).sum().backward()
    z = (0.2 - np.array([-1.0, 0.0, 1.0])) / 0.5
    expected = -sigmoid(z) * (1 - sigmoid(z)) / 0.5
    np.testing.assert_allclose(q.thresholds.grad.numpy()[0], expected, rtol=1e-5)


@pytest.mark.parametrize("readout", ["index", "thermometer", "midpoint"])
def test_fixed_thresholds_are_buffers(readout):
    q = MidpointQuantizer(T3) if readout == "midpoint" else TRAINABLE[readout](T3, trainable=False)
    assert "thresholds" in dict(q.named_buffers())
    assert not q.thresholds.requires_grad
    assert list(q.parameters()) == []
    if readout == "midpoint":
        assert "interval_values" in dict(q.named_buffers())
    out = q(X)
    assert not out.requires_grad
    assert "thresholds" in q.state_dict()


# =========================================================================== LSQ
def test_lsq_levels_two_bits():
    q = hard(LSQQuantizer(2, 1))
    with torch.no_grad():
        q.step_size.fill_(1.0)
    # levels -2, -1, 0, 1; x/s rounded and clamped to -2..1
    x = torch.tensor([[-9.0], [-1.6], [-0.7], [0.2], [0.6], [1.4], [7.0]])
    assert q.encode(x).squeeze(1).tolist() == [0, 0, 1, 2, 3, 3, 3]
    assert q(x).squeeze(1).tolist() == [-2.0, -2.0, -1.0, 0.0, 1.0, 1.0, 1.0]


def test_lsq_levels_three_bits():
    q = hard(LSQQuantizer(3, 1))
    with torch.no_grad():
        q.step_size.fill_(0.5)
    assert (q.q_min, q.q_max) == (-4, 3)
    # x/s: -20, -2.4, -0.52, 0, 0.48, 1.52, 2.98, 20 -> clamp/round -4, -2, -1, 0, 0, 2, 3, 3
    x = torch.tensor([[-10.0], [-1.2], [-0.26], [0.0], [0.24], [0.76], [1.49], [10.0]])
    assert q.encode(x).squeeze(1).tolist() == [0, 2, 3, 4, 4, 6, 7, 7]
    assert q(x).squeeze(1).tolist() == [-2.0, -1.0, -0.5, 0.0, 0.0, 1.0, 1.5, 1.5]
    levels = q.decode(torch.arange(8)[:, None]).squeeze(1).tolist()
    assert levels == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]


def test_lsq_per_feature_steps():
    q = hard(LSQQuantizer(2, 2))
    with torch.no_grad():
        q.step_size.copy_(torch.tensor([1.0, 0.25]))
    x = torch.tensor([[0.6, 0.6], [-0.6, -0.6]])
    # feature 0: 0.6 -> 1 -> 1.0, -0.6 -> -1 -> -1.0; feature 1: 2.4 -> clamp 1 -> 0.25; -2.4 -> -2 -> -0.5
    assert q(x).tolist() == [[1.0, 0.25], [-1.0, -0.5]]


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_lsq_step_initialisation(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(50, 3)) * np.array([1.0, 2.0, 0.5])
    qp = 2 ** (bits - 1) - 1
    expected = 2 * np.abs(x).mean(0) / math.sqrt(qp)
    q = LSQQuantizer(bits, 3)
    assert q.init_step_size(torch.tensor(x, dtype=torch.float32)) is q
    np.testing.assert_allclose(q.step_size.detach().numpy(), expected, rtol=1e-5)


def test_lsq_step_initialisation_from_one_row():
    # 3 bits: Q_p = 3; s = 2 |x| / sqrt(3), the zero column floored at 1e-8
    q = LSQQuantizer(3, 3).double().init_step_size(torch.tensor([[0.5, -2.0, 0.0]], dtype=torch.float64))
    expected = np.array([1.0, 4.0, 2e-8]) / math.sqrt(3)
    np.testing.assert_allclose(q.step_size.detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("shape", [(5,), (0, 2), (5, 3), (5, 1), (2, 5, 2)])
def test_lsq_step_initialisation_needs_rows_of_its_features(shape):
    q = LSQQuantizer(3, 2)
    with pytest.raises(ValueError, match=r"x must be training rows of shape \[n, 2\] with n >= 1"):
        q.init_step_size(torch.ones(shape))
    assert q.step_size.detach().tolist() == [1.0, 1.0]


@pytest.mark.parametrize("bits", [np.int64(3), np.int32(3), np.uint8(3)])
def test_quantizers_accept_numpy_integer_bits(bits):
    lsq = LSQQuantizer(bits, 2)
    assert lsq.bits == 3 and type(lsq.bits) is int and (lsq.q_min, lsq.q_max) == (-4, 3)
    llt = LLTQuantizer(bits, 2, np.int64(4))
    assert type(llt.bits) is int and type(llt.granularity) is int
    assert (llt.segments, llt.granularity, llt.table_size) == (3, 4, 25)  # K = 2 * 3 * 4 + 1
    assert llt.logits.shape == (2, 3, 4)


FLOAT32_TENTH = 0.10000000149011612  # float32(0.1), the threshold below
QUANTIZER_KINDS = {
    "SQ": lambda t: SQQuantizer(t),
    "SQplus": lambda t: SQplusQuantizer(t),
    "Bw-SQ": lambda t: BwSQQuantizer(t),
    "Bw-QQ": lambda t: BwSQQuantizer(t, trainable=False),
    "Pr-QQ": lambda t: MidpointQuantizer(t),
    "LSQ": lambda t: LSQQuantizer(2, 1),
    "LLT": lambda t: LLTQuantizer(2, 1, 4),
}


@pytest.mark.parametrize("kind", QUANTIZER_KINDS)
@pytest.mark.parametrize("hard", [False, True])
def test_float64_rows_are_cast_to_the_model_dtype(kind, hard):
    # 0.1000000016 exceeds float32(0.1) in float64 (index 2 for SQ), but cast to float32, as a
    # device measures it, it rounds to float32(0.1) (spacing 7.5e-9) and exceeds only -1 (index 1)
    x64 = torch.tensor([[-2.0], [0.1000000016], [0.7], [3.0]], dtype=torch.float64)
    quantizer = QUANTIZER_KINDS[kind](torch.tensor([[-1.0, FLOAT32_TENTH, 1.0]]))
    model = SplitModel(quantizer, MLP(quantizer.out_features, 4, 1, dropout=0.0)).eval()
    model.set_hard(hard)
    assert quantizer(x64).dtype == torch.float32
    assert torch.equal(quantizer(x64), quantizer(x64.float()))
    assert torch.equal(model(x64), model(x64.float()))
    if hard:
        assert torch.equal(model.edge(x64), model.edge(x64.float()))
        assert torch.equal(model.cloud(model.edge(x64)), model(x64))
    if kind == "SQ":
        assert model.edge(x64).tolist() == [[0], [1], [2], [3]]


def test_full_precision_model_casts_float64_rows():
    mlp = MLP(2, 4, 1, dropout=0.0)
    x64 = torch.tensor([[0.5, -1.25], [2.0, 0.1]], dtype=torch.float64)
    assert torch.equal(SplitModel(None, mlp)(x64), mlp(x64.float()))


@pytest.mark.parametrize("path", PATHS)
def test_lsq_step_gradient_hand_case(path):
    # 3 bits: Qn = -4, Qp = 3, s = 0.5; one feature, batch of 4
    # x/s = 0.6, 3.4 (clamped to 3), -10 (clamped to -4), 1.48
    # d xhat / ds = round(z) - z inside, Qp / Qn when clamped: 0.4, 3, -4, -0.48
    # loss = sum(w * xhat), w = 1, 2, 3, 4 -> 0.4 + 6 - 12 - 1.92 = -7.52, times 1/sqrt(Qp * numel)
    q = LSQQuantizer(3, 1)
    with torch.no_grad():
        q.step_size.fill_(0.5)
    x = torch.tensor([[0.3], [1.7], [-5.0], [0.74]], requires_grad=True)
    w = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = soft_path(q, x, path)
    np.testing.assert_allclose(out.detach().squeeze(1).numpy(), [0.5, 1.5, -2.0, 0.5])
    (out * w).sum().backward()
    np.testing.assert_allclose(q.step_size.grad.numpy(), [-7.52 / math.sqrt(3 * 4)], rtol=1e-5)
    # straight-through estimator: gradient 1 inside the range, 0 where clamped
    np.testing.assert_allclose(x.grad.squeeze(1).numpy(), [1.0, 0.0, 0.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_lsq_step_gradient_scale_uses_all_elements(path):
    # two features, batch of 3: g = 1 / sqrt(Qp * 3 * 2); 2 bits -> Qp = 1, Qn = -2, s = (1, 2)
    # f0: x/s = 0.3, -0.8, 5 (-> 1): grads 0 - 0.3, -1 + 0.8, Qp = 1 -> sum 0.5
    # f1: x/s = 0.7, -3 (-> -2), 0.45: grads 1 - 0.7, Qn = -2, 0 - 0.45 -> sum -2.15
    q = LSQQuantizer(2, 2)
    with torch.no_grad():
        q.step_size.copy_(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[0.3, 1.4], [-0.8, -6.0], [5.0, 0.9]])
    soft_path(q, x, path).sum().backward()
    g = 1 / math.sqrt(1 * 6)
    np.testing.assert_allclose(q.step_size.grad.numpy(), [0.5 * g, -2.15 * g], rtol=1e-5)


def test_lsq_soft_value_equals_hard_value():
    q = LSQQuantizer(4, 3)
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    q.init_step_size(x)
    soft = q(x).detach()
    q.hard = True
    np.testing.assert_allclose(soft.numpy(), q(x).detach().numpy(), atol=1e-6)


# =========================================================================== LLT
def set_logits(q, logits):
    with torch.no_grad():
        q.logits.copy_(torch.as_tensor(logits, dtype=q.logits.dtype))


def test_llt_sizes():
    for bits, g in [(2, 4), (3, 9), (8, 4)]:
        q = LLTQuantizer(bits, 5, g)
        r = 2 ** (bits - 1) - 1
        assert q.segments == r
        assert q.table_size == 2 * r * g + 1
        assert q.logits.shape == (5, r, g)
        assert torch.all(q.logits == 0)
        assert q.log_scale.shape == (5,)


def test_llt_hard_table_hand_case():
    # bits 2: R = 1, G = 4, K = 9. arg-max at position 2: p = 0 0 1 0, c = 0 0 1 1,
    # T = [-(c reversed), 0, c] / R = [-1 -1 0 0 | 0 | 0 0 1 1]
    q = LLTQuantizer(2, 1, 4)
    set_logits(q, [[[0.1, -0.3, 2.0, 0.5]]])
    assert q.table(hard=True).tolist() == [[-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]


def test_llt_hard_table_three_bits_hand_case():
    # bits 3: R = 3, G = 2, K = 13. arg-max per segment: 1, 0, 1
    # p = 0 1 | 1 0 | 0 1, c = 0 1 2 2 2 3; T = [-3 -2 -2 -2 -1 0 | 0 | 0 1 2 2 2 3] / 3
    q = LLTQuantizer(3, 1, 2)
    set_logits(q, [[[0.0, 1.0], [5.0, -1.0], [-2.0, -1.5]]])
    expected = np.array([-3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3]) / 3
    np.testing.assert_allclose(q.table(hard=True).numpy()[0], expected, atol=1e-7)


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_llt_soft_table(tau):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 4))  # 3 bits, G = 4
    q = LLTQuantizer(3, 2, 4).double()
    set_logits(q, logits)
    q.tau = tau
    e = np.exp(logits / tau)
    p = (e / e.sum(-1, keepdims=True)).reshape(2, 12)
    c = np.cumsum(p, axis=1)
    expected = np.concatenate([-c[:, ::-1], np.zeros((2, 1)), c], axis=1) / 3
    got = q.table(hard=False).detach().numpy()
    assert got.shape == (2, 25)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got[:, 0], -1.0, atol=1e-12)
    np.testing.assert_allclose(got[:, -1], 1.0, atol=1e-12)


def test_llt_scale_initialised_at_first_training_forward():
    q = LLTQuantizer(2, 2, 4)
    x = torch.tensor([[1.0, 0.5], [2.0, 0.5], [3.0, 1.0], [6.0, 2.0]])
    # column 0: mean 3, squared deviations 4 1 0 9 -> sample std sqrt(14/3)
    # column 1: mean 1, squared deviations .25 .25 0 1 -> sample std sqrt(1.5/3)
    expected = np.log(3 * np.array([math.sqrt(14 / 3), math.sqrt(0.5)]))
    q.eval()
    q(x)  # evaluation does not initialise
    assert not bool(q.scale_initialized)
    assert q.log_scale.detach().tolist() == [0.0, 0.0]
    q.train()
    q(x)
    assert bool(q.scale_initialized)
    np.testing.assert_allclose(q.log_scale.detach().numpy(), expected, rtol=1e-6)
    q(x * 10)  # only the first training batch sets it
    np.testing.assert_allclose(q.log_scale.detach().numpy(), expected, rtol=1e-6)
    assert q.state_dict()["_extra_state"] == {"scale_initialized": True}


def test_llt_first_training_batch_of_one_row_gives_a_finite_scale():
    # one row has no spread: s = 3 * 1e-8 (the floor), no NaN and no "degrees of freedom" warning
    q = LLTQuantizer(3, 2, 4)
    q.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = q(torch.tensor([[0.5, -2.0]]))
    assert bool(torch.isfinite(out).all())
    np.testing.assert_allclose(q.log_scale.detach().numpy(), [math.log(3e-8)] * 2, rtol=1e-6)
    # zero logits: the arg-max is entry 0 of each segment, so T[0] = -1 and T[K - 1] = 1 (levels -3, 3);
    # with the tiny scale any value beyond +-3e-8 lands on the table's ends: indices 6 and 0
    q.eval()
    q.hard = True
    x = torch.tensor([[1.0, -1.0], [-0.5, 4.0]])
    assert q.encode(x).tolist() == [[6, 0], [0, 6]]
    np.testing.assert_allclose(q(x).detach().numpy(), [[3e-8, -3e-8], [-3e-8, 3e-8]], rtol=1e-5)


@pytest.mark.parametrize("granularity", [0, -1, 1.5, True, "4", None])
def test_llt_granularity_must_be_a_positive_integer(granularity):
    number = isinstance(granularity, (int, float)) and not isinstance(granularity, bool)
    shown = granularity if number else repr(granularity)
    with pytest.raises(ValueError, match=f"granularity must be a whole number >= 1, got {shown}"):
        LLTQuantizer(3, 2, granularity)
    assert LLTQuantizer(3, 2, 2.0).granularity == 2  # a whole number, as everywhere in the API


def test_llt_granularity_one_is_a_plain_table():
    # G = 1, 2 bits: R = 1, K = 3, p = 1: T = [-1, 0, 1]
    q = hard(LLTQuantizer(2, 1, 1))
    assert q.table(hard=True).tolist() == [[-1.0, 0.0, 1.0]]
    assert q.encode(torch.tensor([[-0.9], [0.2], [0.7]])).squeeze(1).tolist() == [0, 1, 2]


@pytest.mark.parametrize("bits,g", [(2, 4), (3, 9), (5, 4), (8, 9)])
def test_llt_hard_lookup_matches_numpy(bits, g):
    rng = np.random.default_rng(bits * 10 + g)
    d = 3
    r = 2 ** (bits - 1) - 1
    logits = rng.normal(size=(d, r, g))
    log_s = np.log([0.5, 1.0, 2.5])
    q = hard(LLTQuantizer(bits, d, g).double())
    set_logits(q, logits)
    with torch.no_grad():
        q.log_scale.copy_(torch.tensor(log_s))
    # hard table with numpy: one-hot arg-max, cumsum, [-c reversed, 0, c] / R
    onehot = np.eye(g)[logits.argmax(-1)].reshape(d, r * g)
    c = np.cumsum(onehot, axis=1)
    table = np.concatenate([-c[:, ::-1], np.zeros((d, 1)), c], axis=1) / r  # [d, K]
    x = rng.normal(size=(2000, d)) * 2
    s = np.exp(log_s)
    u = np.clip(x / s, -1, 1)
    pos = np.round(r * g * (u + 1)).astype(int)
    expected = table[np.arange(d)[None], pos] * s
    got = q.decode(q.encode(torch.tensor(x))).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(q(torch.tensor(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(q.encode(torch.tensor(x)).numpy(), np.round(table[np.arange(d)[None], pos] * r) + r)


@pytest.mark.parametrize("path", PATHS)
def test_llt_table_gradient_is_rescaled_by_histogram(path):
    """The gradient reaching table entry k is multiplied by N / (K (sqrt(h_k) + 1e-5))."""
    q = LLTQuantizer(2, 1, 4).double()  # R = 1, G = 4, K = 9
    q.train()
    with torch.no_grad():
        q.scale_initialized = True  # s = 1
    # u = x; positions round(4 (u + 1)): 0, 1, 1, 5, 5, 8
    u = np.array([-0.9, -0.85, -0.75, 0.13, 0.2, 0.9])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pos = np.round(4 * (u + 1)).astype(int)
    assert pos.tolist() == [0, 1, 1, 5, 5, 8]
    # histogram with 9 bins over the batch's own min..max: bin width 0.2 -> bins 0 0 0 5 5 8
    h, _ = np.histogram(u, bins=9, range=(u.min(), u.max()))
    assert h.tolist() == [3, 0, 0, 0, 0, 2, 0, 0, 1]
    table_values = np.linspace(-1.0, 1.0, 9) ** 3  # antisymmetric and rising: a soft table
    set_logits(q, np.log(np.diff(table_values[4:]))[None, None])  # p = rise steps, at tau = 1
    np.testing.assert_allclose(q.table(hard=False).detach().numpy()[0], table_values, atol=1e-12)
    out = soft_path(q, torch.tensor(u[:, None]), path)
    np.testing.assert_allclose(out.detach().numpy()[:, 0], table_values[pos], atol=1e-12)
    (out[:, 0] * torch.tensor(w)).sum().backward()
    raw = np.zeros(9)
    np.add.at(raw, pos, w)  # d loss / d T[k] without rescaling (s = 1)
    expected = raw * 6 / (9 * (np.sqrt(h) + 1e-5))
    # the logits get the rescaled table gradient, chained through the table
    expected_logits = torch.autograd.grad(q.table(hard=False), q.logits, torch.tensor(expected[None]))[0]
    np.testing.assert_allclose(q.logits.grad.numpy(), expected_logits.numpy(), rtol=1e-9, atol=1e-12)
    unweighted = torch.autograd.grad(q.table(hard=False), q.logits, torch.tensor(raw[None]))[0]
    assert not np.allclose(q.logits.grad.numpy(), unweighted.numpy(), rtol=1e-3)
    # log_s: d/dlog_s of (T[i] + u - sg(u)) s = T[i] s - x (inside the range, s = 1)
    np.testing.assert_allclose(q.log_scale.grad.numpy(), [(w * (table_values[pos] - u)).sum()], rtol=1e-9)


def test_llt_gradients_reach_logits_and_scale():
    q = LLTQuantizer(3, 2, 4)
    q.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q.logits.copy_(torch.randn(q.logits.shape, generator=gen))
    x = torch.randn(256, 2, generator=gen)
    w = torch.randn(256, 2, generator=gen)
    (q(x) * w).sum().backward()
    assert q.logits.grad is not None and q.logits.grad.abs().sum() > 0
    assert q.log_scale.grad is not None and torch.all(q.log_scale.grad != 0)


def test_llt_eval_soft_has_no_gradient_reweighting():
    # outside training (soft evaluation) the output is the soft table lookup times s
    q = LLTQuantizer(2, 1, 4).double()
    q.eval()
    set_logits(q, [[[0.3, -0.2, 1.0, 0.1]]])
    q.tau = 0.5
    x = np.array([-0.8, -0.1, 0.4, 0.95])
    e = np.exp(np.array([0.3, -0.2, 1.0, 0.1]) / 0.5)
    c = np.cumsum(e / e.sum())
    table = np.concatenate([-c[::-1], [0.0], c])
    pos = np.round(4 * (x + 1)).astype(int)
    got = q(torch.tensor(x[:, None])).detach().numpy()[:, 0]
    np.testing.assert_allclose(got, table[pos], atol=1e-12)


# =========================================================================== fused Functions
# The soft paths the models run (forward in soft mode, and the stacked engine's call by hand) are
# the fused autograd Functions of quantization/fused.py, with hand-written backward passes. They
# compute each quantizer's plain ``soft`` formula: in float64 the values agree to 1e-12 and every
# gradient to 1e-9 (relative to the largest entry of that gradient).
def test_clamp_inclusive_passes_the_gradient_at_its_bounds():
    """The project's convention, whatever torch's clamp does: 1 on [low, high] (bounds included), 0 outside."""
    x = torch.tensor([-3.0, -1.0, -0.25, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = clamp_inclusive(x, -1.0, 1.0)
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)).sum().backward()
    assert out.tolist() == [-1.0, -1.0, -0.25, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]


def compare_fused_with_plain(q, x, x_grad, gen, device="cpu"):
    """q(x) (the fused Function) and the gradients of (q(x) * w).sum() against q's own plain ``soft``, on ``device``."""
    q, x = q.to(device), x.to(device)
    assert q.soft_function(x) is not None, "the quantizer has a fused Function"
    plain = copy.deepcopy(q)
    names = [name for name, _ in q.named_parameters()]
    x_plain = x.clone().requires_grad_(x_grad)
    x = x.clone().requires_grad_(x_grad)
    out, expected = q(x), plain.soft(x_plain)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    w = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    pairs = [(name, p.grad, twin.grad) for name, p, twin in zip(names, q.parameters(), plain.parameters())]
    if x_grad:
        pairs.append(("x", x.grad, x_plain.grad))
    if not x_grad:  # the stacked engine's path: the same Function called by hand, without autograd
        q.zero_grad(set_to_none=True)
        by_hand, backward = q.soft_with_backward(x)
        assert not by_hand.requires_grad
        torch.testing.assert_close(by_hand, expected.detach(), rtol=0, atol=1e-12)
        backward(w)
        pairs += [(f"{name} by hand", p.grad, twin.grad)
                  for name, p, twin in zip(names, q.parameters(), plain.parameters())]
    for name, got, want in pairs:
        assert want is not None and got is not None, name
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()), msg=name)


def test_soft_with_backward_accumulates_and_falls_back_to_autograd():
    """A second backward adds to .grad as autograd does; a quantizer without a fused Function uses autograd."""
    q = SQQuantizer(torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64))
    x = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    out, backward = q.soft_with_backward(x)
    backward(torch.ones_like(out))
    once = q.thresholds.grad.clone()
    # d/dt_k sum_n sigmoid(x_n - t_k) = -sum_n s (1 - s) at tau = 1
    s = sigmoid(x.numpy() - q.thresholds.detach().numpy())  # [2, 3]
    np.testing.assert_allclose(once.numpy()[0], -(s * (1 - s)).sum(axis=0), rtol=1e-12)
    backward(torch.ones_like(out))
    torch.testing.assert_close(q.thresholds.grad, 2 * once)

    class Doubling(LSQQuantizer):  # soft() in plain autograd, no fused Function
        def soft_function(self, x):
            return None

        def soft(self, x):
            return 2 * x * self.step_size

    q = Doubling(2, 1)
    out, backward = q.soft_with_backward(torch.tensor([[3.0], [4.0]]))
    assert out.tolist() == [[6.0], [8.0]] and not out.requires_grad
    backward(torch.ones_like(out))
    assert q.step_size.grad.tolist() == [14.0]  # d/ds sum 2 x s = 2 (3 + 4)
    assert Doubling(2, 1)(torch.tensor([[3.0]])).tolist() == [[6.0]]  # forward runs soft() where no Function is


@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
@pytest.mark.parametrize("bits,tau", [(2, 1.0), (3, 0.3), (4, 0.05), (5, 2.0)])
@pytest.mark.parametrize("x_grad", [False, True])
def test_threshold_fused_function_computes_the_plain_soft(readout, bits, tau, x_grad, device):
    gen = torch.Generator().manual_seed(bits * 7 + int(x_grad))
    d, m = 3, 2**bits - 1
    q = TRAINABLE[readout](torch.randn(d, m, generator=gen)).double()  # unsorted
    q.tau = tau
    if readout == "values":
        with torch.no_grad():
            q.interval_values.copy_(torch.randn(d, m + 1, generator=gen, dtype=torch.float64))
    x = torch.randn(200, d, generator=gen, dtype=torch.float64) * 1.5
    compare_fused_with_plain(q, x, x_grad, gen, device)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("x_grad", [False, True])
def test_lsq_fused_function_computes_the_plain_soft(bits, x_grad, device):
    gen = torch.Generator().manual_seed(bits)
    d = 4
    q = LSQQuantizer(bits, d).double()
    with torch.no_grad():
        q.step_size.copy_(torch.rand(d, generator=gen, dtype=torch.float64) * 0.5 + 0.05)
    x = torch.randn(300, d, generator=gen, dtype=torch.float64) * 2  # many values beyond the levels
    x[:2, 0] = q.step_size.detach()[0] * torch.tensor([q.q_min, q.q_max], dtype=torch.float64)  # exactly at the bounds
    compare_fused_with_plain(q, x, x_grad, gen, device)


# 6 bits at G = 9 builds the table with cumsum, the smaller ones with the cached matrix
LLT_CASES = [(2, 4, 1.0), (3, 9, 0.5), (4, 4, 0.1), (4, 1, 1.0), (5, 9, 2.0), (6, 9, 0.3)]


@pytest.mark.parametrize("bits,granularity,tau", LLT_CASES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("x_grad", [False, True])
def test_llt_fused_function_computes_the_plain_soft(bits, granularity, tau, training, x_grad, device):
    gen = torch.Generator().manual_seed(bits * 10 + granularity)
    d = 3
    q = LLTQuantizer(bits, d, granularity).double()
    q.train(training)
    q.tau = tau
    q.scale_initialized = True
    with torch.no_grad():
        q.logits.copy_(torch.randn(q.logits.shape, generator=gen, dtype=torch.float64) * 2)
        q.log_scale.copy_(torch.randn(d, generator=gen, dtype=torch.float64) * 0.3)
    x = torch.randn(400, d, generator=gen, dtype=torch.float64) * 1.5  # some beyond +-s
    x[:4] = torch.exp(q.log_scale.detach()) * torch.tensor([[-1.0], [1.0], [0.5], [0.0]], dtype=torch.float64)
    if training:
        x[:, 1] = 0.25  # a feature constant in the batch: its histogram's middle bin
    compare_fused_with_plain(q, x, x_grad, gen, device)


@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
def test_soft_steps_saturate_to_exact_zero_and_one(readout, device):
    """At a small temperature the sigmoids give exact 0 and 1, never a denormal number."""
    q = TRAINABLE[readout](torch.tensor([[-1.0, 0.0, 1.0]])).to(device)
    q.tau = 1e-3  # arguments up to +-5000
    x = torch.tensor([[-4.0], [-0.0999], [-0.0899], [0.03], [0.0899], [3.0]], device=device)
    out, backward = q.soft_with_backward(x)
    tiny = torch.finfo(torch.float32).tiny
    assert not bool(((out != 0) & (out.abs() < tiny)).any())
    if readout == "thermometer":
        # (x - t) / tau: -99.9 and -89.9 would give sigmoids of 2e-44 (denormal) and 1e-39; 0.03 / 1e-3 = 30
        expected = [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
        torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32, device=device), rtol=0, atol=1e-12)
    backward(torch.ones_like(out))
    grads = [p.grad for p in q.parameters() if p.grad is not None]
    assert grads and not any(bool(((g != 0) & (g.abs() < tiny)).any()) for g in grads)


def test_training_functions_gradcheck(device):
    """The hand-written backward passes are the derivatives, where the formula is differentiable."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    x, t, v = randn(6, 2), randn(2, 3), randn(2, 4)
    assert torch.autograd.gradcheck(lambda x, t: Thermometer.apply(x, t, 0.7), (x, t))
    assert torch.autograd.gradcheck(lambda x, t: SteppedSum.apply(x, t, None, 0.7), (x, t))
    assert torch.autograd.gradcheck(lambda x, t, v: SteppedSum.apply(x, t, v, 0.7), (x, t, v))
    # LLT: the table lookup is differentiable in the logits (without the histogram reweighting),
    # through the cached matrix (small tables) and through cumsum (large ones)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64).to(device)
    log_scale = torch.zeros(2, dtype=torch.float64, device=device)
    for shape in [(2, 3, 4), (2, 31, 6)]:
        assert (rise_matrix(*shape[1:], torch.float64, x.device) is None) == (shape[1] == 31)
        logits = randn(*shape)
        assert torch.autograd.gradcheck(lambda w: LLTLookup.apply(w, log_scale, x, 0.7, False), (logits,))


def test_lltrise_matrix_is_the_table_map():
    p = torch.softmax(torch.randn(4, 7, 3, dtype=torch.float64), dim=-1)  # R = 7, G = 3
    rise = p.flatten(1).cumsum(dim=1)
    expected = torch.cat([-rise.flip(-1), torch.zeros(4, 1, dtype=torch.float64), rise], dim=1) / 7
    got = p.flatten(1) @ rise_matrix(7, 3, torch.float64, p.device)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_llt_cached_matrix_built_in_inference_mode_trains():
    rise_matrix.cache_clear()
    q = LLTQuantizer(3, 2, 5)
    q.eval()
    with torch.inference_mode():  # a soft evaluation builds the cache first
        q(torch.randn(10, 2))
    q.train()
    q(torch.randn(10, 2)).sum().backward()
    assert q.logits.grad is not None


@pytest.mark.parametrize("name", ["index", "values", "thermometer", "lsq", "llt4"])
def test_training_backward_twice_adds_the_same_gradient(name, device):
    """Saved tensors are not modified by a backward pass (retain_graph gives equal gradients, also on CUDA)."""
    gen = torch.Generator().manual_seed(11)
    q = all_quantizers(3, 3, gen)[name].double().to(device)
    q.train()
    if name == "llt4":
        q.scale_initialized = True
    x = torch.randn(100, 3, generator=gen, dtype=torch.float64).to(device)
    out = q(x)
    out.sum().backward(retain_graph=True)
    once = [p.grad.clone() for p in q.parameters()]
    out.sum().backward()
    for p, g in zip(q.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=0)


# =========================================================================== all quantizers
def all_quantizers(bits: int, d: int, gen: torch.Generator):
    m = 2**bits - 1
    t = torch.randn(d, m, generator=gen)  # unsorted
    sorted_t = torch.sort(t, dim=1).values
    out = {
        "index": SQQuantizer(t),
        "values": SQplusQuantizer(t),
        "thermometer": BwSQQuantizer(t),
        "thermometer-fixed": BwSQQuantizer(sorted_t, trainable=False),
        "midpoint": MidpointQuantizer(sorted_t),
        "lsq": LSQQuantizer(bits, d),
        "llt4": LLTQuantizer(bits, d, 4),
        "llt9": LLTQuantizer(bits, d, 9),
    }
    with torch.no_grad():
        out["lsq"].step_size.copy_(torch.rand(d, generator=gen) * 0.5 + 0.05)
        for key in ("llt4", "llt9"):
            out[key].logits.copy_(torch.randn(out[key].logits.shape, generator=gen))
            out[key].log_scale.copy_(torch.randn(d, generator=gen) * 0.3 + 0.7)
    return out


@pytest.mark.parametrize("bits", range(2, 9))
def test_encode_range_and_level_counts(bits):
    gen = torch.Generator().manual_seed(100 + bits)
    d = 3
    x = torch.randn(8000, d, generator=gen) * 3
    for name, q in all_quantizers(bits, d, gen).items():
        q.hard = True
        q.eval()
        index = q.encode(x)
        assert index.dtype == torch.int64, name
        assert index.shape == (8000, d), name
        assert int(index.min()) >= 0 and int(index.max()) <= 2**bits - 1, name
        out = q(x)
        assert torch.equal(out, q.decode(index)), name
        if name == "lsq":
            for f in range(d):
                assert out[:, f].unique().numel() <= 2**bits
            # inputs on every level use all 2**b indices
            grid = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=torch.float32)[:, None]
            on_levels = grid * q.step_size.detach()[None]
            assert q.encode(on_levels).T.tolist() == [list(range(2**bits))] * d
        if name.startswith("llt"):
            for f in range(d):
                assert out[:, f].unique().numel() <= 2**bits - 1, (name, f)
            assert int(index.max()) <= 2**bits - 2
        if name.startswith("thermometer"):
            assert bool(((out == 0) | (out == 1)).all())
            assert out.shape == (8000, d * (2**bits - 1))


NAN, INF = float("nan"), float("inf")
NON_FINITE = torch.tensor([[NAN, 0.3], [INF, NAN], [-INF, INF], [0.3, -INF]])


def _lsq_half_step():
    q = LSQQuantizer(3, 2)
    with torch.no_grad():
        q.step_size.fill_(0.5)
    return q


# quantizer, the indices of NON_FINITE and the decoded value of an index, worked out by hand
NON_FINITE_CASES = {
    # s = 0.5: NaN -> 0, +inf -> 7, -inf -> 0; 0.3 / 0.5 = 0.6 -> level 1 -> index 5; value (index - 4) * 0.5
    "lsq": (_lsq_half_step, [[0, 5], [7, 0], [0, 7], [5, 0]], lambda i: (i - 4) * 0.5),
    # s = 1, zero logits: rise 1 1 1 1 2 2 2 2 3 3 3 3 (K = 25); 0.3 -> position round(12 * 1.3) = 16,
    # T[16] = 1/3 (index 4); +inf -> T[24] = 1 (index 6), -inf -> T[0] = -1 (index 0); value (index - 3) / 3
    "llt": (lambda: LLTQuantizer(3, 2, 4), [[0, 4], [6, 0], [0, 6], [4, 0]], lambda i: (i - 3) / 3),
    # T3: 0.3 exceeds -1 and 0; the index readout is the index
    "threshold": (lambda: SQQuantizer(T3.repeat(2, 1), trainable=False), [[0, 2], [3, 0], [0, 3], [2, 0]], lambda i: i),
}


@pytest.mark.parametrize("name", NON_FINITE_CASES)
def test_encode_sends_nan_as_zero_and_infinities_as_the_extremes(name):
    """The device rule: the index counts the thresholds a value strictly exceeds, none for NaN."""
    make, index, value = NON_FINITE_CASES[name]
    q = hard(make())
    got = q.encode(NON_FINITE)
    assert got.tolist() == index
    out = q(NON_FINITE)  # the hard forward is decode(encode(x)): finite for NaN rows too
    assert torch.equal(out, q.decode(got))
    np.testing.assert_allclose(out.detach().numpy(), value(np.array(index)), rtol=1e-6)


@pytest.mark.parametrize("name,bits", [("LSQ", 3), ("LSQ", 8), ("LLT4", 2), ("LLT9", 5)])
def test_non_finite_encode_matches_the_exported_encoder(name, bits):
    """LSQ and LLT send for NaN and +-inf what the exported device encoder sends, and cloud(edge(x)) stays exact."""
    gen = torch.Generator().manual_seed(bits)
    d = 3
    if name == "LSQ":
        q = LSQQuantizer(bits, d)
        with torch.no_grad():
            q.step_size.copy_(torch.rand(d, generator=gen) + 0.1)
    else:
        q = LLTQuantizer(bits, d, int(name[3:]))
        with torch.no_grad():
            q.logits.copy_(torch.randn(q.logits.shape, generator=gen))
            q.log_scale.copy_(0.3 * torch.randn(d, generator=gen))
    model = SplitModel(q, MLP(d, 8, 1, dropout=0.0))
    setting = Setting(0.0, 1e-3, 1, 8, 1, 0.01, 0.0)
    saved = SavedModel(model, name, bits, setting, list("abc"), np.zeros(d), np.ones(d), 0.0, 1.0)
    encoder = build_encoder(saved)
    raw = torch.randn(200, d, generator=gen).numpy() * 3
    raw[::3, 0], raw[1::3, 1], raw[2::5, 2] = np.nan, np.inf, -np.inf
    raw[::4, 1] = np.nan
    x = torch.from_numpy(raw)
    with torch.inference_mode():
        sent = model.edge(x)
        model.eval()
        model.set_hard(True)
        assert torch.equal(model.cloud(sent), model(x))
    assert np.array_equal(sent.numpy(), encoder.indices(raw))
    assert (sent.numpy()[np.isnan(raw)] == 0).all()


def test_bitwise_soft_quantizer_hard_outputs_are_binary():
    """Hard: exactly ``[x > t_k]`` per feature and (unsorted) threshold; soft at a small tau: the same, away from t."""
    gen = torch.Generator().manual_seed(9)
    thresholds = torch.randn(4, 15, generator=gen)
    q = BwSQQuantizer(thresholds)
    q.tau = 1e-3
    x = torch.randn(500, 4, generator=gen)
    steps = (x.numpy()[:, :, None] > thresholds.numpy()[None]).reshape(500, -1).astype(np.float32)  # numpy, [n, d*M]
    far = (np.abs(x.numpy()[:, :, None] - thresholds.numpy()[None]) > 0.1).reshape(500, -1)  # 100 tau from every step
    soft = q(x).detach().numpy()
    np.testing.assert_allclose(soft[far], steps[far], atol=1e-30)  # sigmoid(+-100) saturates to exactly 1 and 0
    assert ((soft > 0) & (soft < 1))[~far].any()  # near a threshold the soft step is still a slope
    q.hard = True
    np.testing.assert_array_equal(q(x).numpy(), steps)


# --------------------------------------------------------------------------- devices
def test_quantizers_on_device(device):
    gen = torch.Generator().manual_seed(4)
    x_cpu = torch.randn(300, 3, generator=gen)
    x = x_cpu.to(device)
    for name, q in all_quantizers(3, 3, gen).items():
        reference = {}
        q_dev = q.to(device)
        for hard_mode in (True, False):
            q_dev.hard = hard_mode
            q_dev.train(not hard_mode)
            if name.startswith("llt"):
                q_dev.scale_initialized = True
            out = q_dev(x)
            assert out.device.type == device, (name, hard_mode)
            assert out.shape == (300, q.out_features)
            reference[hard_mode] = out.detach().cpu()
        index = q_dev.encode(x)
        assert index.device.type == device and index.dtype == torch.int64
        assert q_dev.decode(index).device.type == device
        # training step: gradients arrive on the device
        q_dev.hard = False
        q_dev.train()
        q_dev.zero_grad()
        if list(q_dev.parameters()):
            q_dev(x).sum().backward()
        for pname, p in q_dev.named_parameters():
            assert p.grad is not None and p.grad.device.type == device, (name, pname)
        # same results as on the CPU (for the hard mode: the exact same indices)
        q_cpu = q_dev.to("cpu")
        q_cpu.hard = True
        q_cpu.eval()
        assert torch.equal(q_cpu.encode(x_cpu), index.cpu()), name
        torch.testing.assert_close(q_cpu(x_cpu), reference[True], rtol=1e-5, atol=1e-5)


def test_llt_histogram_counts_as_torch_histc():
    """Per feature the counts of ``torch.histc`` over the batch's min..max, equal values included."""
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(300, 4, generator=gen, dtype=torch.float64) * 2 - 1
    u[:, 2] = 0.25  # constant in the batch: histc widens the range to -0.75 .. 1.25, the middle bin
    u[:150, 3] = -1.0  # clamped values at both ends
    u[150:, 3] = 1.0
    counts = histogram(u, 9)
    for f in range(4):
        column = u[:, f]
        expected = torch.histc(column, bins=9, min=column.min().item(), max=column.max().item())
        torch.testing.assert_close(counts[f], expected, rtol=0, atol=0)
    assert counts[2].tolist() == [0, 0, 0, 0, 300, 0, 0, 0, 0]
    assert counts[3].tolist() == [150, 0, 0, 0, 0, 0, 0, 0, 150]
    assert histogram(u[:1], 9).argmax(dim=1).tolist() == [4] * 4  # a batch of one row


# =========================================================================== misuse from outside
def _every_quantizer(n_features: int = 2):
    thresholds = torch.tensor([[-1.0, 0.0, 1.0], [-0.5, 0.5, 1.5]])[:n_features]
    return [
        SQQuantizer(thresholds),
        BwSQQuantizer(thresholds),
        SQplusQuantizer(thresholds),
        MidpointQuantizer(thresholds),
        LSQQuantizer(2, n_features),
        LLTQuantizer(2, n_features, 3),
    ]


@pytest.mark.parametrize("tau", [0, 0.0, -0.1, float("nan"), float("inf"), True, "0.5"])
def test_tau_must_be_a_finite_positive_temperature(tau):
    for q in _every_quantizer():
        with pytest.raises(ValueError, match="tau must be a finite temperature > 0.*hard mode"):
            q.tau = tau
        assert q.tau == 1.0  # unchanged
    q.tau = np.float32(0.25)
    assert q.tau == 0.25 and type(q.tau) is float


@pytest.mark.parametrize("hard_mode", [False, True])
def test_rows_of_another_width_are_refused_not_broadcast(hard_mode):
    for q in _every_quantizer():
        q.hard = hard_mode
        for rows in (torch.zeros(5, 1), torch.zeros(5, 3), torch.zeros(2), torch.zeros(5, 2, 1)):
            with pytest.raises(ValueError, match=r"expected a tensor of rows \[n, 2\]"):
                q(rows)
            with pytest.raises(ValueError, match=r"expected a tensor of rows \[n, 2\]"):
                q.encode(rows)
        with pytest.raises(ValueError, match="torch.as_tensor"):
            q(np.zeros((5, 2)))


def test_encode_casts_float64_rows_as_forward_does():
    # 1e-12 above a float32 threshold: float64 exceeds it, the float32 rows the model computes with do not
    q = SQQuantizer(torch.tensor([[-1.0, 0.0, 1.0]]), trainable=False)
    rows = torch.tensor([[1.0 + 1e-12]], dtype=torch.float64)
    assert q.encode(rows).item() == 2  # not 3
    assert q.encode(rows).item() == q.encode(rows.float()).item() == hard(q)(rows).item()


def test_llt_soft_mode_sends_nan_to_the_lowest_level_as_its_hard_mode_does():
    q = LLTQuantizer(3, 2, 4)
    q.eval()
    with torch.no_grad():
        q.log_scale.copy_(torch.tensor([0.0, math.log(2.0)]))
    rows = torch.tensor([[float("nan"), 0.5], [0.0, float("nan")]])
    soft = q(rows)
    # the soft table's entry 0 is -(sum of the rises) / R = -1, times the scale (1 and 2)
    assert soft[0, 0].item() == pytest.approx(-1.0) and soft[1, 1].item() == pytest.approx(-2.0)
    assert torch.isfinite(soft).all()
    assert q.encode(rows)[0, 0].item() == 0 and torch.equal(hard(q)(rows)[[0, 1], [0, 1]], torch.tensor([-1.0, -2.0]))


def test_no_rows_in_soft_training_mode_give_no_rows():
    for q in _every_quantizer():
        q.train()
        out = q(torch.zeros(0, 2))
        assert out.shape == (0, q.out_features)
    llt = _every_quantizer()[-1]
    llt(torch.zeros(0, 2))
    assert not llt.scale_initialized  # a statistic of no rows is none: the first real batch sets it


@pytest.mark.parametrize("n_features", [0, -1, 2.5, True, "3"])
def test_quantizers_need_a_whole_positive_feature_count(n_features):
    for make in (lambda: LSQQuantizer(3, n_features), lambda: LLTQuantizer(3, n_features, 4)):
        with pytest.raises(ValueError, match="n_features must be a whole number >= 1"):
            make()
    assert LSQQuantizer(3, 3.0).n_features == 3 and type(LLTQuantizer(3, np.int64(3), 4).n_features) is int


def test_threshold_quantizer_takes_whole_number_thresholds_as_floats_and_refuses_nan():
    q = MidpointQuantizer(torch.tensor([[-1, 0, 1]]))
    assert q.thresholds.dtype == torch.get_default_dtype()
    assert hard(q)(torch.tensor([[0.5]])).item() == 0.5  # the midpoint of (0, 1)
    with pytest.raises(ValueError, match="thresholds must be finite"):
        SQQuantizer(torch.tensor([[-1.0, float("nan"), 1.0]]))


def test_decode_reads_narrow_integer_indices_as_their_values():
    index = torch.tensor([[0, 6], [3, 4]])  # 6: the top index of LLT at 3 bits
    for q in (LSQQuantizer(3, 2), LLTQuantizer(3, 2, 4), MidpointQuantizer(torch.sort(torch.randn(2, 7)).values)):
        for dtype in (torch.uint8, torch.int16, torch.int32):
            assert torch.equal(q.decode(index.to(dtype)), q.decode(index))  # uint8: 0 - 4 would wrap to 252
        for bad in (index.float(), index.to(torch.complex64), index.bool(), index[:, :1], index[0]):
            with pytest.raises(ValueError, match=r"expected integer indices \[n, 2\]"):
                q.decode(bad)


def test_every_quantizer_sends_and_decodes_only_its_own_indices():
    """LLT at 3 bits has 2 R + 1 = 7 levels (indices 0..6), the threshold quantizers and LSQ have 2**3 = 8."""
    thresholds = torch.sort(torch.randn(2, 7)).values
    quantizers = [SQQuantizer(thresholds, trainable=False), BwSQQuantizer(thresholds, trainable=False),
                  MidpointQuantizer(thresholds), SQplusQuantizer(thresholds), LSQQuantizer(3, 2), LLTQuantizer(3, 2, 4)]
    for q in quantizers:
        top = 6 if isinstance(q, LLTQuantizer) else 7
        assert q.n_levels == top + 1
        extremes = torch.tensor([[-1e30, 1e30], [1e30, -1e30]])
        assert torch.aminmax(q.encode(extremes)) == (0, top)
        q.decode(torch.tensor([[0, top]]))
        for bad, shown in ((top + 1, f"0..{top + 1}"), (50, "0..50"), (-1, "-1..0")):
            with pytest.raises(ValueError, match=rf"indices must lie in 0..{top} at 3 bits, got {shown}: the payload"):
                q.decode(torch.tensor([[0, bad]]))


# =========================================================================== straight-through mode
def straight_through_quantizer(readout, bits=3, tau=0.3, seed=0):
    """A trainable threshold quantizer in float64 with unsorted thresholds (and random values), straight through."""
    gen = torch.Generator().manual_seed(seed)
    d, m = 3, 2**bits - 1
    q = TRAINABLE[readout](torch.randn(d, m, generator=gen, dtype=torch.float64), straight_through=True)
    q.tau = tau
    if readout == "values":
        with torch.no_grad():
            q.interval_values.copy_(torch.randn(d, m + 1, generator=gen, dtype=torch.float64))
    return q, gen


@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_straight_through_forward_is_the_hard_mode_exactly(readout, dtype):
    """Fused, plain and by hand, the straight-through value is decode(encode(x)), bit for bit, also at a threshold."""
    q, gen = straight_through_quantizer(readout)
    q = q.to(dtype)
    x = (torch.randn(300, 3, generator=gen) * 1.5).to(dtype)
    x[:5] = q.thresholds.detach()[:, :5].T  # exactly at a threshold: not exceeded
    sent = q.decode(q.encode(x))
    assert torch.equal(q(x), sent)
    assert torch.equal(q.hard_with_soft_gradient(x), sent)
    assert torch.equal(q.soft_with_backward(x)[0], sent)
    assert not torch.equal(q.soft(x), sent)  # the soft mode it replaces
    hard(q)
    assert torch.equal(q(x), sent)


@pytest.mark.parametrize("path", ["fused", "plain", "by hand"])
@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_straight_through_gradient_is_the_soft_gradient_by_hand(path, tau):
    """d/dt_fk of sum(w * out) is -sum_n w_nfk s (1 - s) / tau, s = sigmoid((x_nf - t_fk) / tau) (numpy)."""
    q, gen = straight_through_quantizer("thermometer", bits=2, tau=tau, seed=3)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    if path == "by hand":
        out, backward = q.soft_with_backward(x)
        backward(w)
    else:
        out = q(x) if path == "fused" else q.hard_with_soft_gradient(x)
        (out * w).sum().backward()
    t = q.thresholds.detach().numpy()  # [3, 3]
    s = sigmoid((x.numpy()[:, :, None] - t[None]) / tau)  # [40, 3, 3]
    expected = -(w.numpy().reshape(40, 3, 3) * s * (1 - s)).sum(axis=0) / tau
    np.testing.assert_allclose(q.thresholds.grad.numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(out.detach().numpy(), (x.numpy()[:, :, None] > t[None]).reshape(40, 9))


@pytest.mark.parametrize("readout", ["index", "values", "thermometer"])
@pytest.mark.parametrize("x_grad", [False, True])
def test_straight_through_gradients_are_the_soft_ones(readout, x_grad, device):
    """Every parameter's gradient (and x's), fused and by hand, is the plain soft formula's, in float64."""
    q, gen = straight_through_quantizer(readout, bits=3, tau=0.4, seed=5)
    q = q.to(device)
    soft = copy.deepcopy(q)
    soft.straight_through = False
    x = (torch.randn(200, 3, generator=gen, dtype=torch.float64) * 1.5).to(device)
    x_st, x_soft = x.clone().requires_grad_(x_grad), x.clone().requires_grad_(x_grad)
    out, expected = q(x_st), soft.soft(x_soft)
    w = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    pairs = [(name, p.grad, twin.grad) for (name, p), twin in zip(q.named_parameters(), soft.parameters())]
    if x_grad:
        pairs.append(("x", x_st.grad, x_soft.grad))
    by_hand = copy.deepcopy(q)
    by_hand.zero_grad(set_to_none=True)
    by_hand.soft_with_backward(x)[1](w)
    pairs += [(f"{name} by hand", p.grad, twin.grad)
              for (name, p), twin in zip(by_hand.named_parameters(), soft.parameters())]
    for name, got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()), msg=name)


def test_straight_through_values_gradient_by_hand():
    """SQplus: d/dv_j of v_0 + sum_k s_k (v_k - v_{k-1}) is 1 - s_1 (j = 0), s_j - s_{j+1}, s_M (j = M)."""
    q, gen = straight_through_quantizer("values", bits=2, tau=0.5, seed=2)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    (q(x) * w).sum().backward()
    s = sigmoid((x.numpy()[:, :, None] - q.thresholds.detach().numpy()[None]) / 0.5)  # [30, 3, 3]
    padded = np.concatenate([np.ones((30, 3, 1)), s, np.zeros((30, 3, 1))], axis=-1)  # s_0 = 1, s_{M+1} = 0
    expected = (w.numpy()[:, :, None] * (padded[..., :-1] - padded[..., 1:])).sum(axis=0)  # [3, 4]
    np.testing.assert_allclose(q.interval_values.grad.numpy(), expected, rtol=1e-12)


def test_straight_through_plain_path_serves_any_trainable_quantizer():
    """LSQ and LLT have no fused straight-through Function: the plain formula runs, hard value, soft gradient."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    for q in (LSQQuantizer(3, 2).init_step_size(x), LLTQuantizer(3, 2, granularity=4)):
        q.straight_through = True
        out = q(x)  # LLT: the first training batch sets the scale before the hard value is taken
        assert torch.equal(out, q.decode(q.encode(x))), type(q).__name__
        out.sum().backward()
        assert all(p.grad is not None for p in q.parameters()), type(q).__name__


@pytest.mark.parametrize("make", [lambda t: BwSQQuantizer(t, trainable=False, straight_through=True),
                                  lambda t: SQQuantizer(t, trainable=False, straight_through=True)])
def test_straight_through_needs_a_trainable_quantizer(make):
    with pytest.raises(ValueError, match="no trainable parameters"):
        make(T3)
    q = MidpointQuantizer(T3)
    with pytest.raises(ValueError, match="no trainable parameters"):
        q.straight_through = True
    with pytest.raises(TypeError, match="True or False"):
        BwSQQuantizer(T3).straight_through = 1
    assert not BwSQQuantizer(T3).straight_through and BwSQQuantizer(T3, straight_through=True).straight_through
