"""Tests of models/: the MLP, the edge/cloud split, the method registry, training and persistence.

Networks are tiny (a few neurons, one or two epochs) so the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import (
    METHOD_NAMES,
    METHODS,
    MLP,
    PAPER_METHODS,
    Method,
    QuantizerContext,
    SavedModel,
    Setting,
    SplitModel,
    StackedMLP,
    build_model,
    evaluate,
    get_method,
    load_model,
    persistence,
    run_methods,
    runner,
    save_model,
    seed_everything,
    train_model,
    train_models,
    training,
)
from quantization import BwSQQuantizer, LLTQuantizer, LSQQuantizer, SQplusQuantizer, SQQuantizer, ThresholdQuantizer

PAPER_ORDER = (
    "FP", "Po-MQ", "Po-QQ", "Pr-MQ", "Pr-QQ", "SQ", "SQplus", "Bw-MQ", "Bw-QQ", "Bw-SQ", "LLT9", "LLT4", "LSQ",
)
ORDER = (*PAPER_ORDER, "Bw-SQ-ST")  # the paper's, then the methods registered beyond them
SOFT_EVAL = {"SQ", "SQplus", "Bw-SQ", "LLT9", "LLT4"}
QUANTIZED = [name for name in ORDER if name != "FP"]

SETTING = Setting(
    weight_decay=0.0,
    learning_rate=1e-3,
    hidden_layers=2,
    hidden_neurons=4,
    num_epochs=2,
    decrease_factor=0.001,
    dropout_rate=0.2,
)


def tiny_data(n: int = 300, d: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, -1] + 0.1 * torch.randn(n, generator=gen)
    y = (y - y.mean()) / y.std()
    return x, y


# =========================================================================== MLP
def test_mlp_layer_structure():
    mlp = MLP(5, 7, 3, 0.3)
    kinds = [type(layer) for layer in mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout] * 3 + [nn.Linear]
    linears = [layer for layer in mlp if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(5, 7), (7, 7), (7, 7), (7, 1)]
    assert all(layer.p == 0.3 for layer in mlp if isinstance(layer, nn.Dropout))
    out = mlp(torch.randn(11, 5))
    assert out.shape == (11,)


def test_mlp_without_hidden_layers_is_linear():
    mlp = MLP(4, 9, 0, 0.5)
    assert len(mlp) == 1 and isinstance(mlp[0], nn.Linear)
    assert (mlp[0].in_features, mlp[0].out_features) == (4, 1)
    x = torch.randn(6, 4)
    torch.testing.assert_close(mlp(x), x @ mlp[0].weight[0] + mlp[0].bias[0])


def test_mlp_dropout_only_in_training():
    mlp = MLP(3, 64, 2, 0.5)
    x = torch.randn(50, 3)
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
    mlp.train()
    torch.manual_seed(0)
    a = mlp(x)
    b = mlp(x)
    assert not torch.equal(a, b)


# =========================================================================== registry
def test_registry_names_and_flags():
    assert METHOD_NAMES == ORDER
    assert set(METHODS) == set(ORDER)
    assert {n for n, m in METHODS.items() if m.soft_eval} == SOFT_EVAL
    assert {n for n, m in METHODS.items() if m.post_training} == {"Po-MQ", "Po-QQ"}
    assert METHOD_NAMES[: len(PAPER_ORDER)] == PAPER_METHODS == PAPER_ORDER
    assert METHODS["FP"].quantizer is None
    with pytest.raises(ValueError, match="Bw-SQ"):
        get_method("Bw-XX")
    assert get_method("LSQ") is METHODS["LSQ"]


def test_build_model_quantizers_and_input_widths():
    bits, d = 3, 4
    x, _ = tiny_data(200, d)
    rows_info = QuantizerContext.from_training_rows(x, bits)
    m = 2**bits - 1
    expected_q = np.quantile(x.numpy(), np.arange(1, m + 1) / 2**bits, axis=0).T
    np.testing.assert_allclose(rows_info.quantile.numpy(), expected_q, atol=1e-5)
    lo, hi = x.numpy().min(0), x.numpy().max(0)
    expected_mm = lo[:, None] + (hi - lo)[:, None] / m * (np.arange(1, m + 1) - 0.5)
    np.testing.assert_allclose(rows_info.minmax.numpy(), expected_mm, atol=1e-5)
    widths = {}
    for name in ORDER:
        model = build_model(METHODS[name], SETTING, rows_info)
        widths[name] = model.mlp[0].in_features
        q = model.quantizer
        if name == "FP":
            assert q is None
            continue
        assert q.bits == bits
        if isinstance(q, ThresholdQuantizer):
            kind = rows_info.minmax if name.endswith("MQ") else rows_info.quantile
            assert torch.equal(q.thresholds.detach(), kind), name  # the exact same starting thresholds
            assert q.trainable == (name in ("SQ", "SQplus", "Bw-SQ", "Bw-SQ-ST")), name
            assert q.straight_through == (name == "Bw-SQ-ST"), name
    assert widths == {n: (d * m if n.startswith("Bw-") else d) for n in ORDER}
    assert isinstance(build_model(METHODS["LSQ"], SETTING, rows_info).quantizer, LSQQuantizer)
    lsq = build_model(METHODS["LSQ"], SETTING, rows_info).quantizer
    np.testing.assert_allclose(lsq.step_size.detach().numpy(), 2 * np.abs(x.numpy()).mean(0) / math.sqrt(3), rtol=1e-5)
    assert build_model(METHODS["LLT9"], SETTING, rows_info).quantizer.granularity == 9
    assert build_model(METHODS["LLT4"], SETTING, rows_info).quantizer.granularity == 4


# =========================================================================== edge / cloud
def randomize(quantizer, gen: torch.Generator) -> None:
    """Unsorted random thresholds and values, random LSQ steps and LLT tables."""
    with torch.no_grad():
        if isinstance(quantizer, ThresholdQuantizer) and quantizer.trainable:
            quantizer.thresholds.copy_(torch.randn(quantizer.thresholds.shape, generator=gen))
            if isinstance(quantizer, SQplusQuantizer):
                quantizer.interval_values.copy_(torch.randn(quantizer.interval_values.shape, generator=gen) * 3)
        if isinstance(quantizer, LSQQuantizer):
            quantizer.step_size.copy_(torch.rand(quantizer.step_size.shape, generator=gen) * 0.3 + 0.01)
        if isinstance(quantizer, LLTQuantizer):
            quantizer.logits.copy_(torch.randn(quantizer.logits.shape, generator=gen))
            quantizer.log_scale.copy_(torch.randn(quantizer.log_scale.shape, generator=gen) * 0.5 + 1.0)


def reference_hard_input(quantizer, x: torch.Tensor) -> torch.Tensor:
    """What the network sees in hard mode, from the paper's definitions, in numpy."""
    x64 = x.double().numpy()  # [n, d]
    if isinstance(quantizer, ThresholdQuantizer):
        t = quantizer.thresholds.detach().double().numpy()  # [d, M], possibly unsorted
        steps = (x64[:, :, None] > t[None]).astype(float)  # [x > t_k] in the thresholds' own order
        if isinstance(quantizer, BwSQQuantizer):
            seen = steps.reshape(len(x64), -1)
        elif isinstance(quantizer, SQQuantizer):
            seen = steps.sum(axis=-1)
        elif isinstance(quantizer, SQplusQuantizer):  # v_0 + sum_k [x > t_k] (v_k - v_{k-1})
            v = quantizer.interval_values.detach().double().numpy()
            seen = v[:, 0] + (steps * np.diff(v, axis=-1)).sum(axis=-1)
        else:  # midpoint of the interval between sorted thresholds, half a gap beyond the outer ones
            ts = np.sort(t, axis=-1)
            mids = np.concatenate([ts[:, :1] - (ts[:, 1:2] - ts[:, :1]) / 2, (ts[:, 1:] + ts[:, :-1]) / 2,
                                   ts[:, -1:] + (ts[:, -1:] - ts[:, -2:-1]) / 2], axis=-1)
            count = steps.sum(axis=-1).astype(int)
            seen = np.take_along_axis(mids, count.T, axis=1).T
    elif isinstance(quantizer, LSQQuantizer):  # s * clip(round(x / s), -2**(b-1), 2**(b-1) - 1)
        s = quantizer.step_size.detach().double().numpy()
        half = 2 ** (quantizer.bits - 1)
        seen = np.clip(np.round(x64 / s), -half, half - 1) * s
    else:  # LLT: s * T[f, round((K - 1) / 2 (clip(x / s, -1, 1) + 1))], T of the arg-max segments
        logits = quantizer.logits.detach().numpy()  # [d, R, G]
        d, segments, granularity = logits.shape
        one_hot = (np.arange(granularity) == logits.argmax(axis=-1)[..., None]).reshape(d, -1)
        rise = np.cumsum(one_hot, axis=-1)
        table = np.concatenate([-rise[:, ::-1], np.zeros((d, 1)), rise], axis=-1) / segments  # [d, K]
        s = np.exp(quantizer.log_scale.detach().double().numpy())
        position = np.round((table.shape[1] - 1) / 2 * (np.clip(x64 / s, -1, 1) + 1)).astype(int)
        seen = np.take_along_axis(table, position.T, axis=1).T * s
    return torch.as_tensor(seen, dtype=x.dtype)


@pytest.mark.parametrize("bits", range(2, 9))
def test_cloud_of_edge_equals_hard_model_exactly(bits):
    gen = torch.Generator().manual_seed(bits)
    d = 3
    train_x = torch.randn(400, d, generator=gen)
    rows_info = QuantizerContext.from_training_rows(train_x, bits)
    setting = replace(SETTING, hidden_neurons=5, dropout_rate=0.5)
    x = torch.randn(1000, d, generator=gen) * 1.5
    for name in QUANTIZED:
        torch.manual_seed(bits)
        model = build_model(METHODS[name], setting, rows_info)
        randomize(model.quantizer, gen)
        if isinstance(model.quantizer, ThresholdQuantizer) and model.quantizer.trainable:
            t = model.quantizer.thresholds.detach()
            assert not bool((t.diff(dim=1) >= 0).all()), name  # really out of order
        model.eval()
        model.set_hard(True)
        with torch.no_grad():
            expected = model(x)
            index = model.edge(x)
            got = model.cloud(index)
        assert index.dtype == torch.int64 and index.shape == (1000, d), name
        assert int(index.min()) >= 0 and int(index.max()) <= 2**bits - 1, name
        assert torch.equal(got, expected), name
        with torch.no_grad():  # and both are the definition's network input, computed independently
            reference = reference_hard_input(model.quantizer, x)
            torch.testing.assert_close(model.quantizer(x), reference, rtol=1e-6, atol=1e-4, msg=name)  # float32 sums
            torch.testing.assert_close(expected, model.mlp(reference), rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_bitwise_cloud_sees_the_steps_of_unsorted_thresholds(bits):
    """The server rebuilds [x > t_k] for every threshold k from the index alone."""
    gen = torch.Generator().manual_seed(50 + bits)
    x = torch.randn(300, 2, generator=gen)
    rows_info = QuantizerContext.from_training_rows(x, bits)
    model = build_model(METHODS["Bw-SQ"], SETTING, rows_info)
    randomize(model.quantizer, gen)
    model.eval()
    t = model.quantizer.thresholds.detach()
    steps = (x[:, :, None] > t[None]).float().flatten(1)  # feature-major, threshold order
    with torch.no_grad():
        assert torch.equal(model.cloud(model.edge(x)), model.mlp(steps))
        assert torch.equal(model.edge(x), (x[:, :, None] > t[None]).sum(-1))


def test_set_hard_and_temperature_reach_the_quantizer():
    x, _ = tiny_data(100, 2)
    rows_info = QuantizerContext.from_training_rows(x, 2)
    model = build_model(METHODS["SQ"], SETTING, rows_info)
    model.set_temperature(0.25)
    model.set_hard(True)
    assert model.quantizer.tau == 0.25 and model.quantizer.hard is True
    fp = build_model(METHODS["FP"], SETTING, rows_info)
    fp.set_hard(True)  # no quantizer: no effect, no error
    fp.set_temperature(0.1)


def test_full_precision_model_has_no_edge():
    x, _ = tiny_data(50, 2)
    model = build_model(METHODS["FP"], SETTING, QuantizerContext.from_training_rows(x, 2))
    with pytest.raises(ValueError):
        model.edge(x)
    with pytest.raises(ValueError):
        model.cloud(torch.zeros(5, 2, dtype=torch.int64))
    model.eval()
    assert torch.equal(model(x), model.mlp(x))


# =========================================================================== training
def test_setting_validation():
    with pytest.raises(ValueError):
        replace(SETTING, num_epochs=0)
    with pytest.raises(ValueError):
        replace(SETTING, dropout_rate=1.0)
    with pytest.raises(ValueError):
        replace(SETTING, learning_rate=0.0)
    with pytest.raises(ValueError):
        replace(SETTING, decrease_factor=0.0)
    values = {"weight_decay": "0", "learning_rate": "0.001", "hidden_layers": "2", "hidden_neurons": "4",
              "num_epochs": "2", "decrease_factor": "0.001", "dropout_rate": "0.2"}
    setting = Setting.from_mapping(values)
    assert setting == SETTING
    assert isinstance(setting.hidden_layers, int) and isinstance(setting.num_epochs, int)


@pytest.fixture(scope="module")
def tiny_run():
    x, y = tiny_data(300, 3)
    xv, yv = tiny_data(120, 3, seed=1)
    settings = {name: SETTING for name in ORDER}
    evaluations = {"val": (xv, yv), "test": (xv[:60], yv[:60])}
    results = run_methods(ORDER, settings, (x, y), evaluations, bits=3, seed=7)
    return results, (x, y), evaluations, settings


def test_run_methods_all_methods_finite(tiny_run):
    results, *_ = tiny_run
    assert list(results) == list(ORDER)
    for name, result in results.items():
        assert set(result.losses) == {"val", "test"}, name
        assert all(math.isfinite(v) and v >= 0 for v in result.losses.values()), name
        assert math.isfinite(result.train_loss) and result.train_loss >= 0, name
        assert result.seconds > 0, name  # every network, Po-* included (the FP network they share), was trained
        assert isinstance(result.model, SplitModel)


def test_run_methods_post_training_shares_fp(tiny_run):
    results, _, evaluations, _ = tiny_run
    fp = results["FP"]
    for name in ("Po-MQ", "Po-QQ"):
        assert results[name].train_loss == fp.train_loss
        assert results[name].seconds == fp.seconds
        assert results[name].model.mlp is fp.model.mlp
    # and the quantized FP network gives other losses than FP itself
    assert results["Po-QQ"].losses["val"] != fp.losses["val"]


def test_run_methods_post_training_loss_by_hand(tiny_run):
    """Po-QQ = the FP network on quantile-midpoint inputs, computed with numpy."""
    results, (x, _), evaluations, _ = tiny_run
    xv, yv = evaluations["val"]
    t = np.quantile(x.numpy().astype(np.float64), np.arange(1, 8) / 8, axis=0).T.astype(np.float32)  # [d, 7]
    q = np.concatenate(
        [t[:, :1] - (t[:, 1:2] - t[:, :1]) / 2, (t[:, 1:] + t[:, :-1]) / 2, t[:, -1:] + (t[:, -1:] - t[:, -2:-1]) / 2],
        axis=1,
    )
    index = (xv.numpy()[:, :, None] > t[None]).sum(-1)
    decoded = q[np.arange(3)[None], index]
    mlp = results["FP"].model.mlp
    mlp.eval()
    with torch.no_grad():
        pred = mlp(torch.tensor(decoded)).double().numpy()
    expected = np.mean((pred - yv.double().numpy()) ** 2)
    assert results["Po-QQ"].losses["val"] == pytest.approx(expected, rel=1e-5)


def test_run_methods_soft_losses_only_for_soft_methods(tiny_run):
    results, *_ = tiny_run
    for name, result in results.items():
        if name in SOFT_EVAL:
            assert set(result.soft_losses) == {"val", "test"}, name
            assert all(math.isfinite(v) for v in result.soft_losses.values()), name
        else:
            assert result.soft_losses == {}, name


def test_run_methods_fp_loss_is_eval_mode_mse(tiny_run):
    results, _, evaluations, _ = tiny_run
    xv, yv = evaluations["val"]
    model = results["FP"].model
    model.eval()
    with torch.no_grad():
        expected = ((model(xv).double() - yv.double()) ** 2).mean().item()
    assert results["FP"].losses["val"] == pytest.approx(expected, rel=1e-6)


def test_run_methods_is_reproducible_and_independent_of_other_methods(tiny_run):
    results, train, evaluations, settings = tiny_run
    again = run_methods(ORDER, settings, train, evaluations, bits=3, seed=7)
    for name in ORDER:
        assert again[name].losses == results[name].losses, name
        assert again[name].train_loss == results[name].train_loss, name
        assert again[name].soft_losses == results[name].soft_losses, name
    alone = run_methods(["Bw-SQ", "Po-MQ"], settings, train, evaluations, bits=3, seed=7)
    assert alone["Bw-SQ"].losses == results["Bw-SQ"].losses
    assert alone["Po-MQ"].losses == results["Po-MQ"].losses
    other_seed = run_methods(["Bw-SQ"], settings, train, evaluations, bits=3, seed=8)
    assert other_seed["Bw-SQ"].losses != results["Bw-SQ"].losses


def reference_step(mlps, inputs, masks, dropout):
    """Plain autograd through separate MLPs with the given dropout masks: predictions and all gradients."""
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    predictions = []
    for mlp, x in zip(mlps, inputs):
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        for layer, linear in enumerate(linears):
            x = linear(x)
            if layer < len(linears) - 1:
                x = torch.relu(x) * (masks[layer] / (1 - dropout))
        predictions.append(x.squeeze(-1))
    predictions = torch.stack(predictions)
    weights = torch.randn(predictions.shape, generator=torch.Generator().manual_seed(5), dtype=predictions.dtype)
    weights = weights.to(predictions.device)
    (predictions * weights).sum().backward()
    return predictions.detach(), weights, inputs


@pytest.mark.parametrize("hidden_layers", [0, 1, 3])
def test_stacked_mlp_matches_autograd_of_separate_networks(hidden_layers, device):
    """Mixed input widths, dropout, input gradients for some networks: all equal to plain autograd."""
    torch.manual_seed(0)
    dropout, batch, hidden = 0.3, 9, 5
    widths, input_grad = [4, 4, 4, 7, 7], [True, True, False, True, False]
    mlps = [MLP(w, hidden, hidden_layers, dropout).double().to(device) for w in widths]
    inputs = [torch.randn(batch, w, dtype=torch.float64).to(device) for w in widths]
    stacked = StackedMLP(mlps, input_grad)
    assert stacked.blocks == [(0, 2), (2, 3), (3, 4), (4, 5)]
    block_inputs = [torch.stack(inputs[start:stop]) for start, stop in stacked.blocks]
    predictions = stacked.forward(block_inputs, torch.Generator(device).manual_seed(3))
    generator = torch.Generator(device).manual_seed(3)  # the masks the stacked forward drew, in its order
    masks = [torch.empty(batch, hidden, dtype=torch.float64, device=device).bernoulli_(1 - dropout, generator=generator)
             for _ in range(hidden_layers)]
    expected, weights, leaves = reference_step(mlps, inputs, masks, dropout)
    torch.testing.assert_close(predictions, expected, rtol=1e-12, atol=1e-12)
    input_grads = stacked.backward(weights)
    assert [None if g is None else g.shape[0] for g in input_grads] == [2, None, 1, None]
    torch.testing.assert_close(input_grads[0], torch.stack([leaves[0].grad, leaves[1].grad]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(input_grads[2][0], leaves[3].grad, rtol=1e-12, atol=1e-12)
    grads = copy.deepcopy(mlps)
    for mlp, separate in zip(grads, mlps):
        for linear, original in zip(mlp, separate):
            if isinstance(linear, nn.Linear):
                linear.weight.data, linear.bias.data = original.weight.grad, original.bias.grad
    flat = stacked.flat.detach().clone()
    stacked.flat.data.copy_(stacked.flat.grad)  # unstack the gradient like weights
    stacked.unstack_into(mlps)
    for mlp, expected_grads in zip(mlps, grads):
        for got, want in zip(mlp.parameters(), expected_grads.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    stacked.flat.data.copy_(flat)


def test_stacked_mlp_round_trips_weights_and_checks_its_order():
    mlps = [MLP(w, 3, 2, 0.0) for w in (2, 2, 5)]
    copies = copy.deepcopy(mlps)
    StackedMLP(mlps, [False] * 3).unstack_into(copies)
    for mlp, copied in zip(mlps, copies):
        for a, b in zip(mlp.parameters(), copied.parameters()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="adjacent"):
        StackedMLP([MLP(2, 3, 1, 0.0), MLP(5, 3, 1, 0.0), MLP(2, 3, 1, 0.0)], [False] * 3)
    with pytest.raises(ValueError, match="adjacent"):
        StackedMLP([MLP(2, 3, 1, 0.0), MLP(2, 3, 1, 0.0), MLP(2, 3, 1, 0.0)], [False, True, False])


def test_train_models_returns_losses_in_the_given_order():
    x, y = tiny_data(300, 3)
    rows_info = QuantizerContext.from_training_rows(x, 3)

    def built(names):
        models = []
        for name in names:
            torch.manual_seed(0)
            models.append(build_model(METHODS[name], SETTING, rows_info))
        return models

    names = ["FP", "Bw-SQ", "LSQ", "Bw-QQ"]
    forward = train_models(built(names), x, y, SETTING, seed=1)
    backward = train_models(built(names[::-1]), x, y, SETTING, seed=1)
    assert forward == backward[::-1]
    assert len(set(forward)) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graphs_train_as_eager_launches_do():
    """Replaying each step as a CUDA graph (one per epoch, full batches) gives eager training's losses and weights."""
    x, y = tiny_data(1300, 3)  # batches of 512, 512 and 276 rows: eager, captured and replayed, eager
    x, y = x.cuda(), y.cuda()
    rows_info = QuantizerContext.from_training_rows(x, 3)
    names = ["FP", "Pr-QQ", "SQ", "SQplus", "Bw-MQ", "Bw-SQ", "LLT9", "LLT4", "LSQ", "Bw-SQ-ST"]
    # dropout 0.2: the graphs draw the eager masks
    setting = replace(SETTING, num_epochs=3, hidden_neurons=16, weight_decay=1e-3)

    def trained(cuda_graphs):
        models = []
        for name in names:
            torch.manual_seed(0)
            models.append(build_model(METHODS[name], setting, rows_info))
        losses = train_models(models, x, y, setting, seed=1, cuda_graphs=cuda_graphs)
        return torch.tensor(losses), [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]

    (graph_losses, graph_weights), (eager_losses, eager_weights) = trained(True), trained(False)
    torch.testing.assert_close(graph_losses, eager_losses, rtol=0, atol=0)
    for name, got, want in zip(names, graph_weights, eager_weights):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_memory_does_not_grow_with_epochs_and_is_returned():
    """Each epoch's graph is captured into the memory pool of the one it replaces, and training returns the pool."""
    x, y = tiny_data(1300, 3)
    x, y = x.cuda(), y.cuda()
    rows_info = QuantizerContext.from_training_rows(x, 3)

    def train(epochs):  # -> (peak reserved bytes, segments still held by graph memory pools afterwards)
        setting = replace(SETTING, hidden_neurons=512, num_epochs=epochs)  # steps allocate 1 MiB tensors
        torch.manual_seed(0)
        models = [build_model(METHODS[name], setting, rows_info) for name in ("Bw-SQ", "LLT4")]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        train_models(models, x, y, setting, seed=1)
        # (0, 0): the default pool
        pools = [s for s in torch.cuda.memory_snapshot() if tuple(s["segment_pool_id"]) != (0, 0)]
        return torch.cuda.max_memory_reserved(), pools

    (peak_2, _), (peak_12, pools) = train(2), train(12)
    assert peak_12 <= peak_2 + 2**20  # ten more captures, no more memory (each used to add a pool of its own)
    assert pools == []


def test_run_methods_splits_wide_settings_into_stacks_with_the_same_results(tiny_run, monkeypatch):
    results, train, evaluations, settings = tiny_run
    weights = sum(p.numel() for p in results["FP"].model.mlp.parameters())  # 3 inputs
    monkeypatch.setattr(runner, "STACK_PARAMETERS", 2 * weights)  # two 3-input networks per stack at most
    stacks = []
    again = run_methods(ORDER, settings, train, evaluations, bits=3, seed=7, on_stack=stacks.append)
    assert stacks == ["FP Pr-MQ", "Pr-QQ SQ", "SQplus", "Bw-MQ", "Bw-QQ", "Bw-SQ", "LLT9 LLT4", "LSQ", "Bw-SQ-ST"]
    for name in ORDER:  # a network alone in its stack may be multiplied by other kernels (README, "Seeds")
        assert again[name].losses == pytest.approx(results[name].losses, rel=1e-9, abs=0), name
        assert again[name].soft_losses == pytest.approx(results[name].soft_losses, rel=1e-9, abs=0), name


def test_run_methods_one_epoch_and_zero_hidden_layers():
    x, y = tiny_data(200, 2)
    setting = replace(SETTING, num_epochs=1, hidden_layers=0, dropout_rate=0.0)
    results = run_methods(ORDER, {n: setting for n in ORDER}, (x, y), {"val": (x, y)}, bits=2, seed=0)
    assert all(math.isfinite(r.losses["val"]) for r in results.values())
    rows_info = QuantizerContext.from_training_rows(x, 2)
    for name in ORDER:
        seed_everything(0)  # as run_methods does before building each network
        initial = build_model(METHODS[name], setting, rows_info).mlp
        trained = results[name].model.mlp
        assert [type(m) for m in trained] == [nn.Linear] and trained[0].out_features == 1, name
        moved = (trained[0].weight - initial[0].weight).detach().abs()
        assert 0 < float(moved.max()) <= 2 * setting.learning_rate, name  # one Adam step moves a weight by about lr


def test_train_model_learns_and_leaves_hard_evaluation_possible():
    x, y = tiny_data(600, 3)
    rows_info = QuantizerContext.from_training_rows(x, 4)
    setting = replace(SETTING, num_epochs=20, hidden_neurons=16, learning_rate=1e-2, dropout_rate=0.0)
    torch.manual_seed(0)
    model = build_model(METHODS["Bw-SQ"], setting, rows_info)
    before = evaluate(model, x, y)
    train_loss = train_model(model, x, y, setting)
    after = evaluate(model, x, y)
    assert math.isfinite(train_loss)
    assert after < before
    assert model.quantizer.hard is True and not model.training  # evaluate switched to eval + hard


def test_llt_scale_initialised_by_training():
    x, y = tiny_data(300, 3)
    rows_info = QuantizerContext.from_training_rows(x, 3)
    torch.manual_seed(0)
    model = build_model(METHODS["LLT4"], SETTING, rows_info)
    assert not bool(model.quantizer.scale_initialized)
    train_model(model, x, y, replace(SETTING, learning_rate=1e-12))  # parameters barely move
    assert bool(model.quantizer.scale_initialized)
    # first batch: all 300 rows (fewer than 512), so log(3 std) of the whole training X
    np.testing.assert_allclose(
        model.quantizer.log_scale.detach().numpy(), np.log(3 * x.numpy().std(0, ddof=1)), rtol=1e-4
    )


def test_temperature_during_training_follows_schedule(monkeypatch):
    """The quantizer sees tau = factor**(e / E) during epoch e (0-based)."""
    seen = []
    original = SQQuantizer.soft_function  # what forward and the engine's soft_with_backward() call

    def spy(self, x):
        seen.append(self.tau)
        return original(self, x)

    monkeypatch.setattr(SQQuantizer, "soft_function", spy)
    x, y = tiny_data(1100, 2)  # 3 batches per epoch
    rows_info = QuantizerContext.from_training_rows(x, 2)
    model = build_model(METHODS["SQ"], SETTING, rows_info)
    train_model(model, x, y, replace(SETTING, num_epochs=3))
    expected = [1.0] * 3 + [0.1] * 3 + [0.01] * 3
    np.testing.assert_allclose(seen, expected, rtol=1e-9)


def test_temperature_after_training_ends_at_decrease_factor():
    x, y = tiny_data(300, 2)
    rows_info = QuantizerContext.from_training_rows(x, 2)
    for epochs in (1, 3):
        model = build_model(METHODS["SQ"], SETTING, rows_info)
        train_model(model, x, y, replace(SETTING, num_epochs=epochs, decrease_factor=0.001))
        assert model.quantizer.tau == pytest.approx(0.001, rel=1e-9), epochs


def test_stack_companions_do_not_change_a_network() -> None:
    """In any stack of two or more a network trains to the same bits; alone, MKL multiplies a batch
    of one matrix with other kernels, which round differently in the last bits."""
    x, y = tiny_data(1024, 5)
    setting = replace(SETTING, hidden_neurons=64)

    def lsq_loss(names: list[str]) -> float:
        results = run_methods(names, {n: setting for n in names}, (x, y), {"val": (x, y)}, bits=3, seed=1)
        return results["LSQ"].losses["val"]

    with_fp = lsq_loss(["LSQ", "FP"])
    assert lsq_loss(["LSQ", "SQ", "LLT4", "Pr-MQ", "Bw-QQ"]) == with_fp
    assert lsq_loss(["LSQ"]) == pytest.approx(with_fp, rel=1e-6)


def test_straight_through_bw_sq_trains_and_ignores_its_companions() -> None:
    """Bw-SQ-ST moves its thresholds, trains to other losses than Bw-SQ from the same start, and its losses
    are the same beside any other methods (its network is built right after seeding, and it trains apart
    from the paper's methods), nor does it change theirs."""
    x, y = tiny_data(1024, 3)
    setting = replace(SETTING, hidden_neurons=16, num_epochs=3, learning_rate=0.01)

    def run(names: list[str]) -> dict:
        return run_methods(names, {n: setting for n in names}, (x, y), {"val": (x, y)}, bits=2, seed=3)

    beside_fp = run(["Bw-SQ-ST", "FP"])
    model = beside_fp["Bw-SQ-ST"].model
    start = QuantizerContext.from_training_rows(x, 2).quantile
    assert model.quantizer.straight_through and not torch.equal(model.quantizer.thresholds.detach(), start)
    assert beside_fp["Bw-SQ-ST"].soft_losses == {}  # trained on its hard steps: no soft-mode evaluation
    for names in (["Bw-SQ", "Bw-SQ-ST"], ["LSQ", "Bw-QQ", "Bw-SQ-ST", "SQ", "Bw-SQ", "Po-MQ"]):
        again = run(names)["Bw-SQ-ST"]
        assert (again.losses, again.train_loss) == (beside_fp["Bw-SQ-ST"].losses, beside_fp["Bw-SQ-ST"].train_loss)
    stacks: list[str] = []
    both = run_methods(["Bw-SQ", "FP", "Bw-SQ-ST"], {n: setting for n in ("Bw-SQ", "FP", "Bw-SQ-ST")}, (x, y),
                       {"val": (x, y)}, bits=2, seed=3, on_stack=stacks.append)
    assert stacks == ["Bw-SQ FP", "Bw-SQ-ST"]  # the paper's methods in stacks of their own: their numbers stay
    assert both["Bw-SQ"].losses == run(["Bw-SQ", "FP"])["Bw-SQ"].losses
    assert both["Bw-SQ"].losses != both["Bw-SQ-ST"].losses


def test_training_on_device(device):
    """Every method trains on the device, reproducibly, and a network's losses do not depend on its stack."""
    x, y = tiny_data(300, 3)
    x, y = x.to(device), y.to(device)
    settings = {n: SETTING for n in ORDER}
    results = run_methods(ORDER, settings, (x, y), {"val": (x, y)}, bits=3, seed=0)
    again = run_methods(ORDER, settings, (x, y), {"val": (x, y)}, bits=3, seed=0)
    alone = {name: run_methods([name], settings, (x, y), {"val": (x, y)}, bits=3, seed=0)[name]
             for name in ("Bw-SQ", "LLT4")}
    for name in ORDER:
        assert (again[name].losses, again[name].train_loss) == (results[name].losses, results[name].train_loss), name
    for name, result in alone.items():  # exact on the CPU at this tiny width (test below); cuBLAS may pick others
        tolerance = 0 if device == "cpu" else 1e-4
        assert result.train_loss == pytest.approx(results[name].train_loss, rel=tolerance, abs=0), name
        assert result.losses["val"] == pytest.approx(results[name].losses["val"], rel=tolerance, abs=0), name
    for name, result in results.items():
        assert math.isfinite(result.losses["val"]), name
        assert next(result.model.parameters()).device.type == device, name
        if result.model.quantizer is not None:
            result.model.eval()
            result.model.set_hard(True)
            with torch.no_grad():
                index = result.model.edge(x)
                assert index.device.type == device
                assert torch.equal(result.model.cloud(index), result.model(x)), name


# =========================================================================== persistence
def saved(result, method: str, d: int) -> SavedModel:
    rng = np.random.default_rng(0)
    return SavedModel(
        model=copy.deepcopy(result.model),  # leave the shared fixture's model untouched
        method=method,
        bits=3,
        setting=SETTING,
        feature_names=[f"f{i}" for i in range(d)],
        x_mean=rng.normal(size=d),
        x_scale=rng.uniform(0.5, 2.0, size=d),
        y_mean=1.5,
        y_scale=0.25,
        dataset="tiny",
    )


@pytest.mark.parametrize(
    "method", ["FP", "Po-MQ", "Pr-QQ", "SQ", "SQplus", "Bw-MQ", "Bw-SQ", "LLT9", "LLT4", "LSQ", "Bw-SQ-ST"],
)
def test_save_load_round_trip(tiny_run, tmp_path, method):
    results, *_ = tiny_run
    original = saved(results[method], method, 3)
    if isinstance(original.model.quantizer, ThresholdQuantizer) and original.model.quantizer.trainable:
        randomize(original.model.quantizer, torch.Generator().manual_seed(1))  # unsorted thresholds survive
    path = tmp_path / "sub" / f"{method}.pt"
    save_model(original, path)
    loaded = load_model(path)
    assert (loaded.method, loaded.bits, loaded.setting, loaded.dataset) == (method, 3, SETTING, "tiny")
    assert loaded.feature_names == ["f0", "f1", "f2"]
    np.testing.assert_array_equal(loaded.x_mean, original.x_mean)
    np.testing.assert_array_equal(loaded.x_scale, original.x_scale)
    assert (loaded.y_mean, loaded.y_scale) == (1.5, 0.25)
    raw = np.random.default_rng(2).normal(size=(200, 3)) * 2
    expected = original.predict(raw)
    got = loaded.predict(raw)
    np.testing.assert_array_equal(got, expected)
    # predict is the hard model in raw units, of the raw values as float32 (as in training): by hand
    original.model.eval()
    original.model.set_hard(True)
    with torch.no_grad():
        std = (raw.astype(np.float32).astype(np.float64) - original.x_mean) / original.x_scale
        std = torch.tensor(std, dtype=torch.float32)
        by_hand = original.model(std).double().numpy() * 0.25 + 1.5
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)
    if original.model.quantizer is not None:
        assert torch.equal(loaded.model.edge(std), original.model.edge(std))
        assert loaded.model.quantizer.tau == original.model.quantizer.tau
        if not METHODS[method].post_training:  # trained: the temperature reached after the last epoch
            assert original.model.quantizer.tau == pytest.approx(SETTING.decrease_factor)
        for model in (original.model, loaded.model):
            model.set_hard(False)
        with torch.no_grad():
            assert torch.equal(loaded.model(std), original.model(std))  # the soft (``*_train``) evaluation reloads too
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_lsq_model_saved_with_the_old_parameter_name_loads(tiny_run, tmp_path):
    """LSQ's step size was saved as ``quantizer.step`` before it was called ``step_size``."""
    results, *_ = tiny_run
    original = saved(results["LSQ"], "LSQ", 3)
    path = tmp_path / "LSQ.pt"
    save_model(original, path)
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    assert "quantizer.step_size" in state
    payload["state_dict"] = {("quantizer.step" if k == "quantizer.step_size" else k): v for k, v in state.items()}
    torch.save(payload, path)
    loaded = load_model(path)
    assert torch.equal(loaded.model.quantizer.step_size, original.model.quantizer.step_size.detach())
    raw = np.random.default_rng(3).normal(size=(20, 3))
    np.testing.assert_array_equal(loaded.predict(raw), original.predict(raw))


def test_save_model_refuses_a_network_it_could_not_rebuild(tiny_run, tmp_path):
    results, *_ = tiny_run
    original = saved(results["Bw-SQ"], "Bw-SQ", 3)
    for wrong in (replace(original, setting=replace(SETTING, hidden_neurons=5)), replace(original, bits=4)):
        with pytest.raises(ValueError, match="is not the network Bw-SQ builds"):
            save_model(wrong, tmp_path / "wrong.pt")
    assert not list(tmp_path.iterdir())


def test_load_model_refuses_weights_that_do_not_fit(tiny_run, tmp_path):
    results, *_ = tiny_run
    path = tmp_path / "model.pt"
    save_model(saved(results["LSQ"], "LSQ", 3), path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["mlp.0.weight"] = torch.zeros(2, 2)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="model.pt holds weights that do not fit"):
        load_model(path)
    # what load_model requires is what save_model writes
    assert set(payload) == {*persistence.PAYLOAD_KEYS, "format", "tau"}
    del payload["setting"], payload["dataset"]  # a file edited by hand
    torch.save(payload, path)
    message = "model.pt lacks setting, dataset; it is damaged or was not written by save_model"
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_training_refuses_other_networks_and_target_shapes():
    x, y = tiny_data()
    tanh = SplitModel(None, MLP(3, 8, 1, 0.0))
    tanh.mlp[1] = nn.Tanh()
    with pytest.raises(ValueError, match=r"trains this project's MLP .* got MLP\(Linear, Tanh, Dropout, Linear\)"):
        train_models([tanh], x, y, SETTING, seed=0)
    with pytest.raises(ValueError, match=r"targets y \[n\], got \[300, 3\] and \[300, 1\]"):
        train_model(SplitModel(None, MLP(3, 8, 1, 0.0)), x, y[:, None], SETTING, seed=0)
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        train_model(SplitModel(None, MLP(3, 8, 1, 0.0)), torch.where(x > 2, torch.nan, x), y, SETTING, seed=0)
    with pytest.raises(ValueError, match="must share depth, widths and dropout"):
        train_models([SplitModel(None, MLP(3, 8, 1, 0.0)), SplitModel(None, MLP(3, 8, 2, 0.0))], x, y, SETTING, seed=0)


def test_load_model_refuses_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "method": "FP"}, other)
    with pytest.raises(ValueError, match="other.pt"):
        load_model(other)
    plain = tmp_path / "plain.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(ValueError):
        load_model(plain)


def test_adam_on_flat_chunks_updates_flat_as_adam_on_flat():
    """The pieces share flat's storage and gradient, so Adam on them is Adam on flat (to rounding:
    the CPU kernel's vectorized and scalar loops may differ in the last bit)."""
    torch.manual_seed(0)
    mlps = [MLP(w, 6, 2, 0.0) for w in (3, 3, 5)]
    stacked = StackedMLP(mlps, [True, False, False])
    twin = StackedMLP(mlps, [True, False, False])
    initial = twin.flat.detach().clone()
    assert twin.flat.numel() == 231
    assert [c.numel() for c in twin.flat_chunks(pieces=4, smallest=7)] == [58, 58, 58, 57]
    chunks = twin.flat_chunks(pieces=100, smallest=7)
    assert [c.numel() for c in chunks] == [7] * 33
    optimizers = [torch.optim.Adam([stacked.flat], lr=0.01, weight_decay=0.1, fused=True),
                  torch.optim.Adam(chunks, lr=0.01, weight_decay=0.1, fused=True)]
    for _ in range(3):
        gradient = torch.randn(stacked.flat.shape)
        stacked.flat.grad.copy_(gradient)
        twin.flat.grad.copy_(gradient)  # written in place, as the backward pass does
        for optimizer in optimizers:
            optimizer.step()
    assert bool((twin.flat != initial).all())  # the chunks' updates land in flat
    torch.testing.assert_close(twin.flat, stacked.flat, rtol=1e-6, atol=0)


def readme_python_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_examples_run() -> None:
    usage, new_method = readme_python_blocks()
    exec(compile(usage, "README.md", "exec"), {})  # its own assert: cloud(edge(x)) equals the hard forward
    (method,) = eval(new_method, {"Method": Method, "BwSQQuantizer": BwSQQuantizer})
    rows_info = QuantizerContext.from_training_rows(torch.randn(50, 3), 2)
    quantizer = method.quantizer(rows_info)
    assert method.soft_eval and quantizer.trainable and type(quantizer) is BwSQQuantizer
    assert torch.equal(quantizer.thresholds, rows_info.minmax)


# =========================================================================== the plain loop and the engine
@pytest.mark.parametrize("method", ["FP", "SQplus", "Bw-SQ", "Bw-QQ", "LLT4", "LSQ", "Bw-SQ-ST"])
def test_engine_trains_as_the_plain_loop_does(method):
    """Without dropout, in float64, the stacked engine's training is the plain loop's (same batches from
    the generator seeded with seed, the same Adam and temperatures), to rounding."""
    x, y = tiny_data(1100, 3, seed=2)  # three batches per epoch, the last one short
    x, y = x.double(), y.double()
    setting = replace(SETTING, dropout_rate=0.0, num_epochs=3, learning_rate=0.01, weight_decay=0.1)
    seed_everything(0)
    plain = build_model(METHODS[method], setting, QuantizerContext.from_training_rows(x, 3)).double()
    stacked = copy.deepcopy(plain)
    plain_loss = train_model(plain, x, y, setting, seed=4)
    (engine_loss,) = train_models([stacked], x, y, setting, seed=4)
    assert engine_loss == pytest.approx(plain_loss, rel=1e-6)  # the engine sums its losses in float32
    for (name, ours), theirs in zip(plain.named_parameters(), stacked.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12, msg=name)
    assert evaluate(plain, x, y) == pytest.approx(evaluate(stacked, x, y), rel=1e-9)
    if plain.quantizer is not None:
        assert plain.quantizer.tau == stacked.quantizer.tau == pytest.approx(setting.decrease_factor)


def test_plain_loop_trains_a_quantizer_in_front_of_a_network_of_your_own():
    """Any network from the quantizer's output to one prediction per row trains, thresholds included."""
    x, y = tiny_data(600, 3)
    setting = replace(SETTING, num_epochs=10, learning_rate=1e-2, dropout_rate=0.0)
    torch.manual_seed(0)
    quantizer = BwSQQuantizer(QuantizerContext.from_training_rows(x, 3).quantile)
    network = nn.Sequential(nn.Linear(quantizer.out_features, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))
    model = SplitModel(quantizer, network)
    initial = quantizer.thresholds.detach().clone()
    before = evaluate(model, x, y)
    train_loss = train_model(model, x, y, setting, seed=0)
    assert math.isfinite(train_loss) and evaluate(model, x, y) < before
    assert not torch.equal(quantizer.thresholds.detach(), initial)
    assert quantizer.tau == pytest.approx(setting.decrease_factor)
    with pytest.raises(ValueError, match=r"one prediction per row, \[512\], got \[512, 1\]"):
        train_model(SplitModel(quantizer, network[:-1]), x, y, setting, seed=0)
    with pytest.raises(ValueError, match="trains this project's MLP"):
        train_models([model], x, y, setting, seed=0)


# =========================================================================== training against a reference optimizer


@pytest.mark.parametrize("method", ["FP", "Bw-SQ"])
def test_training_is_adam_with_weight_decay_on_the_mean_squared_error(method):
    """One batch per epoch, no dropout: training equals torch.optim.Adam(lr, weight_decay) over the MLP's
    and the thresholds' parameters on the batch MSE, step by step, with the Bw-SQ input written out as
    sigmoid((x - t) / tau) at tau = decrease_factor**(e / E) in epoch e; the reported loss is the MSE of the
    last epoch (before its update)."""
    x, y = tiny_data(200, 3)  # < 512 rows: one batch per epoch, so shuffling cannot change the sums
    setting = replace(SETTING, weight_decay=0.5, learning_rate=0.01, hidden_layers=1, num_epochs=3, dropout_rate=0.0,
                      decrease_factor=0.01)
    rows_info = QuantizerContext.from_training_rows(x, 2)
    seed_everything(0)
    model = build_model(METHODS[method], setting, rows_info)
    mlp = copy.deepcopy(model.mlp)
    parameters = list(mlp.parameters())
    if method == "Bw-SQ":
        thresholds = nn.Parameter(model.quantizer.thresholds.detach().clone())  # [d, M]
        parameters.append(thresholds)
    optimizer = torch.optim.Adam(parameters, lr=setting.learning_rate, weight_decay=setting.weight_decay)
    for epoch in range(setting.num_epochs):
        tau = setting.decrease_factor ** (epoch / setting.num_epochs)
        inputs = x if method == "FP" else torch.sigmoid((x[:, :, None] - thresholds) / tau).flatten(1)
        optimizer.zero_grad()
        loss = ((mlp(inputs).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    train_loss = train_model(model, x, y, setting, seed=0)
    for ours, theirs in zip(model.mlp.parameters(), mlp.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if method == "Bw-SQ":
        torch.testing.assert_close(model.quantizer.thresholds, thresholds, rtol=1e-5, atol=1e-5)
    assert train_loss == pytest.approx(loss.item(), rel=1e-5)


def test_reported_training_loss_is_the_last_epoch_only():
    """With a learning rate so small that the weights do not move, every epoch's MSE is the initial
    network's, and the reported loss is that MSE (not a sum over epochs)."""
    x, y = tiny_data(1100, 3)  # three batches per epoch
    setting = replace(SETTING, learning_rate=1e-30, num_epochs=3, dropout_rate=0.0)
    rows_info = QuantizerContext.from_training_rows(x, 2)
    seed_everything(0)
    model = build_model(METHODS["FP"], setting, rows_info)
    with torch.no_grad():
        expected = ((model.mlp(x).squeeze(-1).double() - y.double()) ** 2).mean().item()
    assert train_model(model, x, y, setting, seed=0) == pytest.approx(expected, rel=1e-5)


def test_hard_and_soft_losses_of_trained_quantizers_by_hand():
    """The reported losses are cloud(edge(x)) (hard); the soft ones mlp(soft(x)) at the final tau, in eval mode."""
    x, y = tiny_data(300, 3)
    xv, yv = tiny_data(120, 3, seed=1)
    names = ["SQ", "Bw-SQ", "LLT4"]
    results = run_methods(names, {m: SETTING for m in names}, (x, y), {"val": (xv, yv)}, bits=3, seed=7)
    for name in names:
        model = results[name].model
        model.eval()
        with torch.no_grad():
            hard = ((model.cloud(model.edge(xv)).double() - yv.double()) ** 2).mean().item()
            soft = ((model.mlp(model.quantizer.soft(xv)).squeeze(-1).double() - yv.double()) ** 2).mean().item()
        assert hard != pytest.approx(soft, rel=1e-6), name  # the two modes do differ here
        assert results[name].losses["val"] == pytest.approx(hard, rel=1e-6), name
        assert results[name].soft_losses["val"] == pytest.approx(soft, rel=1e-6), name


def test_sq_sees_the_integer_index_and_sqplus_the_interval_values():
    """SQ's network input is the (soft) index, SQplus's the interval value, by hand from the thresholds."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 2, generator=gen)
    rows_info = QuantizerContext.from_training_rows(x, 3)
    t = rows_info.quantile.numpy().astype(np.float64)  # [d, M], sorted
    xs = x.numpy().astype(np.float64)
    index = (xs[:, :, None] > t[None]).sum(-1)
    soft_index = (1 / (1 + np.exp(-(xs[:, :, None] - t[None]) / 0.5))).sum(-1)  # at tau = 0.5
    q = np.concatenate([t[:, :1] - (t[:, 1:2] - t[:, :1]) / 2, (t[:, :-1] + t[:, 1:]) / 2,
                        t[:, -1:] + (t[:, -1:] - t[:, -2:-1]) / 2], axis=1)  # midpoints q_0..q_M [d, M + 1]
    midpoint = np.take_along_axis(q, index.T, axis=1).T
    setting = replace(SETTING, dropout_rate=0.0)
    for name, hard_expected in (("SQ", index), ("SQplus", midpoint)):
        quantizer = build_model(METHODS[name], setting, rows_info).quantizer
        quantizer.hard = True
        with torch.no_grad():
            np.testing.assert_allclose(quantizer(x).double().numpy(), hard_expected, rtol=1e-5, atol=1e-5, err_msg=name)
    sq = build_model(METHODS["SQ"], setting, rows_info).quantizer
    sq.hard, sq.tau = False, 0.5
    with torch.no_grad():
        np.testing.assert_allclose(sq(x).double().numpy(), soft_index, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- misuse from outside
def test_setting_values_are_checked_and_stored_as_plain_numbers():
    setting = replace(SETTING, hidden_layers=np.int64(2), hidden_neurons=4.0, weight_decay=np.float32(0.0))
    assert setting == SETTING and hash(setting) == hash(SETTING)
    assert type(setting.hidden_layers) is int and type(setting.hidden_neurons) is int
    assert type(setting.weight_decay) is float
    for key, value, message in [
        ("num_epochs", 2.5, "num_epochs must be a whole number, got 2.5"),
        ("hidden_layers", True, "hidden_layers must be a finite number, got True"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number, got inf"),
        ("dropout_rate", float("nan"), "dropout_rate must be a finite number"),
        ("learning_rate", "fast", "learning_rate must be a finite number, got 'fast'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            replace(SETTING, **{key: value})
    with pytest.raises(ValueError, match="missing num_epochs, dropout_rate"):
        Setting.from_mapping({k: v for k, v in vars(SETTING).items() if k not in ("num_epochs", "dropout_rate")})
    assert Setting.from_mapping({**vars(SETTING), "num_epochs": "2.0"}) == SETTING


def test_float64_rows_train_as_their_float32_values_do():
    x, y = tiny_data(200, 3)
    rows_info = QuantizerContext.from_training_rows(x, 3)
    losses = {}
    for dtype in (torch.float32, torch.float64):
        for name in ("FP", "Bw-SQ", "LLT4"):
            torch.manual_seed(0)
            model = build_model(METHODS[name], SETTING, rows_info)
            rows, targets = x.to(dtype), y.to(dtype)
            losses[dtype, name] = (train_model(model, rows, targets, SETTING, seed=3), evaluate(model, rows, targets))
    for name in ("FP", "Bw-SQ", "LLT4"):
        assert losses[torch.float64, name] == losses[torch.float32, name]


def test_training_refuses_rows_and_networks_it_cannot_train():
    x, y = tiny_data(100, 3)
    model = build_model(METHODS["Bw-SQ"], SETTING, QuantizerContext.from_training_rows(x, 3))
    for rows, targets, message in [
        (x[:, :1], y,
         r"expected training rows x \[n, 3\] with n >= 1 and targets y \[n\], got \[100, 1\] and \[100\]$"),
        (x[:0], y[:0], r"got \[0, 3\] and \[0\]$"),
        (x, y[:, None], r"got \[100, 3\] and \[100, 1\]; flatten y with y.view\(-1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            train_model(model, rows, targets, SETTING, seed=0)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        train_model(model, x.numpy(), y, SETTING, seed=0)
    with pytest.raises(ValueError, match="share parameters"):
        train_models([model, model], x, y, SETTING, seed=0)
    with pytest.raises(ValueError, match="share parameters"):  # one quantizer in two networks
        train_models([model, SplitModel(model.quantizer, MLP(9, 4, 2, 0.2))], x, y, SETTING, seed=0)
    with pytest.raises(TypeError, match="expected SplitModel"):
        train_model(nn.Sequential(model.quantizer, model.mlp), x, y, SETTING, seed=0)
    with pytest.raises(ValueError, match="trains this project's MLP"):
        train_models([SplitModel(model.quantizer, nn.Linear(9, 1))], x, y, SETTING, seed=0)
    with pytest.raises(ValueError, match="no networks given"):
        train_models([], x, y, SETTING, seed=0)
    four_features = build_model(METHODS["Bw-SQ"], SETTING, QuantizerContext.from_training_rows(torch.randn(50, 4), 3))
    with pytest.raises(ValueError, match=r"must read the same features, got \[3, 4\]"):
        train_models([model, four_features], x, y, SETTING, seed=0)
    fp64 = build_model(METHODS["FP"], SETTING, QuantizerContext.from_training_rows(x, 3)).double()
    with pytest.raises(ValueError, match="share one dtype"):
        train_models([model, fp64], x, y, SETTING, seed=0)


def test_evaluation_refuses_rows_it_cannot_evaluate():
    x, y = tiny_data(100, 3)
    model = build_model(METHODS["FP"], SETTING, QuantizerContext.from_training_rows(x, 3))
    message = r"expected evaluation rows x \[n, 3\] .* got \[100, 3\] and \[100, 1\]; flatten"
    with pytest.raises(ValueError, match=message):
        evaluate(model, x, y[:, None])
    with pytest.raises(ValueError, match=r"expected test rows x \[n, 3\]"):
        training.evaluate_splits(model, {"val": (x, y), "test": (x[:0], y[:0])})
    with pytest.raises(TypeError, match="expected SplitModel"):
        evaluate(model.mlp, x, y)
    assert evaluate(model, x.double(), y.double()) == evaluate(model, x, y)


def test_a_trainable_quantizer_whose_parameters_are_frozen_trains_as_a_fixed_one():
    x, y = tiny_data(200, 2)
    thresholds = QuantizerContext.from_training_rows(x, 3).quantile
    frozen = BwSQQuantizer(thresholds)
    frozen.thresholds.requires_grad_(False)
    torch.manual_seed(0)
    mlp = MLP(14, 4, 2, 0.2)
    models = [SplitModel(frozen, mlp), SplitModel(BwSQQuantizer(thresholds, trainable=False), copy.deepcopy(mlp))]
    plain = copy.deepcopy(models)
    losses = [train_models([model], x, y, SETTING, seed=5)[0] for model in models]
    assert losses[0] == losses[1]  # on the hard thermometer codes, not soft ones at tau = 1
    assert evaluate(models[0], x, y) == evaluate(models[1], x, y)
    plain_losses = []
    for model in plain:  # the plain loop too (its dropout draws from torch's global generator)
        torch.manual_seed(1)
        plain_losses.append(train_model(model, x, y, SETTING, seed=5))
    assert plain_losses[0] == plain_losses[1]
    assert evaluate(plain[0], x, y) == evaluate(plain[1], x, y)


def test_run_methods_names_what_is_wrong():
    x, y = tiny_data(100, 3)
    with pytest.raises(TypeError, match=r"a list of method names, e.g. \['FP'\], not a string"):
        run_methods("FP", {"FP": SETTING}, (x, y), {}, bits=3, seed=0)
    with pytest.raises(ValueError, match="unknown method 'BwSQ'; choose from"):
        run_methods(["BwSQ"], {"BwSQ": SETTING}, (x, y), {}, bits=3, seed=0)
    with pytest.raises(ValueError, match="settings has no setting for Bw-SQ"):
        run_methods(["FP", "Bw-SQ"], {"FP": SETTING}, (x, y), {}, bits=3, seed=0)


def test_a_loaded_model_is_ready_for_inference_and_checks_its_raw_rows(tiny_run, tmp_path):
    results, *_ = tiny_run
    path = tmp_path / "model.pt"
    save_model(saved(results["Bw-SQ"], "Bw-SQ", 3), path)
    loaded = load_model(path)
    assert not loaded.model.training and loaded.model.quantizer.hard
    rows = torch.randn(50, 3)
    assert torch.equal(loaded.model(rows), loaded.model(rows))  # no dropout
    assert torch.equal(loaded.model(rows), loaded.model.cloud(loaded.model.edge(rows)))
    for raw in (np.zeros(3), np.zeros((5, 2)), np.zeros((5, 4))):
        with pytest.raises(ValueError, match=r"expected raw rows \[n, 3\] \(columns f0, f1, f2\)"):
            loaded.predict(raw)


def test_cloud_refuses_indices_a_device_could_not_have_sent():
    x, _ = tiny_data(50, 3)
    model = build_model(METHODS["Bw-SQ"], SETTING, QuantizerContext.from_training_rows(x, 3))
    model.eval()
    index = model.edge(x)
    for bad, message in [
        (index.float(), r"expected integer indices \[n, 3\], got torch.float32"),
        (index[:, :2], r"expected integer indices \[n, 3\], got torch.int64 \(50, 2\)"),
        (index + 1, r"indices must lie in 0..7 at 3 bits, got 1..8"),
        (index - 1, r"indices must lie in 0..7 at 3 bits, got -1..6"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.cloud(bad)
    model.set_hard(True)
    assert torch.equal(model.cloud(index.int()), model(x))
    for name in ("LSQ", "Pr-QQ", "LLT4"):  # narrow payload types: LSQ's levels are signed, Pr-QQ indexes a table
        other = build_model(METHODS[name], SETTING, QuantizerContext.from_training_rows(x, 3))
        other.eval()
        other.set_hard(True)
        for dtype in (torch.uint8, torch.int16):
            assert torch.equal(other.cloud(other.edge(x).to(dtype)), other(x))
