"""The datasets of the paper (six regressions from OpenML): registry, local cache and OpenML; and tables of your own.

``load_dataset(name, scratch)`` reads ``<scratch>/<name>.csv.gz`` (features, then the target
as the last column, the format of ``shared/datasets``); when the file is missing it downloads
the dataset with the ``openml`` client (numeric features only) and writes that file atomically,
so the next run is offline. ``friedman1`` is generated locally and needs neither.

``load_dataset(path)`` reads a table of your own instead (``.csv``, ``.csv.gz`` or ``.parquet``,
see :func:`load_table`): the same :class:`Dataset`, named after the file's stem, for regression
or classification.
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


TASKS = ("regression", "classification")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
MAX_CLASS_CODES = 20  # an integer target with at most this many distinct values is read as class labels


@dataclass
class Dataset:
    """Numeric features and target of one dataset, in the source's row order.

    For classification ``y`` holds class indices 0..C-1 (as float64) of the labels ``classes``,
    in sorted order; ``task_note`` says why the task was inferred, where it was.
    """

    name: str
    x: np.ndarray  # [n, d] float64
    y: np.ndarray  # [n] float64
    feature_names: list[str]
    task: str = "regression"
    classes: list | None = None  # classification: the labels of the indices 0..C-1
    target: str = ""
    task_note: str = ""

    @property
    def n_classes(self) -> int | None:
        """The number of classes C (None for regression)."""
        return None if self.classes is None else len(self.classes)


def default_scratch() -> Path:
    """``$BSQ_SCRATCH``, else the project's ``../shared/datasets`` if present, else a user cache."""
    if os.environ.get("BSQ_SCRATCH"):
        return Path(os.environ["BSQ_SCRATCH"])
    return SHARED_DATASETS if SHARED_DATASETS.is_dir() else USER_CACHE


def get_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``, or a DatasetError listing the known names."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, "
                           f"or give a table file ({', '.join(TABLE_SUFFIXES)})")
    return DATASETS[name]


def is_table_file(name: str | os.PathLike) -> bool:
    """Whether ``--dataset`` names a table of your own (.csv, .csv.gz or .parquet) rather than a registered name."""
    return str(name) not in DATASETS and str(name).lower().endswith(TABLE_SUFFIXES)


def dataset_name(name: str | os.PathLike) -> str:
    """The name result files use: a registered name as it is, a table file's stem (``data/plant.csv.gz``: ``plant``)."""
    if not is_table_file(name):
        return str(name)
    base = Path(name).name
    return base[: -len(next(s for s in TABLE_SUFFIXES if base.lower().endswith(s)))]


def load_dataset(name: str, scratch: str | os.PathLike | None = None, target: str | None = None,
                 task: str | None = None) -> Dataset:
    """Load ``name`` from ``scratch`` (default: :func:`default_scratch`), downloading it if missing;
    or a table file of your own (:func:`load_table` with ``target`` and ``task``)."""
    if is_table_file(name):
        return load_table(name, target, task)
    info = get_info(name)
    if task not in (None, "regression") or target not in (None, info.target):
        raise DatasetError(f"--target and --task are for a table file of your own; the registered dataset {name!r} "
                           "is a regression on its own target: leave them out")
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


def infer_task(target: pd.Series) -> tuple[str, str]:
    """The task of a target column and why: text (or bool) labels, or whole numbers with at most
    ``MAX_CLASS_CODES`` distinct values, mean classification; any other numbers regression."""
    numbers = pd.to_numeric(target, errors="coerce") if target.dtype != bool else None
    if numbers is None or numbers.isna().any():
        return "classification", "labels, not numbers"
    distinct = numbers.nunique()
    if bool((numbers % 1 == 0).all()) and distinct <= MAX_CLASS_CODES:
        return "classification", f"whole numbers, {distinct} distinct values, at most {MAX_CLASS_CODES}"
    few = distinct <= MAX_CLASS_CODES
    return "regression", "numbers, not " + ("whole" if few else f"<= {MAX_CLASS_CODES} distinct")


def load_table(path: str | os.PathLike, target: str | None = None, task: str | None = None) -> Dataset:
    """A table of your own (``.csv``, ``.csv.gz`` or ``.parquet``) as a :class:`Dataset` named after its stem.

    ``target`` is a column name (default: the last column); every other column is a feature and
    must hold numbers in every row. ``task`` is ``regression`` or ``classification``; without it
    :func:`infer_task` decides. Class labels become the indices 0..C-1 in sorted order. Refused,
    each with one sentence naming the column: a missing target column, a feature of text, a missing
    or infinite value, a constant regression target, a single class, a class with one row.
    """
    path = Path(path)
    if task not in (None, *TASKS):
        raise DatasetError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    name = dataset_name(path)
    if name in DATASETS or not name or name.startswith("."):
        raise DatasetError(f"results are filed under the file's stem, and {name!r} (of {path}) is "
                           f"{'a registered dataset' if name in DATASETS else 'no usable name'}; rename the file")
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file; give the path of a .csv, .csv.gz or .parquet "
                           "table")
    try:
        frame = pd.read_parquet(path) if path.name.lower().endswith(".parquet") else pd.read_csv(path, low_memory=False)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetError(f"{path} is not a readable table ({reason}); check the file") from None
    frame.columns = [str(c) for c in frame.columns]
    target = frame.columns[-1] if target is None and len(frame.columns) else target
    if target not in frame.columns:
        raise DatasetError(f"{path} has no column {target!r}; pass --target with one of its columns: "
                           f"{', '.join(frame.columns[:20])}")
    if frame.shape[1] < 2 or frame.shape[0] < 2:
        raise DatasetError(f"{path} needs at least one feature column besides the target {target!r} and two rows")
    features = [c for c in frame.columns if c != target]
    for column in frame.columns:
        empty = frame[column].isna().to_numpy().nonzero()[0]
        if empty.size:
            raise DatasetError(f"{path} has a missing value in column {column!r} on row {empty[0] + 1} "
                               f"({empty.size} in all); fill or drop those rows first")
    for column in features:
        values = pd.to_numeric(frame[column], errors="coerce") if frame[column].dtype != bool else None
        if values is None or values.isna().any():
            row = 0 if values is None else int(values.isna().to_numpy().nonzero()[0][0])
            raise DatasetError(f"{path} has the non-numeric value {frame[column].iloc[row]!r} in the feature column "
                               f"{column!r} (row {row + 1}); features must be numbers: encode or drop that column")
        if not np.isfinite(values.to_numpy(dtype=np.float64)).all():
            raise DatasetError(f"{path} has an infinite value in the feature column {column!r}; "
                               "replace or drop those rows first")
    note = ""
    if task is None:
        task, why = infer_task(frame[target])
        note = f"{name}: target {target!r} read as {task} ({why}); pass --task to choose"
    x = frame[features].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    if task == "regression":
        y = pd.to_numeric(frame[target], errors="coerce") if frame[target].dtype != bool else None
        if y is None or y.isna().any() or not np.isfinite(y.to_numpy(dtype=np.float64)).all():
            raise DatasetError(f"the target column {target!r} of {path} holds values that are no finite numbers, "
                               "so it cannot be a regression target; pass --task classification for labels")
        if y.nunique() < 2:
            raise DatasetError(f"the target column {target!r} of {path} has the same value in every row; "
                               "there is nothing to learn: choose another --target")
        return Dataset(name, x, y.to_numpy(dtype=np.float64), features, task, None, target, note)
    classes, codes = np.unique(frame[target].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DatasetError(f"the target column {target!r} of {path} holds a single class ({classes[0]!r}); "
                           "classification needs at least two: choose another --target")
    counts = np.bincount(codes)
    if counts.min() < 2:
        raise DatasetError(f"the target column {target!r} of {path} has a class with a single row "
                           f"({classes[counts.argmin()]!r}); the splits are stratified, so every class needs at "
                           "least two rows: drop or merge it")
    return Dataset(name, x, codes.astype(np.float64), features, task, classes.tolist(), target, note)


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
