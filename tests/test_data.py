"""Tests of data/: the dataset registry and loader and the splits of tuning and best-setting runs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import make_friedman1
from sklearn.model_selection import KFold, train_test_split

from core import atomic
from data import (
    DATASETS,
    PAPER_DATASETS,
    DatasetError,
    get_info,
    holdout_split,
    load_dataset,
    standardize,
    tuning_folds,
)
from data import datasets as datasets_module
from data.datasets import write_dataset_file


@pytest.fixture(scope="module")
def manifest(shared_dir):
    path = shared_dir / "datasets" / "manifest.json"
    if not path.exists():
        pytest.skip(f"no manifest at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def datasets_dir(shared_dir):
    return shared_dir / "datasets"


def available(manifest, datasets_dir):
    return [n for n, e in manifest.items() if e["available"] and (datasets_dir / f"{n}.csv.gz").exists()]


def small_file(manifest, datasets_dir):
    """The smallest available dataset file (fast to copy and break)."""
    names = available(manifest, datasets_dir)
    if not names:
        pytest.skip("no offline dataset file")
    return min(names, key=lambda n: (datasets_dir / f"{n}.csv.gz").stat().st_size)


# =========================================================================== registry and loader
def test_registry_matches_spec():
    spec = {
        "california": (44025, 20640, 8, "price"),
        "cpu_act": (197, 8192, 21, "usr"),
        "fried": (564, 40768, 10, None),
        "sulfur": (23515, 10081, 6, "y1"),
        "superconduct": (43174, 21263, 81, "critical_temp"),
        "wine_quality": (287, 6497, 11, "quality"),
    }
    for name, (openml_id, rows, features, target) in spec.items():
        info = DATASETS[name]
        assert (info.openml_id, info.n_rows, info.n_features, info.openml_version) == (openml_id, rows, features, 1)
        if target is not None:
            assert info.target == target
    assert set(PAPER_DATASETS) == set(spec)
    assert PAPER_DATASETS == ("california", "fried", "superconduct", "cpu_act", "sulfur", "wine_quality")
    assert DATASETS["friedman1"].openml_id is None and not DATASETS["friedman1"].offline_copy  # generated


def test_registry_matches_manifest(manifest):
    for name, entry in manifest.items():
        info = DATASETS[name]
        assert info.openml_id == entry["openml_id"], name
        assert info.openml_version == entry["openml_version"], name
        assert info.target == entry["target"], name
        assert (info.n_rows, info.n_features) == (entry["n_rows"], entry["n_features"]), name
        assert info.sha256 == entry["sha256"], name
        assert info.offline_copy == entry["available"], name


def test_loader_on_every_available_file(manifest, datasets_dir):
    names = available(manifest, datasets_dir)
    assert names, "the shared bundle has no dataset file"
    for name in names:
        entry = manifest[name]
        path = datasets_dir / f"{name}.csv.gz"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        ds = load_dataset(name, datasets_dir)
        assert ds.name == name
        assert ds.x.shape == (entry["n_rows"], entry["n_features"]), name
        assert ds.y.shape == (entry["n_rows"],), name
        assert ds.x.dtype == np.float64 and ds.y.dtype == np.float64
        assert len(ds.feature_names) == entry["n_features"]
        # independent read of the same file: features then the target last
        frame = pd.read_csv(path, compression="gzip")
        assert list(frame.columns[:-1]) == ds.feature_names and frame.columns[-1] == entry["target"]
        np.testing.assert_array_equal(ds.x, frame.iloc[:, :-1].to_numpy(dtype=np.float64))
        np.testing.assert_array_equal(ds.y, frame.iloc[:, -1].to_numpy(dtype=np.float64))


def test_default_scratch_from_environment(manifest, datasets_dir, monkeypatch, tmp_path):
    name = small_file(manifest, datasets_dir)
    info = DATASETS[name]
    # a copy that differs from the shared one (in x[0, 0] and y[0]), accepted through its sidecar
    frame = pd.read_csv(datasets_dir / info.file_name, compression="gzip")
    frame.iloc[0, 0] = 12345
    frame.iloc[0, -1] = -6789
    write_dataset_file(frame, tmp_path / info.file_name)
    monkeypatch.setenv("BSQ_SCRATCH", str(tmp_path))
    assert datasets_module.default_scratch() == tmp_path
    ds = load_dataset(name)  # no scratch argument: $BSQ_SCRATCH
    assert (ds.x[0, 0], ds.y[0]) == (12345, -6789)
    np.testing.assert_array_equal(ds.x, frame.iloc[:, :-1].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(ds.y, frame.iloc[:, -1].to_numpy(dtype=np.float64))
    # unset or empty: the shared folder beside the checkout, which holds the unmodified copy
    monkeypatch.setenv("BSQ_SCRATCH", "")
    assert datasets_module.default_scratch() == datasets_module.SHARED_DATASETS == datasets_dir
    monkeypatch.delenv("BSQ_SCRATCH")
    assert datasets_module.default_scratch() == datasets_dir
    assert load_dataset(name).x[0, 0] != 12345


def test_friedman1_is_generated_locally(tmp_path):
    x, y = make_friedman1(n_samples=40768, n_features=10, noise=1.0, random_state=0)
    ds = load_dataset("friedman1", tmp_path)  # an empty folder: nothing is read or downloaded
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.feature_names == [f"X{i}" for i in range(1, 11)]
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_dataset("housing", tmp_path)
    for name in DATASETS:
        assert name in str(error.value)
    with pytest.raises(DatasetError):
        get_info("CALIFORNIA")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_file_is_refused(manifest, datasets_dir, tmp_path, damage):
    name = small_file(manifest, datasets_dir)
    target = tmp_path / f"{name}.csv.gz"
    content = bytearray((datasets_dir / f"{name}.csv.gz").read_bytes())
    if damage == "flip":
        middle = len(content) // 2
        for i in range(middle, middle + 8):
            content[i] ^= 0xFF
    else:
        content = content[: len(content) // 3]
    target.write_bytes(bytes(content))
    with pytest.raises(DatasetError, match=str(target).replace(".", r"\.")):
        load_dataset(name, tmp_path)


def test_unreadable_file_with_matching_sidecar_is_refused(tmp_path):
    # the checksum matches (sidecar), but the content is not a gzip CSV
    path = tmp_path / "cpu_act.csv.gz"
    path.write_bytes(b"\x00\x01 definitely not gzip")
    (tmp_path / "cpu_act.csv.gz.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    with pytest.raises(DatasetError, match="cpu_act.csv.gz"):
        load_dataset("cpu_act", tmp_path)


def test_wrong_shape_file_is_refused(tmp_path):
    info = DATASETS["wine_quality"]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(50, info.n_features)), columns=[f"c{i}" for i in range(info.n_features)])
    frame[info.target] = rng.normal(size=50)
    path = tmp_path / info.file_name
    write_dataset_file(frame, path)
    with pytest.raises(DatasetError, match="wine_quality.csv.gz") as error:
        load_dataset("wine_quality", tmp_path)
    assert "50 rows" in str(error.value)
    # right shape, wrong target column name
    frame = pd.DataFrame(rng.normal(size=(info.n_rows, info.n_features + 1)))
    frame.columns = [f"c{i}" for i in range(info.n_features)] + ["not_the_target"]
    write_dataset_file(frame, path)
    with pytest.raises(DatasetError) as error:
        load_dataset("wine_quality", tmp_path)
    message = str(error.value)
    assert "ending in 'not_the_target'" in message  # the offending column
    assert "ending in the target 'quality'" in message  # the one wine_quality must end in
    assert f"{info.n_rows} rows x {info.n_features + 1} columns" in message


def test_written_file_is_accepted(manifest, datasets_dir, tmp_path):
    name = small_file(manifest, datasets_dir)
    info = DATASETS[name]
    reference = load_dataset(name, datasets_dir)
    # a modified copy (other checksum than the registry's) written by the project's writer
    x = reference.x.copy()
    x[0, 0] += 1.25
    frame = pd.DataFrame(x, columns=reference.feature_names)
    frame[info.target] = reference.y
    path = tmp_path / info.file_name
    write_dataset_file(frame, path)
    sidecar = tmp_path / f"{info.file_name}.sha256"
    assert sidecar.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert gzip.decompress(path.read_bytes()).startswith(",".join(reference.feature_names).encode())
    ds = load_dataset(name, tmp_path)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, reference.y)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # without the sidecar the modified file no longer matches the reference checksum
    sidecar.unlink()
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset(name, tmp_path)


def test_missing_file_offline_says_where_to_put_it(tmp_path):
    """The real OpenML client: without internet it fails fast and the message says what to do."""
    try:
        ds = load_dataset("fried", tmp_path)
    except DatasetError as error:
        message = str(error)
        assert "fried.csv.gz" in message and str(tmp_path) in message
        assert not (tmp_path / "fried.csv.gz").exists()
    else:  # a machine with internet access: the download is cached for the next run
        assert ds.x.shape == (40768, 10)
        assert (tmp_path / "fried.csv.gz").exists()


def test_superconduct_must_come_from_openml(tmp_path):
    try:
        ds = load_dataset("superconduct", tmp_path)
    except DatasetError as error:
        message = str(error)
        assert "OpenML" in message and "43174" in message
        assert "superconduct.csv.gz" in message and str(tmp_path) in message
    else:  # a machine with internet access
        assert ds.x.shape == (21263, 81)


def unreachable(info):
    raise ConnectionError("no route to host")


def test_unreachable_openml_messages(tmp_path, monkeypatch):
    """The same error paths, independently of this machine's network."""
    monkeypatch.setattr(datasets_module, "fetch_openml_frame", unreachable)
    with pytest.raises(DatasetError) as error:
        load_dataset("fried", tmp_path)
    message = str(error.value)
    assert "fried.csv.gz" in message and str(tmp_path) in message and "ConnectionError" in message
    assert "must come from OpenML" not in message
    with pytest.raises(DatasetError) as error:
        load_dataset("superconduct", tmp_path / "nested")
    message = str(error.value)
    assert "must come from OpenML" in message and "43174" in message
    assert str(tmp_path / "nested") in message
    assert list(tmp_path.iterdir()) == []


def test_superconduct_placed_by_hand_is_read(tmp_path, monkeypatch):
    """Doing what the offline message says: a file of the right shape (no checksum exists for it)."""
    monkeypatch.setattr(datasets_module, "fetch_openml_frame", unreachable)
    info = DATASETS["superconduct"]
    frame = pd.DataFrame(np.zeros((info.n_rows, info.n_features + 1)),
                         columns=[*map(str, range(info.n_features)), info.target])
    frame.to_csv(tmp_path / info.file_name, index=False)
    assert load_dataset("superconduct", tmp_path).x.shape == (info.n_rows, info.n_features)
    frame.iloc[:-1].to_csv(tmp_path / info.file_name, index=False)
    with pytest.raises(DatasetError, match="has 21262 rows"):
        load_dataset("superconduct", tmp_path)


@pytest.mark.parametrize("cell, shown", [("abc", "'abc'"), ("", "an empty cell (NaN)"), ("NaN", "an empty cell (NaN)"),
                                         ("inf", "inf"), ("-1e400", "-inf")])
def test_a_cell_that_is_no_finite_number_is_named(tmp_path, monkeypatch, cell, shown):
    """A file placed by hand (superconduct has no checksum) with one bad cell: its file, column and line are named."""
    monkeypatch.setattr(datasets_module, "fetch_openml_frame", unreachable)
    info = DATASETS["superconduct"]
    columns = [*map(str, range(info.n_features)), info.target]
    frame = pd.DataFrame(np.ones((info.n_rows, info.n_features + 1)), columns=columns).astype(object)
    frame.iat[100, 5] = cell
    frame.to_csv(tmp_path / info.file_name, index=False)
    message = (f"{tmp_path / info.file_name} has {shown} in column '5' on line 102, where every cell must be a finite "
               "number: repair that cell, or delete the file to download it again")
    with pytest.raises(DatasetError) as error:
        load_dataset("superconduct", tmp_path)
    assert str(error.value) == message


def test_a_download_with_missing_values_is_refused(tmp_path, monkeypatch):
    """OpenML marks a missing value as NaN; the file written from the download is refused like one placed by hand."""
    info = DATASETS["cpu_act"]
    columns = [*map(str, range(info.n_features)), info.target]
    frame = pd.DataFrame(np.ones((info.n_rows, info.n_features + 1)), columns=columns)
    frame.iat[0, info.n_features] = np.nan  # the target of the first row
    monkeypatch.setattr(datasets_module, "fetch_openml_frame", lambda requested: frame)
    with pytest.raises(DatasetError, match="has an empty cell \\(NaN\\) in column 'usr' on line 2, where every cell"):
        load_dataset("cpu_act", tmp_path)


def test_download_writes_the_cache_file(tmp_path, monkeypatch):
    """A successful fetch is written atomically (with its checksum) and read back."""
    info = DATASETS["wine_quality"]
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(np.round(rng.normal(size=(info.n_rows, info.n_features)), 3),
                         columns=[f"f{i}" for i in range(info.n_features)])
    frame[info.target] = rng.integers(3, 9, size=info.n_rows).astype(float)
    calls = []

    def fetch(requested):
        calls.append(requested.name)
        return frame

    monkeypatch.setattr(datasets_module, "fetch_openml_frame", fetch)
    scratch = tmp_path / "cache"
    ds = load_dataset("wine_quality", scratch)
    assert calls == ["wine_quality"]
    assert (scratch / "wine_quality.csv.gz").exists() and (scratch / "wine_quality.csv.gz.sha256").exists()
    np.testing.assert_array_equal(ds.x, frame.iloc[:, :-1].to_numpy())
    np.testing.assert_array_equal(ds.y, frame.iloc[:, -1].to_numpy())
    load_dataset("wine_quality", scratch)  # second time: from the file, no download
    assert calls == ["wine_quality"]


# =========================================================================== splits
def synthetic(n: int = 1000, d: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.array([1.0, 5.0, 0.1]) + np.array([3.0, -2.0, 10.0])
    y = x @ np.array([1.0, 0.2, -3.0]) + rng.normal(size=n)
    return x, y


def test_tuning_folds_match_sklearn():
    x, y = synthetic()
    device_x = x.astype(np.float32).astype(np.float64)  # the raw values a device measures (float32)
    x_rest, x_test, y_rest, y_test = train_test_split(device_x, y, test_size=0.1, random_state=42)
    folds = list(KFold(n_splits=4, shuffle=True, random_state=42).split(x_rest))
    got = list(tuning_folds(x, y, 4))
    assert len(got) == 4
    for (train_rows, val_rows), split in zip(folds, got):
        assert list(split.parts) == ["train", "val", "test"]
        xt, yt = split.parts["train"]
        xv, yv = split.parts["val"]
        xs, ys = split.parts["test"]
        assert xt.shape == (len(train_rows), 3) and xv.shape == (len(val_rows), 3) and xs.shape == (100, 3)
        assert len(train_rows) + len(val_rows) == 900
        mean, std = x_rest[train_rows].mean(0), x_rest[train_rows].std(0)
        y_mean, y_std = y_rest[train_rows].mean(), y_rest[train_rows].std()
        np.testing.assert_allclose(xt, (x_rest[train_rows] - mean) / std, atol=1e-10)
        np.testing.assert_allclose(xv, (x_rest[val_rows] - mean) / std, atol=1e-10)
        np.testing.assert_allclose(yv, (y_rest[val_rows] - y_mean) / y_std, atol=1e-10)
        # the test part is the same rows in every fold (standardized with the fold's scaler)
        np.testing.assert_allclose(xs, (x_test - mean) / std, atol=1e-10)
        np.testing.assert_allclose(split.x_scaler.inverse_transform(xs), x_test, atol=1e-10)
        np.testing.assert_allclose(split.y_scaler.inverse_transform(ys[:, None])[:, 0], y_test, atol=1e-10)
        np.testing.assert_allclose(xt.mean(0), 0, atol=1e-10)
        np.testing.assert_allclose(xt.std(0), 1, atol=1e-10)
        assert abs(yt.mean()) < 1e-10 and abs(yt.std() - 1) < 1e-10


def test_tuning_folds_debug_two_folds():
    x, y = synthetic(101)
    got = list(tuning_folds(x, y, 2))
    assert len(got) == 2
    rest = 101 - 11  # sklearn: ceil(0.1 * 101) = 11 test rows
    assert sorted(len(s.parts["train"][0]) for s in got) == [rest // 2, rest - rest // 2]
    assert all(len(s.parts["test"][0]) == 11 for s in got)


def test_holdout_split_matches_sklearn_and_depends_on_seed():
    x, y = synthetic()
    device_x = x.astype(np.float32).astype(np.float64)  # the raw values a device measures (float32)
    for seed in (42, 43):
        x_train, x_test, y_train, y_test = train_test_split(device_x, y, test_size=0.1, random_state=seed)
        split = holdout_split(x, y, seed)
        assert list(split.parts) == ["train", "test"]
        mean, std = x_train.mean(0), x_train.std(0)
        np.testing.assert_allclose(split.parts["train"][0], (x_train - mean) / std, atol=1e-10)
        np.testing.assert_allclose(split.parts["test"][0], (x_test - mean) / std, atol=1e-10)
        np.testing.assert_allclose(split.parts["test"][1], (y_test - y_train.mean()) / y_train.std(), atol=1e-10)
    a, b = holdout_split(x, y, 42), holdout_split(x, y, 43)
    assert not np.array_equal(a.parts["test"][0], b.parts["test"][0])
    assert not np.array_equal(a.parts["train"][1], b.parts["train"][1])
    default = holdout_split(x, y)
    np.testing.assert_array_equal(default.parts["test"][0], a.parts["test"][0])


def test_standardize_and_tensors(device):
    x, y = synthetic(200)
    split = standardize((x[:150], y[:150]), val=(x[150:], y[150:]))
    tensors = split.tensors(device)
    assert list(tensors) == ["train", "val"]
    for name, (xt, yt) in tensors.items():
        assert xt.dtype == torch.float32 and yt.dtype == torch.float32
        assert xt.device.type == device and yt.device.type == device
        np.testing.assert_allclose(xt.cpu().numpy(), split.parts[name][0], rtol=1e-6, atol=1e-6)
    assert tensors["train"][0].shape == (150, 3) and tensors["val"][1].shape == (50,)


def test_holdout_split_on_a_real_dataset(manifest, datasets_dir):
    name = small_file(manifest, datasets_dir)
    ds = load_dataset(name, datasets_dir)
    split = holdout_split(ds.x, ds.y, 42)
    n = manifest[name]["n_rows"]
    n_test = int(np.ceil(0.1 * n))
    assert split.parts["test"][0].shape == (n_test, manifest[name]["n_features"])
    assert split.parts["train"][0].shape[0] == n - n_test
    xt = split.parts["train"][0]
    np.testing.assert_allclose(xt.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(xt.std(0), 1, atol=1e-8)


class _Stopped(Exception):
    """Raised by the test's SIGTERM handler."""


def _raise_stopped(signum, frame):
    raise _Stopped


def test_a_signal_during_a_write_takes_effect_after_it(tmp_path, monkeypatch):
    path = tmp_path / "result.csv"
    path.write_text("old\n")
    real_fsync = os.fsync

    def fsync_then_signal(fd):  # SIGTERM arrives in the middle of the write
        signal.raise_signal(signal.SIGTERM)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync_then_signal)
    other_thread_runs = threading.Event()  # a process with other threads (torch's, tqdm's) as well
    other_thread = threading.Thread(target=other_thread_runs.wait)
    other_thread.start()
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        with pytest.raises(_Stopped):
            atomic.atomic_write_text(path, "new\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
        other_thread_runs.set()
        other_thread.join()
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers of before are back


def test_a_later_write_removes_the_temporary_files_of_dead_writers_only(tmp_path):
    path = tmp_path / "result.csv"
    killed = (  # a writer killed outright (SIGKILL) in the middle of its write
        "import os, signal, sys; from core import atomic\n"
        "atomic.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic.atomic_write_text(sys.argv[1], 'half\\n')\n"
    )
    repo = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", killed, str(path)], cwd=repo).returncode == -signal.SIGKILL
    [left] = tmp_path.iterdir()
    assert left.name.startswith(f".result.csv.{atomic.MACHINE_TAG}-") and left.name.endswith(".tmp")
    old = time.time() - atomic.STALE_TEMPORARY_SECONDS - 60
    kept = {  # a live writer here (this process), a writer elsewhere, another file's temporary files
        f".result.csv.{atomic.MACHINE_TAG}-{os.getpid()}.abcd1234.tmp": None,
        ".result.csv.0123abcd-1.abcd1234.tmp": None,
        ".result.csv.abcd1234.tmp": None,  # from before writers were named: unknown
        f".result.csv.gz.{atomic.MACHINE_TAG}-{left.name.split('-')[1].split('.')[0]}.abcd1234.tmp": old,
        ".result.csv.x.abcd1234.tmp": old,
    }
    gone = {".result.csv.0123abcd-1.efgh5678.tmp": old, ".result.csv.efgh5678.tmp": old}  # untouched for 11 minutes
    for name, mtime in {**kept, **gone}.items():
        (tmp_path / name).write_text("half\n")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    atomic.atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "result.csv"])
