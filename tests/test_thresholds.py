"""Tests of quantization/thresholds.py and quantization/schedule.py.

Expected values are worked out by hand or with numpy, never by calling the function under test
a second time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quantization import (
    TemperatureSchedule,
    check_bits,
    decode_midpoints,
    hard_index,
    midpoints,
    minmax_thresholds,
    n_thresholds,
    quantile_thresholds,
    steps_from_index,
    threshold_ranks,
)


# --------------------------------------------------------------------------- check_bits
@pytest.mark.parametrize("bits", range(2, 9))
def test_check_bits_accepts_2_to_8(bits):
    assert check_bits(bits) == bits
    assert n_thresholds(bits) == 2**bits - 1


@pytest.mark.parametrize("bits", [1, 0, -3, 9, 16, 2.5, True, False, "4", None])
def test_check_bits_refuses_everything_else(bits):
    with pytest.raises(ValueError, match="2 to 8"):
        check_bits(bits)


def test_n_thresholds_refuses_one_bit():
    with pytest.raises(ValueError):
        n_thresholds(1)


@pytest.mark.parametrize("bits", [np.int64(3), np.int32(2), np.uint8(8)])
def test_check_bits_accepts_numpy_integers_as_plain_int(bits):
    got = check_bits(bits)
    assert got == int(bits) and type(got) is int
    assert n_thresholds(bits) == 2 ** int(bits) - 1


@pytest.mark.parametrize("bits", [np.int64(9), np.int64(1), np.float64(3.5), np.bool_(True), 10**400])
def test_check_bits_refuses_numpy_values_outside_2_to_8(bits):
    with pytest.raises(ValueError, match="bits must be a whole number from 2 to 8, got "):
        check_bits(bits)
    assert check_bits(np.float64(3.0)) == 3 and type(check_bits(np.int64(3))) is int  # whole numbers of any type


# --------------------------------------------------------------------------- quantile thresholds
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_quantile_thresholds_match_numpy_linear(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(257, 4)) * np.array([1.0, 3.0, 0.1, 10.0]) + np.array([0.0, -2.0, 5.0, 1.0])
    m = 2**bits - 1
    levels = np.arange(1, m + 1) / 2**bits
    expected = np.quantile(x, levels, axis=0, method="linear").T  # [d, M]
    got = quantile_thresholds(torch.tensor(x, dtype=torch.float64), bits)
    assert got.shape == (4, m)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_quantile_thresholds_hand_case_and_dtype():
    # one feature 0, 1, 2, 3, 4: quantiles at 1/4, 2/4, 3/4 with linear interpolation -> 1, 2, 3
    x = torch.arange(5, dtype=torch.float32)[:, None]
    got = quantile_thresholds(x, 2)
    assert got.dtype == torch.float32
    assert got.tolist() == [[1.0, 2.0, 3.0]]
    # 0, 1, 2, 3: positions 0.75, 1.5, 2.25 -> 0.75, 1.5, 2.25
    x = torch.arange(4, dtype=torch.float32)[:, None]
    assert quantile_thresholds(x, 2).tolist() == [[0.75, 1.5, 2.25]]


@pytest.mark.parametrize("function", [quantile_thresholds, minmax_thresholds])
@pytest.mark.parametrize("shape", [(10,), (4, 2, 3), (0, 3), ()])
def test_threshold_initialisers_require_rows(function, shape):
    with pytest.raises(ValueError, match=r"x must be training rows of shape \[n, d\] with n >= 1"):
        function(torch.zeros(shape), 2)


def test_threshold_initialisers_accept_one_row():
    # a single row: every quantile and both ends of the range are the row itself
    x = torch.tensor([[2.0, -1.0]])
    assert quantile_thresholds(x, 2).tolist() == [[2.0] * 3, [-1.0] * 3]
    assert minmax_thresholds(x, 2).tolist() == [[2.0] * 3, [-1.0] * 3]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_threshold_initialisers_of_integer_rows_are_floating(dtype, default):
    # quantile of 0, 1, 2, 3 at 1/4, 2/4, 3/4: positions 0.75, 1.5, 2.25 (integers would give 0, 1, 2)
    # min-max of 0..3 at 2 bits: width 3 / 3 = 1 -> 0.5, 1.5, 2.5; of 1..4: 1.5, 2.5, 3.5
    x = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]], dtype=dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        quantiles, evenly = quantile_thresholds(x, 2), minmax_thresholds(x, 2)
    finally:
        torch.set_default_dtype(previous)
    assert quantiles.dtype == default and evenly.dtype == default
    assert quantiles.tolist() == [[0.75, 1.5, 2.25], [1.75, 2.5, 3.25]]
    assert evenly.tolist() == [[0.5, 1.5, 2.5], [1.5, 2.5, 3.5]]


# --------------------------------------------------------------------------- min-max thresholds
def test_minmax_thresholds_hand_case():
    # feature 0: min 0, max 3 at 2 bits: M = 3, (3 - 0) / 3 = 1 -> 0.5, 1.5, 2.5
    # feature 1: min -1, max 1: width 2/3 -> -1 + 2/3 * (0.5, 1.5, 2.5) = -2/3, 0, 2/3
    x = torch.tensor([[0.0, 1.0], [3.0, -1.0], [1.2, 0.3], [2.9, 0.9]], dtype=torch.float64)
    got = minmax_thresholds(x, 2)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got[0].numpy(), [0.5, 1.5, 2.5], atol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), [-2 / 3, 0.0, 2 / 3], atol=1e-12)


@pytest.mark.parametrize("bits", [3, 6])
def test_minmax_thresholds_match_numpy(bits):
    rng = np.random.default_rng(7)
    x = rng.uniform(-4, 9, size=(100, 3))
    m = 2**bits - 1
    lo, hi = x.min(axis=0), x.max(axis=0)
    expected = lo[:, None] + (hi - lo)[:, None] / m * (np.arange(1, m + 1) - 0.5)
    got = minmax_thresholds(torch.tensor(x, dtype=torch.float32), bits)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- hard index
def test_hard_index_is_strict():
    t = torch.tensor([[-1.0, 0.0, 1.0]])
    x = torch.tensor([[-2.0], [-1.0], [-0.5], [0.0], [0.3], [1.0], [1.0001], [5.0]])
    assert hard_index(x, t).squeeze(1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert hard_index(x, t).dtype == torch.int64


def test_hard_index_per_feature_and_numpy():
    rng = np.random.default_rng(0)
    t = np.sort(rng.normal(size=(5, 7)), axis=1)
    x = rng.normal(size=(300, 5))
    expected = (x[:, :, None] > t[None]).sum(axis=2)
    got = hard_index(torch.tensor(x), torch.tensor(t))
    assert got.shape == (300, 5)
    np.testing.assert_array_equal(got.numpy(), expected)


# --------------------------------------------------------------------------- midpoints
def test_midpoints_hand_case():
    got = midpoints(torch.tensor([[-1.0, 0.0, 1.0], [0.0, 1.0, 3.0]]))
    assert got.tolist() == [[-1.5, -0.5, 0.5, 1.5], [-0.5, 0.5, 2.0, 4.0]]


def test_midpoints_sort_unsorted_thresholds():
    assert midpoints(torch.tensor([[1.0, -1.0, 0.0]])).tolist() == [[-1.5, -0.5, 0.5, 1.5]]


def test_decode_midpoints_hand_case():
    values = torch.tensor([[-1.5, -0.5, 0.5, 1.5], [10.0, 20.0, 30.0, 40.0]])
    index = torch.tensor([[0, 3], [3, 1], [1, 0], [2, 2]])
    assert decode_midpoints(index, values).tolist() == [[-1.5, 40.0], [1.5, 20.0], [-0.5, 10.0], [0.5, 30.0]]


# --------------------------------------------------------------------------- ranks
def test_threshold_ranks_unsorted():
    t = torch.tensor([[0.3, -1.0, 2.0], [5.0, 4.0, 3.0]])
    assert threshold_ranks(t).tolist() == [[1, 0, 2], [2, 1, 0]]
    assert threshold_ranks(t).dtype == torch.int64


def test_threshold_ranks_ties_get_consecutive_ranks():
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0, 2.0, 1.0, 3.0]])
    ranks = threshold_ranks(t)[0].tolist()
    # the two zeros take ranks 0, 1, the three ones 2, 3, 4, then 2.0 -> 5, 3.0 -> 6
    assert sorted(ranks) == list(range(7))
    assert {ranks[1], ranks[3]} == {0, 1}
    assert {ranks[0], ranks[2], ranks[5]} == {2, 3, 4}
    assert ranks[4] == 5 and ranks[6] == 6


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("ties", [False, True])
def test_rank_property_on_random_data(bits, ties):
    """``x > t_k`` exactly when ``rank_k < index(x)``, for unsorted (and tied) thresholds."""
    gen = torch.Generator().manual_seed(bits + 10 * ties)
    m = 2**bits - 1
    t = torch.randn(4, m, generator=gen)
    if ties:
        t = torch.round(t * 2) / 2  # many equal thresholds
    x = torch.randn(500, 4, generator=gen)
    if ties:
        x = torch.cat([x, torch.round(x * 2) / 2])  # values exactly on thresholds too
    index = (x[..., None] > t).sum(-1)  # computed independently of hard_index
    ranks = threshold_ranks(t)
    expected = (x[..., None] > t).numpy()
    np.testing.assert_array_equal((ranks[None] < index[..., None]).numpy(), expected)
    steps = steps_from_index(hard_index(x, t), ranks, torch.float32)
    assert steps.dtype == torch.float32
    np.testing.assert_array_equal(steps.numpy(), expected.astype(np.float32))


# --------------------------------------------------------------------------- temperature schedule
def test_temperature_schedule_values():
    schedule = TemperatureSchedule(decrease_factor=0.001, num_epochs=3)
    assert schedule.tau == 1.0
    got = [schedule.step() for _ in range(3)]
    np.testing.assert_allclose(got, [0.1, 0.01, 0.001], rtol=1e-9)
    assert schedule.tau == pytest.approx(0.001)


def test_temperature_schedule_floor():
    schedule = TemperatureSchedule(decrease_factor=1e-6, num_epochs=2)
    got = [schedule.step() for _ in range(4)]
    np.testing.assert_allclose(got, [1e-3, 1e-4, 1e-4, 1e-4], rtol=1e-9)
    assert min(got) >= 1e-4


def test_temperature_schedule_one_epoch_and_factor_one():
    schedule = TemperatureSchedule(decrease_factor=0.0001, num_epochs=1)
    assert schedule.step() == pytest.approx(1e-4)
    schedule = TemperatureSchedule(decrease_factor=1.0, num_epochs=5)
    assert [schedule.step() for _ in range(5)] == [1.0] * 5


def test_temperature_schedule_ends_near_decrease_factor():
    for factor, epochs in [(0.001, 30), (0.0001, 70)]:
        schedule = TemperatureSchedule(factor, epochs)
        for _ in range(epochs):
            tau = schedule.step()
        assert tau == pytest.approx(max(factor, 1e-4), rel=1e-9)
        assert math.isclose(schedule.tau, tau)


# --------------------------------------------------------------------------- devices
def test_threshold_functions_on_device(device):
    x = torch.tensor([[-2.0, 0.0], [-0.5, 0.2], [0.0, 1.0], [5.0, 3.0], [1.0, 2.0]], device=device)
    q = quantile_thresholds(x, 2)
    mm = minmax_thresholds(x, 2)
    assert q.device.type == device and mm.device.type == device
    np.testing.assert_allclose(q.cpu().numpy(), np.quantile(x.cpu().numpy(), [0.25, 0.5, 0.75], axis=0).T, atol=1e-6)
    t = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.5, 2.0]], device=device)
    idx = hard_index(x, t)
    assert idx.device.type == device
    assert idx.cpu().tolist() == [[0, 0], [1, 0], [1, 1], [3, 3], [2, 2]]
    ranks = threshold_ranks(t)
    assert ranks.device.type == device and ranks.cpu().tolist() == [[0, 1, 2], [1, 0, 2]]
    mid = midpoints(t)
    assert mid.device.type == device and mid.cpu().tolist() == [[-1.5, -0.5, 0.5, 1.5], [0.25, 0.75, 1.5, 2.5]]
    assert decode_midpoints(idx, mid).device.type == device


@pytest.mark.parametrize("compute", [quantile_thresholds, minmax_thresholds])
def test_thresholds_of_rows_with_nan_or_inf_are_refused(compute):
    for bad in (float("nan"), float("inf")):
        rows = torch.tensor([[0.0, 1.0], [bad, 2.0], [1.0, 3.0]])
        with pytest.raises(ValueError, match="NaN or infinite values; drop or impute them"):
            compute(rows, 2)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        compute(np.zeros((3, 2)), 2)


@pytest.mark.parametrize("arguments", [(0.5, 0), (0.5, 2.5), (0.0, 3), (-0.5, 3), (2.0, 3), (float("nan"), 3),
                                       (True, 3), (0.5, 3, -1.0)])
def test_temperature_schedule_refuses_what_would_not_lower_tau(arguments):
    with pytest.raises(ValueError, match="must be"):
        TemperatureSchedule(*arguments)
    schedule = TemperatureSchedule(0.25, np.int64(2))  # whole numbers of any type
    assert schedule.num_epochs == 2 and type(schedule.num_epochs) is int and schedule.step() == 0.5
