"""The regression datasets of the paper (six from OpenML): registry, local cache and OpenML.

``load_dataset(name, scratch)`` reads ``<scratch>/<name>.csv.gz`` (features, then the target
as the last column, the format of ``shared/datasets``); when the file is missing it downloads
the dataset with the ``openml`` client (numeric features only) and writes that file atomically,
so the next run is offline. ``friedman1`` is generated locally and needs neither.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_friedman1

from core.atomic import atomic_write_bytes, atomic_write_text
from core.schema import PAPER_DATASETS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
USER_CACHE = Path.home() / ".cache" / "bitwise-soft-quantization" / "datasets"


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: where the data comes from and what the file must look like."""

    name: str
    openml_id: int | None  # None: generated locally
    target: str
    n_rows: int
    n_features: int
    sha256: str | None = None  # of the reference copy in shared/datasets
    offline_copy: bool = True  # whether the shared bundle has a copy (False: from OpenML, or generated)
    openml_version: int = 1

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv.gz"


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("california", 44025, "price", 20640, 8,
                    "7f0786afe3d6929a280c8913d722f4f5c7b6ebb48228002379f5c0f63708e128"),
        DatasetInfo("cpu_act", 197, "usr", 8192, 21,
                    "2965b1827a573319e25eed5ad3af83798d86f84c89edecc23f428a8350dd8303"),
        # NOTE[DIFF]: fried's target is called Y here (OpenML's name could not be checked offline)
        DatasetInfo("fried", 564, "Y", 40768, 10, "b36501e8af72c45d8052303413a5445257d26dcc55392ebc60fd5f80f93a3d91"),
        DatasetInfo("sulfur", 23515, "y1", 10081, 6,
                    "45a077e35df5ba4fd3a146eedda15a17e9d24a64bf792203d8cd00208310c454"),
        DatasetInfo("superconduct", 43174, "critical_temp", 21263, 81, offline_copy=False),
        DatasetInfo("wine_quality", 287, "quality", 6497, 11,
                    "68e07faed4518373ab8bf6ee597e2ba2ea9c3429c738f94969e64a06b5e35a70"),
        DatasetInfo("friedman1", None, "Y", 40768, 10, offline_copy=False),
    ]
}
assert set(PAPER_DATASETS) <= set(DATASETS), "the paper's datasets stay registered: its result files name them"


@dataclass
class Dataset:
    """Numeric features and target of one dataset, in the source's row order."""

    name: str
    x: np.ndarray  # [n, d] float64
    y: np.ndarray  # [n] float64
    feature_names: list[str]


def default_scratch() -> Path:
    """``$BSQ_SCRATCH``, else the project's ``../shared/datasets`` if present, else a user cache."""
    if os.environ.get("BSQ_SCRATCH"):
        return Path(os.environ["BSQ_SCRATCH"])
    return SHARED_DATASETS if SHARED_DATASETS.is_dir() else USER_CACHE


def get_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``, or a DatasetError listing the known names."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, scratch: str | os.PathLike | None = None) -> Dataset:
    """Load ``name`` from ``scratch`` (default: :func:`default_scratch`), downloading it if missing."""
    info = get_info(name)
    if info.openml_id is None:
        return _friedman1(info)
    folder = Path(scratch) if scratch is not None else default_scratch()
    path = folder / info.file_name
    if not path.exists():
        _download(info, folder)
    return _read_checked(info, path)


def _friedman1(info: DatasetInfo) -> Dataset:
    x, y = make_friedman1(n_samples=info.n_rows, n_features=info.n_features, noise=1.0, random_state=0)
    return Dataset(info.name, x, y, [f"X{i + 1}" for i in range(info.n_features)])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# NOTE[DIFF]: files a user downloads get a .sha256 sidecar; a hand-placed file is checked by shape
def _read_checked(info: DatasetInfo, path: Path) -> Dataset:
    """Read a cached file and check checksum, shape, target column and that every cell is a finite number.

    The checksum is the reference copy's or the one written beside a download; a file placed by
    hand for a dataset without a reference copy (superconduct) is checked by shape and target only.
    """
    sidecar = path.with_name(path.name + ".sha256")
    accepted = {info.sha256} - {None} | ({sidecar.read_text().strip()} if sidecar.exists() else set())
    if accepted and _sha256(path) not in accepted:
        raise DatasetError(
            f"{path} does not match the checksum of the reference copy of {info.name}: "
            "delete it to download it again, or replace it with the file from shared/datasets"
        )
    try:
        frame = pd.read_csv(path, low_memory=False)  # one type per column (no DtypeWarning where a cell is text)
    except Exception as error:
        raise DatasetError(f"{path} is not a readable gzip CSV ({error}): delete it to download it again") from None
    expected = (info.n_rows, info.n_features + 1)
    if frame.shape != expected or frame.columns[-1] != info.target:
        raise DatasetError(
            f"{path} has {frame.shape[0]} rows x {frame.shape[1]} columns ending in {frame.columns[-1]!r}, "
            f"but {info.name} has {expected[0]} rows x {expected[1]} columns ending in the target {info.target!r}: "
            "delete it to download it again"
        )
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    wrong = np.argwhere(~np.isfinite(values))  # text, empty or NaN cells, +-inf: a file edited or fetched so
    if wrong.size:
        row, column = wrong[0]
        cell = frame.iat[row, column]
        shown = repr(cell) if isinstance(cell, str) else "an empty cell (NaN)" if pd.isna(cell) else str(cell)
        raise DatasetError(
            f"{path} has {shown} in column {frame.columns[column]!r} on line {row + 2}, where every cell must be a "
            "finite number: repair that cell, or delete the file to download it again"
        )
    return Dataset(info.name, values[:, :-1], values[:, -1], list(frame.columns[:-1]))


def _download(info: DatasetInfo, folder: Path) -> None:
    """Fetch ``info`` from OpenML and write ``<folder>/<name>.csv.gz`` (plus its checksum)."""
    where = (f"put {info.file_name} ({info.n_rows} rows, {info.n_features} features, target {info.target!r} last) "
             f"into {folder}")
    try:
        frame = fetch_openml_frame(info)
    except Exception as error:
        if not info.offline_copy:
            raise DatasetError(
                f"{info.name} has no offline copy and must come from OpenML (data id {info.openml_id}), "
                f"which could not be reached ({type(error).__name__}): run once with internet access, or {where}"
            ) from None
        raise DatasetError(
            f"{info.file_name} is not in {folder} and OpenML could not be reached ({type(error).__name__}): "
            f"{where}, e.g. from shared/datasets, or pass --scratch pointing at a folder that has it"
        ) from None
    write_dataset_file(frame, folder / info.file_name)


def fetch_openml_frame(info: DatasetInfo) -> pd.DataFrame:
    """The dataset from OpenML as a frame: numeric features, then the target named as in the registry."""
    import openml

    openml.config.connection_n_retries = 1
    dataset = openml.datasets.get_dataset(info.openml_id, download_data=True)
    x, y, categorical, names = dataset.get_data(target=dataset.default_target_attribute)
    numeric = [name for name, is_categorical in zip(names, categorical) if not is_categorical]
    frame = x[numeric].apply(pd.to_numeric)
    frame[info.target] = np.asarray(y, dtype=np.float64)
    return frame


def write_dataset_file(frame: pd.DataFrame, path: Path) -> None:
    """Write the shared/datasets format atomically: gzip level 9, mtime 0, shortest floats."""
    text = frame.to_csv(index=False, lineterminator="\n").encode()
    content = gzip.compress(text, compresslevel=9, mtime=0)
    atomic_write_bytes(path, content)
    atomic_write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(content).hexdigest() + "\n")
