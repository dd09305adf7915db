"""The exported device encoder: C bytes equal Python's ``pack(model.edge(x))``, and the cloud
reproduces the saved model's hard-mode predictions from them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from data import holdout_split, load_dataset
from deployment.export import build_encoder, cloud_predict, export_encoder, main
from models import METHODS, QuantizerContext, SavedModel, Setting, build_model, load_model, run_methods, save_model
from quantization import LLTQuantizer, LSQQuantizer, threshold_ranks
from quantization.wire import pack, unpack, unpack_samples

D = 5  # odd, so most bit widths leave padding in the last byte
SETTING = Setting(0.0, 1e-3, 2, 8, 1, 0.01, 0.0)
X_MEAN = np.array([1.5, -2.0, 100.0, 0.0, 1e-3])
X_SCALE = np.array([0.3, 2.0, 50.0, 1.0, 1e-4])
C_PROGRAM = r"""
#include <stdio.h>
#include "encoder.h"
int main(void) {
    float x[BSQ_N_FEATURES];
    uint8_t payload[BSQ_PAYLOAD_BYTES];
    while (fread(x, sizeof(float), BSQ_N_FEATURES, stdin) == BSQ_N_FEATURES) {
        bsq_encode(x, payload);
        fwrite(payload, 1, BSQ_PAYLOAD_BYTES, stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def gcc() -> str:
    path = shutil.which("gcc")
    if path is None:
        pytest.skip("gcc is not on PATH, so the exported C encoder cannot be compiled")
    return path


def _perturbed_model(name: str, bits: int, seed: int) -> SavedModel:
    """An untrained model of ``name`` with randomised quantizer parameters (unsorted thresholds)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(400, D, generator=generator)
    model = build_model(METHODS[name], SETTING, QuantizerContext.from_training_rows(x, bits))
    quantizer = model.quantizer
    with torch.no_grad():
        if isinstance(quantizer, LSQQuantizer):
            quantizer.step_size.mul_(0.5 + torch.rand(D, generator=generator))
        elif isinstance(quantizer, LLTQuantizer):
            quantizer.logits.copy_(torch.randn(quantizer.logits.shape, generator=generator))
            quantizer.log_scale.copy_(0.3 * torch.randn(D, generator=generator))
        elif quantizer.trainable:
            quantizer.thresholds.add_(0.5 * torch.randn(quantizer.thresholds.shape, generator=generator))
            quantizer.thresholds[0, 1] = quantizer.thresholds[0, 0]  # a tie
    names = [f"sensor {i}" for i in range(D)]
    return SavedModel(model, name, bits, SETTING, names, X_MEAN, X_SCALE, 0.25, 3.0, "toy")


def _naive_boundaries(saved: SavedModel) -> np.ndarray:
    """Where the index changes in exact arithmetic, in raw units: [d, K] float64."""
    quantizer = saved.model.quantizer
    if isinstance(quantizer, LSQQuantizer):
        z = (np.arange(quantizer.q_min, quantizer.q_max) + 0.5) * quantizer.step_size.detach().double().numpy()[:, None]
    elif isinstance(quantizer, LLTQuantizer):
        steps = quantizer.table_size - 1
        u = (np.arange(steps) + 0.5) / (steps / 2) - 1
        z = u * quantizer.log_scale.detach().double().exp().numpy()[:, None]
    else:
        z = quantizer.thresholds.detach().double().numpy()
    return z * saved.x_scale[:, None] + saved.x_mean[:, None]


def _raw_samples(saved: SavedModel, exported: np.ndarray, seed: int) -> np.ndarray:
    """Raw float32 rows [n, d]: random values, every float32 within 3 steps of each boundary, extremes."""
    rng = np.random.default_rng(seed)
    boundaries = np.concatenate([_naive_boundaries(saved).astype(np.float32), exported], axis=1)  # [d, K]
    around = (boundaries.view(np.int32)[..., None] + np.arange(-3, 4, dtype=np.int32)).view(np.float32)
    around = around.reshape(D, -1).T  # [K * 7, d]
    around = np.where(np.isfinite(around), around, np.float32(0))
    typical = X_MEAN + X_SCALE * 3 * rng.standard_normal((500, D))
    big = np.finfo(np.float32).max
    extremes = np.array([-np.inf, -big, -1e30, -0.0, 0.0, 1e30, big, np.inf])
    rows = [around, typical, np.repeat(extremes[:, None], D, axis=1)]
    return rng.permutation(np.concatenate(rows).astype(np.float32))


def _c_encode(gcc: str, header_dir: Path, raw: np.ndarray) -> bytes:
    """Compile a reader around ``encoder.h`` and encode ``raw`` [n, d] float32 with it."""
    source, program = header_dir / "encode.c", header_dir / "encode"
    source.write_text(C_PROGRAM)
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    subprocess.run([gcc, *flags, "-I", str(header_dir), str(source), "-o", str(program)], check=True)
    encoded = subprocess.run([str(program)], input=raw.astype(np.float32).tobytes(), capture_output=True, check=True)
    return encoded.stdout


def _python_indices(saved: SavedModel, raw: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return saved.model.edge(saved.standardize(raw)).numpy()


def _hard_output(saved: SavedModel, raw: np.ndarray) -> torch.Tensor:
    saved.model.eval()
    saved.model.set_hard(True)
    with torch.inference_mode():
        return saved.model(saved.standardize(raw))


def _check_deployment(gcc: str, original: SavedModel, path: Path, out: Path, seed: int) -> None:
    """Export the file ``path`` that ``original`` was saved to, encode with C, decode in the cloud
    from the reloaded file: bytes and predictions equal those of the original (never reloaded) model."""
    assert main([str(path), "--out", str(out)]) == 0
    exported = np.array(json.loads((out / "encoder.json").read_text())["thresholds"], dtype=np.float32)
    raw = _raw_samples(original, exported, seed)
    # expectations from the object that was saved, before anything is read back
    indices = _python_indices(original, raw)
    expected = _hard_output(original, raw)
    finite = np.isfinite(raw).all(axis=1)
    expected_raw_units = original.predict(raw[finite])
    size = -(-D * original.bits // 8)
    c_bytes = _c_encode(gcc, out, raw)
    assert len(c_bytes) == raw.shape[0] * size
    messages = [c_bytes[i : i + size] for i in range(0, len(c_bytes), size)]
    assert messages == [pack(row[None], original.bits) for row in indices]
    received = np.concatenate([unpack(message, original.bits, D) for message in messages])
    assert np.array_equal(received, indices)
    assert np.array_equal(unpack_samples(c_bytes, original.bits, D), indices)  # the device program's whole output
    cloud = load_model(path)  # the server's copy
    assert (cloud.method, cloud.bits, cloud.feature_names) == (original.method, original.bits, original.feature_names)
    cloud.model.set_hard(False)  # the cloud must not depend on the mode flag
    with torch.inference_mode():
        assert torch.equal(cloud.model.cloud(torch.from_numpy(received)), expected)
    assert np.array_equal(cloud_predict(cloud, pack(indices, cloud.bits)), expected.numpy())
    assert np.array_equal(cloud_predict(cloud, c_bytes, per_sample=True), expected.numpy())
    raw_units = cloud_predict(cloud, pack(indices[finite], cloud.bits), raw_units=True)
    assert np.array_equal(raw_units, expected_raw_units)


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("Bw-SQ", 3), ("Bw-SQ", 8), ("SQ", 5), ("Bw-QQ", 4), ("Pr-QQ", 2),
        ("LSQ", 3), ("LSQ", 8), ("LLT4", 2), ("LLT9", 6),
    ],
)
def test_saved_model_round_trip(gcc: str, tmp_path: Path, name: str, bits: int) -> None:
    saved = _perturbed_model(name, bits, seed=bits)
    if name in ("Bw-SQ", "SQ"):
        thresholds = saved.model.quantizer.thresholds.detach()
        assert (thresholds.diff(dim=-1) < 0).any(), "the test needs unsorted thresholds"
    save_model(saved, tmp_path / "model.pt")
    _check_deployment(gcc, saved, tmp_path / "model.pt", tmp_path / "encoder", seed=bits)


def test_trained_models(gcc: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(700, D)
    y = x[:, 0] * x[:, 1] + x[:, 2].sin()
    results = run_methods(["Bw-SQ", "LLT4"], {"Bw-SQ": SETTING, "LLT4": SETTING}, (x, y), {"val": (x, y)}, 3, 42)
    for name, result in results.items():
        saved = SavedModel(result.model, name, 3, SETTING, list("abcde"), X_MEAN, X_SCALE, 0.0, 1.0)
        save_model(saved, tmp_path / f"{name}.pt")
        _check_deployment(gcc, saved, tmp_path / f"{name}.pt", tmp_path / name, seed=1)


@pytest.mark.parametrize("name,bits", [("Bw-QQ", 2), ("Pr-QQ", 8), ("Bw-MQ", 8)])
def test_device_sends_the_indices_the_model_was_trained_on(shared_dir: Path, name: str, bits: int) -> None:
    """wine_quality's decimal values are tied (0.23 on 200 rows), so quantile thresholds fall on them;
    the raw rows rounded to float32, as a device holds them, must get the pipeline's indices."""
    data = load_dataset("wine_quality", shared_dir / "datasets")
    splits = holdout_split(data.x, data.y, seed=42)
    raw_train, raw_test = train_test_split(data.x, test_size=0.1, random_state=42)  # the same rows, unscaled
    train_x, test_x = splits.tensors("cpu")["train"][0], splits.tensors("cpu")["test"][0]
    model = build_model(METHODS[name], SETTING, QuantizerContext.from_training_rows(train_x, bits))
    saved = SavedModel(model, name, bits, SETTING, data.feature_names, splits.x_scaler.mean_,
                       splits.x_scaler.scale_, 0.0, 1.0, "wine_quality")
    encoder = build_encoder(saved)
    for raw, x in ((raw_train, train_x), (raw_test, test_x)):
        assert np.array_equal(encoder.indices(raw.astype(np.float32)), model.edge(x).numpy())


def test_threshold_encoding_matches_python_exactly(tmp_path: Path) -> None:
    """The numpy twin of the C rule (also on NaN), and the raw thresholds beside ``t * scale + mean``."""
    saved = _perturbed_model("Bw-SQ", 4, seed=3)
    encoder = build_encoder(saved)
    raw = _raw_samples(saved, encoder.thresholds, seed=3)
    raw[::7, 2] = np.nan
    assert np.array_equal(encoder.indices(raw), _python_indices(saved, raw))
    thresholds = saved.model.quantizer.thresholds.detach().double().numpy()
    naive = thresholds * X_SCALE[:, None] + X_MEAN[:, None]
    # within the rounding of the standardized value (a float32 step of t, in raw units) and of the raw value
    float32_step = np.spacing(np.abs(thresholds).astype(np.float32))
    tolerance = X_SCALE[:, None] * float32_step + np.spacing(np.abs(naive).astype(np.float32))
    assert (np.abs(encoder.thresholds - naive) <= tolerance).all()
    assert np.array_equal(encoder.ranks, threshold_ranks(saved.model.quantizer.thresholds.detach()).numpy())


def test_encoder_json(tmp_path: Path) -> None:
    saved = _perturbed_model("SQ", 3, seed=5)
    save_model(saved, tmp_path / "sq.pt")
    assert main([str(tmp_path / "sq.pt"), "--out", str(tmp_path / "out")]) == 0
    content = _strict_json((tmp_path / "out" / "encoder.json").read_text())
    assert content["method"] == "SQ" and content["bits"] == 3 and content["model_file"] == "sq.pt"
    assert content["features"] == saved.feature_names and content["payload_bytes_per_sample"] == 2
    assert content["format"] == "bsq-encoder/1" and content["dataset"] == "toy" and content["n_features"] == D
    # the model's standardization, as given to SavedModel (exact: JSON floats round-trip float64)
    assert content["x_mean"] == [1.5, -2.0, 100.0, 0.0, 1e-3]
    assert content["x_scale"] == [0.3, 2.0, 50.0, 1.0, 1e-4]
    # the documented device rule and wire layout (README, "Deploying the encoder")
    assert content["encoding"] == (
        "index of feature f = number of k with x_f > thresholds[f][k], x_f the raw value as float32 "
        "(strict >, NaN gives 0); thresholds are exact float32 values, the string \"Infinity\" (JSON has no "
        "infinity) where no value reaches the level, \"-Infinity\" where every value above -infinity does"
    )
    assert content["bit_order"] == (
        "one sample = the indices of features 0..d-1 in order, each written with `bits` bits most significant "
        "bit first, concatenated and cut into bytes most significant bit first, the last byte zero-padded "
        "(np.packbits of the row-major bit matrix, quantization.wire.pack)"
    )
    thresholds = np.array(content["thresholds"])
    assert thresholds.shape == (D, 7) and np.array_equal(thresholds.astype(np.float32), thresholds)
    assert np.array_equal(content["ranks"], threshold_ranks(saved.model.quantizer.thresholds.detach()).numpy())
    header = (tmp_path / "out" / "encoder.h").read_text()
    assert "#define BSQ_PAYLOAD_BYTES 2" in header and "sensor 4" in header


def _strict_json(text: str) -> dict:
    """Parse as strict JSON: Python's json accepts the non-standard NaN and Infinity, other readers do not."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_llt_unreached_level_is_infinite(tmp_path: Path) -> None:
    saved = _perturbed_model("LLT4", 3, seed=7)
    encoder = build_encoder(saved)
    assert np.isposinf(encoder.thresholds[:, -1]).all()  # LLT uses levels 0..2**bits - 2 only
    assert np.array_equal(encoder.ranks, np.tile(np.arange(7), (D, 1)))
    json_path, _ = export_encoder(saved, tmp_path)
    thresholds = _strict_json(json_path.read_text())["thresholds"]
    assert [row[-1] for row in thresholds] == ["Infinity"] * D
    # the device rule read back from the JSON (float("Infinity") is +inf) gives the model's indices
    rule = np.array([[float(v) for v in row] for row in thresholds], dtype=np.float32)
    raw = _raw_samples(saved, encoder.thresholds, seed=7)
    raw[:4, 0] = [np.inf, -np.inf, np.nan, np.finfo(np.float32).max]
    assert np.array_equal((raw[..., None] > rule).sum(axis=-1), _python_indices(saved, raw))


def test_full_precision_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build_model(METHODS["FP"], SETTING, QuantizerContext.placeholder(3, D))
    save_model(SavedModel(model, "FP", 3, SETTING, list("abcde"), X_MEAN, X_SCALE, 0.0, 1.0), tmp_path / "fp.pt")
    assert main([str(tmp_path / "fp.pt"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "error: a full-precision model sends float features; nothing to export"
    assert not (tmp_path / "out").exists()


def test_unexportable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.pt does not exist; pass a .pt file written by --save_models" in capsys.readouterr().err
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    assert main([str(tmp_path / "results.csv"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "results.csv is not a model file saved by this project" in error and "weights_only" not in error
    assert len(error.splitlines()) == 1
    saved = _perturbed_model("LSQ", 3, seed=2)
    with torch.no_grad():
        saved.model.quantizer.step_size[1] = -saved.model.quantizer.step_size[1]
    with pytest.raises(ValueError, match="LSQ index of this model is not monotone"):
        export_encoder(saved, tmp_path / "out")
    saved.x_scale = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="x_scale must be finite and positive"):
        build_encoder(saved)


def test_cloud_predict_evaluates_a_model_trained_with_dropout(tmp_path: Path) -> None:
    """A reloaded model may be in training mode; cloud_predict switches dropout off (eval mode, as every evaluation)."""
    setting = Setting(0.0, 1e-3, 2, 16, 1, 0.01, 0.5)
    gen = torch.Generator().manual_seed(3)
    model = build_model(METHODS["Bw-SQ"], setting,
                        QuantizerContext.from_training_rows(torch.randn(400, D, generator=gen), 3))
    saved = SavedModel(model, "Bw-SQ", 3, setting, [f"sensor {i}" for i in range(D)], X_MEAN, X_SCALE, 0.25, 3.0, "toy")
    save_model(saved, tmp_path / "model.pt")
    raw = (X_MEAN + X_SCALE * np.random.default_rng(0).standard_normal((300, D))).astype(np.float32)
    with torch.inference_mode():
        indices = saved.model.edge(saved.standardize(raw)).numpy()
    expected = saved.predict(raw)  # eval mode, hard quantization, raw units
    cloud = load_model(tmp_path / "model.pt")
    cloud.model.train()  # whatever mode the server's copy is in
    payload = pack(indices, 3)
    np.testing.assert_array_equal(cloud_predict(cloud, payload, raw_units=True), expected)
    cloud.model.train()  # the standardized output too
    np.testing.assert_allclose(cloud_predict(cloud, payload), (expected - 0.25) / 3.0, rtol=1e-6, atol=1e-6)


def test_a_level_every_value_reaches_is_minus_infinity_in_strict_json(tmp_path: Path) -> None:
    saved = _perturbed_model("Bw-QQ", 3, seed=3)
    saved.x_scale = X_SCALE.copy()
    saved.x_scale[0] = 1e39  # the lowest thresholds of feature 0 lie below -3.4e38, the lowest float32, in raw units
    below = (saved.model.quantizer.thresholds[0].double() * 1e39 + X_MEAN[0] < -np.finfo(np.float32).max).sum().item()
    json_path, _ = export_encoder(saved, tmp_path)
    thresholds = _strict_json(json_path.read_text())["thresholds"]
    assert below and thresholds[0].count("-Infinity") == below
    encoder = build_encoder(saved)
    lowest = np.full((2, D), X_MEAN.astype(np.float32))
    lowest[:, 0] = [-np.inf, -np.finfo(np.float32).max]
    assert encoder.indices(lowest)[:, 0].tolist() == [0, below]  # -inf exceeds nothing, every finite value those levels


def test_feature_names_cannot_open_a_comment_in_the_header(tmp_path: Path) -> None:
    saved = _perturbed_model("Bw-SQ", 3, seed=4)
    saved.feature_names = ["a /* b", "c */ d", "e", "f", "g"]
    _, header_path = export_encoder(saved, tmp_path)
    header = header_path.read_text()
    assert "/* 0: a / * b */" in header and "/* 1: c * / d */" in header


def test_a_payload_must_be_bytes_not_an_array_of_byte_values() -> None:
    saved = _perturbed_model("LLT4", 3, seed=5)
    payload = pack(np.random.default_rng(0).integers(0, 7, (4, D)), 3)
    expected = cloud_predict(saved, payload)
    assert np.array_equal(cloud_predict(saved, np.frombuffer(payload, np.uint8)), expected)
    assert np.array_equal(cloud_predict(saved, bytearray(payload)), expected)
    with pytest.raises(TypeError, match="a payload must be bytes .* got items of 8 bytes"):
        cloud_predict(saved, np.array(list(payload)))  # int64 byte values: read as memory, 8x the samples
    with pytest.raises(ValueError, match="n_samples is for one packed stream"):
        cloud_predict(saved, payload, n_samples=4, per_sample=True)
    with pytest.raises(ValueError, match="n_samples must be a whole number >= 0, got 4.5"):
        unpack(payload, 3, D, n_samples=4.5)


def test_cloud_predict_refuses_an_index_llt_cannot_send() -> None:
    """3 bits carry 0..7, but LLT at 3 bits sends 0..6: 7 would decode to 1.33 times the scale."""
    saved = _perturbed_model("LLT4", 3, seed=6)
    index = np.random.default_rng(1).integers(0, 7, (4, D))
    index[2, 1] = 7
    with pytest.raises(ValueError, match=r"indices must lie in 0..6 at 3 bits, got 0..7: the payload is damaged"):
        cloud_predict(saved, pack(index, 3))
