"""Hyperparameter tuning, the paper's random search: every (setting, fold) row trains every registered method.

The rows live in an optuna study (:mod:`protocol.study`) that any number of workers share; a
worker stores each row there as soon as it ends and rewrites the CSV from the study after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from core.checks import check_bits
from core.schema import TUNING_KEYS, UNTIMED_IN_TUNING, tuning_path
from data import Dataset, dataset_name, get_info, is_table_file, load_dataset, tuning_folds
from models import METHOD_NAMES, SETTING_KEYS, MethodResult, Setting, run_methods

from .common import BASE_SEED, ProtocolError
from .schema import EXTRA_METHODS, SOFT_EVALUATED, TRAINED, TUNING, has_method, read_results, write_results
from .search_space import draw_settings, paper_search_space
from .study import (
    HEARTBEAT_SECONDS,
    Claim,
    Row,
    StudySpec,
    TuningStudy,
    claim_setting,
    finish,
    finished,
    open_storage,
    open_study,
    started_settings,
    store_fold,
    stored_rows,
    working,
)

K_FOLDS, DEBUG_K_FOLDS = 4, 2
SAMPLERS = ("paper", "random", "tpe")
DEFAULT_OBJECTIVE = "Bw-SQ"
POLL_SECONDS = 5  # how often a worker with nothing to take looks again
CSV_ATTR = "csv"  # the study's user attribute naming the CSV it exports to (see open_tuning)


@dataclass(frozen=True)
class TuningPlan:
    """The settings of one tuning run, its folds, how it samples and where its CSV goes."""

    dataset: str
    bits: int
    # the paper sampler's draws (other samplers use only their number): index hyperparameter_setting_id,
    # columns SETTING_KEYS
    settings: pd.DataFrame
    k_folds: int
    path: Path
    space: dict[str, list]
    sampler: str = "paper"
    objective: str = DEFAULT_OBJECTIVE  # the method whose mean validation loss is a trial's value
    data: Dataset | None = field(default=None, compare=False, repr=False)  # a table file, loaded when planned

    @property
    def classification(self) -> bool:
        """Whether the rows are a classification's (only a table file of your own can be one)."""
        return self.data is not None and self.data.task == "classification"

    @property
    def n_settings(self) -> int:
        """The number of settings (``--n_steps``)."""
        return len(self.settings)

    def rows(self) -> Iterator[tuple[int, int]]:
        """(setting id, fold) in the paper's setting-major order."""
        for setting_id in self.settings.index:
            for fold in range(self.k_folds):
                yield int(setting_id), fold

    def seed(self, setting_id: int, fold: int) -> int:
        """``42 + fold + r * k_folds`` for row ``r = setting_id * k_folds + fold``."""
        # NOTE[DIFF]: every network of a row is built right after seeding (the paper's code: one stream)
        return BASE_SEED + fold + (setting_id * self.k_folds + fold) * self.k_folds

    def setting_values(self, setting_id: int) -> dict[str, object]:
        """The seven hyperparameters of a paper setting with the types they were drawn with."""
        return {key: self.settings.at[setting_id, key].item() for key in SETTING_KEYS}

    def spec(self) -> StudySpec:
        """The plan's optuna study, named after everything that shapes its rows."""
        digest = hashlib.sha256(json.dumps(self.space, sort_keys=True).encode()).hexdigest()[:8]
        # "steps" stays in the name: a stored study is found by it
        name = (f"{self.dataset}-{self.bits}bits-{self.n_settings}steps-{self.k_folds}folds-{self.sampler}-"
                f"{self.objective}-space{digest}")
        if EXTRA_METHODS:  # rows with further methods form another study than the paper's methods alone
            name += "-with-" + "+".join(EXTRA_METHODS)
        if self.data is not None:  # a table of your own: another target or task gives other rows
            name += f"-{self.data.task}-target-{self.data.target}"
        initial = tuple(self.setting_values(s) for s in self.settings.index) if self.sampler == "paper" else ()
        return StudySpec(name, self.space, self.k_folds, self.n_settings, self.sampler, initial)


def plan_tuning(
    dataset: str,
    bits: int,
    n_settings: int,
    result_folder: str | os.PathLike,
    debug: bool = False,
    search_space: dict[str, list] | None = None,
    sampler: str = "paper",
    objective: str = DEFAULT_OBJECTIVE,
    target: str | None = None,
    task: str | None = None,
) -> TuningPlan:
    """Draw the settings (``--debug``: 2 folds and, without a custom space, the debug space).

    Samplers other than ``paper`` write ``…iterations_<sampler>_<objective>.csv`` beside the paper's file.
    ``dataset`` is a registered name or a table file of your own (loaded now, with ``target`` and
    ``task``: see ``data.load_table``), whose results are filed under its stem.
    """
    check_bits(bits)
    data = load_dataset(dataset, target=target, task=task) if is_table_file(dataset) else None
    check_registered_options(dataset, target, task)
    dataset = dataset_name(dataset)
    if sampler not in SAMPLERS or objective not in METHOD_NAMES:
        raise ProtocolError(f"the sampler must be one of {SAMPLERS} and the objective one of {METHOD_NAMES}")
    space = search_space if search_space is not None else paper_search_space(debug)
    k_folds = DEBUG_K_FOLDS if debug else K_FOLDS
    path = tuning_path(result_folder, dataset, bits, k_folds * n_settings)
    if sampler != "paper":
        path = path.with_name(f"{path.stem}_{sampler}_{objective}{path.suffix}")
    return TuningPlan(dataset, bits, draw_settings(space, n_settings), k_folds, path, space, sampler, objective, data)


def check_registered_options(dataset: str, target: str | None, task: str | None) -> None:
    """Refuse an unknown name, and ``--target`` or ``--task`` with a registered dataset (a regression on its target)."""
    if is_table_file(dataset):
        return
    info = get_info(dataset)
    if task not in (None, "regression") or target not in (None, info.target):
        raise ProtocolError(f"--target and --task are for a table file of your own; the registered dataset "
                            f"{dataset!r} is a regression on its target {info.target!r}: leave them out")


def tuning_row(
    plan: TuningPlan, setting_id: int, fold: int, values: dict[str, object], results: dict[str, MethodResult],
) -> Row:
    """One tuning-file row from a setting's values and the methods' results."""
    row: Row = {"hyperparameter_setting_id": setting_id, "kFold_id": fold, "bits": plan.bits}
    row.update({key: values[key] for key in SETTING_KEYS})
    for split in ("val", "test"):
        row.update({f"{split}_loss_{m}": results[m].losses[split] for m in METHOD_NAMES})
    for split in ("val", "test") if plan.classification else ():
        row.update({f"{split}_accuracy_{m}": results[m].accuracies[split] for m in METHOD_NAMES})
    row.update({f"train_loss_{m}": results[m].train_loss for m in TRAINED})
    row.update({f"time_{m}": results[m].seconds for m in TRAINED if m not in UNTIMED_IN_TUNING})
    for m in SOFT_EVALUATED:
        row.update({f"{split}_loss_{m}_train": results[m].soft_losses[split] for split in ("val", "test")})
    return row


def finished_rows(plan: TuningPlan) -> list[Row]:
    """Rows already in the plan's CSV, after checking that they belong to this plan."""
    if not plan.path.exists():
        return []
    frame = read_results(plan.path, TUNING)
    absent = [m for m in EXTRA_METHODS if not has_method(frame, m)]
    if absent:
        raise ProtocolError(
            f"{plan.path} was written without the method(s) {', '.join(absent)}, and every tuning row holds all "
            "registered methods; tune into another --result_folder"
        )
    planned = set(plan.rows())
    for record in frame.to_dict("records"):
        key = (record["hyperparameter_setting_id"], record["kFold_id"])
        same = key in planned and record["bits"] == plan.bits and all(
            record[k] == plan.settings.at[key[0], k] for k in SETTING_KEYS
        )
        if not same:
            raise ProtocolError(
                f"{plan.path} holds row {key} that this run would not produce (other settings, bits or folds); "
                "move the file away or use another --result_folder"
            )
    return frame.to_dict("records")


def rows_to_import(plan: TuningPlan) -> dict[int, dict[int, Row]]:
    """The rows of a paper-sampler CSV from before (checked), by setting and fold, for a new study."""
    if plan.sampler != "paper":
        return {}
    imported: dict[int, dict[int, Row]] = {}
    for row in finished_rows(plan):
        imported.setdefault(int(row["hyperparameter_setting_id"]), {})[int(row["kFold_id"])] = row
    return imported


def open_tuning(
    plan: TuningPlan, storage: str | None = None, heartbeat: int = HEARTBEAT_SECONDS, create: bool = True,
) -> TuningStudy:
    """Open the plan's study in ``storage`` (default: a journal file beside the CSV), and make sure
    that no other study there writes the same CSV."""
    url = storage or f"journal:{plan.path.with_suffix('.journal')}"
    opened, spec = open_storage(url, create), plan.spec()
    # the default journal sits beside its CSV, so there the name is the file (also after the folder
    # moves); a storage given with --storage may serve many folders, so there it is the absolute path
    csv = plan.path.name if storage is None else str(plan.path.resolve())
    others = [s.study_name for s in opened.backend.get_all_studies()
              if s.user_attrs.get(CSV_ATTR) == csv and s.study_name != spec.name]
    if others:  # say, 4 folds x 1 setting and --debug's 2 folds x 2 settings: both "..._4iterations.csv"
        raise ProtocolError(
            f"{plan.path.name} is already the CSV of another tuning in {opened.label} ({others[0]}: other folds, "
            "search space, sampler, objective or methods give the same file name); use another --result_folder"
        )
    tuning = open_study(opened, spec, heartbeat, create)
    if create and tuning.study.user_attrs.get(CSV_ATTR) != csv:
        tuning.study.set_user_attr(CSV_ATTR, csv)
    return tuning


def export_csv(plan: TuningPlan, tuning: TuningStudy) -> int:
    """Rewrite the plan's CSV atomically from the study; returns its number of rows."""
    rows = stored_rows(tuning)
    columns = TUNING.columns(accuracy=plan.classification)
    write_results(pd.DataFrame(rows, columns=list(columns)), plan.path, TUNING, plan.classification)
    return len(rows)


def export_tuning(plan: TuningPlan, storage: str | None = None) -> Path:
    """Regenerate the plan's CSV from an existing study (refused where the CSV holds rows the study lacks
    or holds otherwise)."""
    tuning = open_tuning(plan, storage, create=False)
    _check_csv_matches_storage(plan, tuning, {})
    export_csv(plan, tuning)
    return plan.path


@dataclass
class _Folds:
    """The plan's folds as tensors, loaded on first use (a worker with nothing to do loads nothing)."""

    plan: TuningPlan
    scratch: str | os.PathLike | None
    device: torch.device | str

    @cached_property
    def data(self) -> Dataset:
        """The plan's table file, or its registered dataset."""
        return self.plan.data if self.plan.data is not None else load_dataset(self.plan.dataset, self.scratch)

    @cached_property
    def parts(self) -> list[dict]:
        """Per fold its ``train``, ``val`` and ``test`` tensors (stratified for classification)."""
        folds = tuning_folds(self.data.x, self.data.y, self.plan.k_folds, stratify=self.plan.classification)
        return [splits.tensors(self.device) for splits in folds]

    def row(self, claim: Claim, fold: int, on_stack: Callable[[str], None]) -> Row:
        """Train and evaluate all methods on one fold of the claimed setting."""
        setting, parts = Setting.from_mapping(claim.values), self.parts[fold]
        results = run_methods(
            METHOD_NAMES,
            {m: setting for m in METHOD_NAMES},
            parts["train"],
            {"val": parts["val"], "test": parts["test"]},
            self.plan.bits,
            self.plan.seed(claim.setting_id, fold),
            on_stack=on_stack,
            n_classes=self.data.n_classes,
        )
        return tuning_row(self.plan, claim.setting_id, fold, claim.values, results)


def run_tuning(
    plan: TuningPlan,
    scratch: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    storage: str | None = None,
    heartbeat: int = HEARTBEAT_SECONDS,
    import_csv: bool = False,
) -> Path:
    """Work on the plan's study, beside any other workers, until every row is stored; then write the CSV.

    Rows of the CSV that the storage lacks (its journal was removed, or another storage is named) are
    continued from only with ``import_csv`` (``--import_csv``): nothing but the storage can tell an edited
    result from a computed one.
    """
    imported = rows_to_import(plan)
    tuning = open_tuning(plan, storage, heartbeat)
    _check_csv_matches_storage(plan, tuning, imported, import_csv)
    folds = _Folds(plan, scratch, device)
    total, done = plan.k_folds * plan.n_settings, len(stored_rows(tuning))
    with tqdm(total=total, initial=done, desc=f"{plan.dataset} {plan.bits} bits", unit="row",
              disable=not progress) as bar:
        while not finished(tuning):
            claim = claim_setting(tuning, imported)
            if claim is None:
                _show(bar, len(stored_rows(tuning)), "waiting for the settings other workers run")
                time.sleep(min(POLL_SECONDS, heartbeat))
            else:
                _work(plan, claim, folds, bar)
    export_csv(plan, tuning)
    return plan.path


def _check_csv_matches_storage(plan: TuningPlan, tuning: TuningStudy, imported: dict[int, dict[int, Row]],
                               import_csv: bool = False) -> None:
    """Refuse to rewrite a CSV that holds rows the storage lacks or holds with other results.

    The CSV is rewritten from the storage; only the rows of settings the study has not started
    are imported (paper sampler), only with ``import_csv`` (a result edited into another plausible
    number cannot be told from the file alone), and only where they hold every result of their
    methods (see :func:`_check_importable`). Any other row of the CSV that the storage does not hold
    as it is (a file copied or merged in by hand, or one written with another storage) would be lost.
    """
    if not plan.path.exists():
        return
    # in this order, as other workers may store, import and export meanwhile: they export only rows
    # already stored, and a setting they import from the CSV is stored as it starts
    csv_rows = read_results(plan.path, TUNING).to_dict("records")
    importable = set(imported) - started_settings(tuning)
    if importable and not import_csv:
        rows = sum(len(imported[setting]) for setting in importable)
        raise ProtocolError(f"{plan.path} holds {rows} rows that {tuning.storage.label} lacks (was its journal "
                            "removed?), and their results cannot be checked without it; pass --import_csv to "
                            "continue from them as they stand, or move the CSV away to compute them again")
    stored = {(row["hyperparameter_setting_id"], row["kFold_id"]): row for row in stored_rows(tuning)}
    for line, row in enumerate(csv_rows, start=2):
        key = (int(row["hyperparameter_setting_id"]), int(row["kFold_id"]))
        if key[0] in importable:
            _check_importable(plan, row, line)
            continue
        if key not in stored:
            problem = f"setting {key[0]} fold {key[1]}, which {tuning.storage.label} lacks"
        elif not _same_results(row, stored[key]):
            problem = f"other results for setting {key[0]} fold {key[1]} than {tuning.storage.label}"
        else:
            continue
        raise ProtocolError(f"{plan.path} holds {problem}, and the CSV is rewritten from there; "
                            "move the CSV away to keep it, or pass the --storage it was made with")


def _check_importable(plan: TuningPlan, row: Row, line: int) -> None:
    """Refuse a row to import whose results are not all finite numbers >= 0.

    Every tuning row holds all results of the methods its file lists (losses, accuracies and
    seconds), so a blank, NaN, infinite or negative cell is damage: a line cut short, a cell
    cleared or mistyped by hand. A result edited into another plausible number cannot be told
    from the file alone, only by the storage the rows were stored in; a network that truly
    diverged is computed again.
    """
    for column, value in row.items():
        if column not in TUNING_KEYS and not (np.isfinite(value) and value >= 0):
            key = f"setting {row['hyperparameter_setting_id']} fold {row['kFold_id']}"
            shown = "a blank cell" if np.isnan(value) else value
            raise ProtocolError(
                f"{plan.path} has {shown} in {column} on line {line} ({key}), where a tuning row holds a finite "
                "loss or time >= 0; repair that line, or delete it to have the row computed again"
            )


def _same_results(csv_row: Row, stored_row: Row) -> bool:
    """Whether a CSV row holds a stored row's numbers (to the CSV's printed precision; NaN equals NaN)."""
    keys = [key for key in csv_row if key in stored_row]
    ours = pd.to_numeric(pd.Series([csv_row[k] for k in keys], dtype=object), errors="coerce").to_numpy(dtype=float)
    theirs = pd.to_numeric(pd.Series([stored_row[k] for k in keys], dtype=object),
                           errors="coerce").to_numpy(dtype=float)
    return len(keys) == len(stored_row) and bool(np.allclose(ours, theirs, rtol=1e-12, atol=0, equal_nan=True))


def _show(bar: tqdm, done: int, postfix: str | None = None) -> None:
    bar.n = done
    if postfix is not None:
        bar.set_postfix_str(postfix, refresh=False)
    bar.refresh()


def _show_stack(bar: tqdm, label: str, methods: str) -> None:
    bar.set_postfix_str(f"{label} {methods}")


def _work(plan: TuningPlan, claim: Claim, folds: _Folds, bar: tqdm) -> None:
    """Compute the claimed setting's missing folds, storing each as it ends, then finish its trial."""
    with working(claim):
        for fold in range(plan.k_folds):
            if fold in claim.stored:
                continue
            row = folds.row(claim, fold, on_stack=partial(_show_stack, bar, f"setting {claim.setting_id} fold {fold}"))
            if not store_fold(claim, fold, row):
                return  # declared dead meanwhile: the setting went to another worker
            _show(bar, export_csv(plan, claim.tuning))
        losses = [row[f"val_loss_{plan.objective}"] for row in claim.stored.values()]
        finish(claim, sum(losses) / len(losses))
