"""Best-setting testing (the paper's protocol): pick each method's best tuned setting, rerun it n times."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from core.checks import MAX_BITS, MIN_BITS
from core.schema import best_path, has_accuracy
from data import Dataset, dataset_name, is_table_file, load_dataset
from data.splits import holdout_split
from models import METHOD_NAMES, SETTING_KEYS, MethodResult, SavedModel, Setting, get_method, run_methods, save_model

from .common import BASE_SEED, ProtocolError
from .schema import BEST, TUNING, has_method, read_results, write_results
from .study import file_lock
from .tuning import DEBUG_K_FOLDS, K_FOLDS, check_registered_options

_TUNING_NAME = re.compile(r"_hyperparameter_tuning_(\d+)bits_(\d+)iterations\.csv$")


@dataclass(frozen=True)
class Choice:
    """The setting a method's tuning chose for one bit width."""

    setting_id: int
    val_loss: float  # mean validation loss over the folds
    setting: Setting
    val_accuracy: float | None = None  # classification: the setting's mean validation accuracy over the folds


def find_tuning_files(result_folder: str | os.PathLike, dataset: str) -> dict[int, Path]:
    """Per bit width the most complete tuning file (most rows; then most iterations)."""
    candidates: dict[int, list[tuple[int, int, Path]]] = {}
    for path in (Path(result_folder) / dataset).glob(f"{dataset}_hyperparameter_tuning_*bits_*iterations.csv"):
        match = _TUNING_NAME.search(path.name)
        if match:
            if not MIN_BITS <= int(match[1]) <= MAX_BITS:
                raise ProtocolError(f"{path} names {match[1]} bits, outside {MIN_BITS}..{MAX_BITS}: rename it to the "
                                    f"bit width of its rows, or move it out of {path.parent}")
            with path.open("rb") as lines:  # bytes: a damaged file is reported when it is read
                n_rows = sum(1 for _ in lines) - 1
            candidates.setdefault(int(match[1]), []).append((n_rows, int(match[2]), path))
    return {bits: max(found)[2] for bits, found in sorted(candidates.items())}


# NOTE[DIFF]: a file does not record its fold count: 4, or 2 for a --debug file, inferred here
def planned_folds(tuning: pd.DataFrame, iterations: int) -> int:
    """The folds per setting of a tuning file of ``iterations`` = settings x folds rows: 4, or 2 (``--debug``).

    A row count that 4 does not divide means 2. Otherwise a file still being written may not
    tell yet: a fold id of 2 or more means 4 folds, a setting id of ``iterations / 4`` or more
    (beyond 4 folds' settings) means 2; until then it counts as 4.
    """
    if iterations % K_FOLDS:
        return DEBUG_K_FOLDS
    if tuning["kFold_id"].max() >= DEBUG_K_FOLDS:
        return K_FOLDS
    return DEBUG_K_FOLDS if tuning["hyperparameter_setting_id"].max() >= iterations / K_FOLDS else K_FOLDS


# NOTE[DIFF]: only settings with all folds count; ties go to the first; a non-finite loss is never chosen
def select_best(tuning: pd.DataFrame, k_folds: int, methods: Sequence[str] | None = None) -> dict[str, Choice]:
    """Average each setting over its folds, keep the smallest mean ``val_loss_<m>`` (first on ties),
    for ``methods`` (default: every method of the frame).

    Settings without all ``k_folds`` folds yet (a tuning still running) are left out, and so is,
    per method, a setting with a missing or non-finite loss on any fold (a diverged network).
    """
    if methods is None:
        methods = [m for m in METHOD_NAMES if has_method(tuning, m)]
    per_setting = tuning.groupby("hyperparameter_setting_id", sort=True)
    varying = per_setting[list(SETTING_KEYS)].nunique(dropna=False) > 1  # [settings, keys]
    if varying.any(axis=None):  # say, rows of two tunings merged by hand
        setting_id = varying.index[varying.any(axis=1)][0]
        keys = ", ".join(varying.columns[varying.loc[setting_id]])
        raise ProtocolError(f"setting {setting_id} has other {keys} on some folds than on others, so its rows come "
                            "from different tunings; move the file away or repair it")
    folds = per_setting["kFold_id"].nunique()
    complete = folds.index[folds == k_folds]
    means = per_setting[[f"val_loss_{m}" for m in methods]].mean(skipna=False).loc[complete]
    if means.empty:
        debug = " (or 2, for a --debug tuning whose rows cannot tell yet)" if k_folds == K_FOLDS else ""
        raise ProtocolError(f"no setting has all its {k_folds} folds yet{debug}; let the tuning finish a setting first")
    first_rows = per_setting[list(SETTING_KEYS)].first().loc[complete]
    choices = {}
    for m in methods:
        losses = means[f"val_loss_{m}"].to_numpy(dtype=float)
        if not np.isfinite(losses).any():
            raise ProtocolError(f"no complete setting of {m} has a finite validation loss on every fold; "
                                f"let the tuning finish more settings or leave {m} out with --methods")
        setting_id = int(means.index[np.where(np.isfinite(losses), losses, np.inf).argmin()])
        setting = Setting.from_mapping(first_rows.loc[setting_id])
        accuracy = None
        if f"val_accuracy_{m}" in tuning.columns:  # a classification: selected by the loss all the same
            accuracy = float(per_setting[f"val_accuracy_{m}"].mean().at[setting_id])
        choices[m] = Choice(setting_id, float(means.at[setting_id, f"val_loss_{m}"]), setting, accuracy)
    return choices


def load_choices(
    result_folder: str | os.PathLike, dataset: str, bits: Sequence[int] | None, methods: Sequence[str] | None = None,
    on_file: Callable[[int, Path], None] | None = None, setting_of: Mapping[str, str] | None = None,
) -> dict[int, dict[str, Choice]]:
    """The choices per bit width from the tuning files (all bit widths found, or ``bits``) for
    ``methods``, by default every method that all these files hold; ``on_file(bits, path)`` is
    told which file each bit width is selected from (:func:`print_source` prints it).

    ``setting_of`` maps a method to another whose choice it takes (its setting id and validation
    loss), say a method the tuning files lack to one they hold: those methods are added to
    ``methods`` and selected as their donors are.
    """
    setting_of = dict(setting_of or {})
    for method, donor in setting_of.items():
        get_method(method)
        get_method(donor)
        if donor in setting_of:
            raise ProtocolError(f"{method} takes the setting of {donor}, which takes another's itself; "
                                f"name the method whose tuning selects it (the setting of {setting_of[donor]})")
    if setting_of:
        own = None if methods is None else [m for m in methods if m not in setting_of]
        selected = None if own is None else [*dict.fromkeys([*own, *setting_of.values()])]
        choices = load_choices(result_folder, dataset, bits, selected, on_file)
        found = next(iter(choices.values()))
        absent = [donor for donor in setting_of.values() if donor not in found]
        if absent:
            raise ProtocolError(f"the tuning files of {dataset} do not all hold {absent[0]}, whose setting "
                                "--setting_of names; name a method they hold")
        kept = dict.fromkeys([*(found if own is None else own), *setting_of])
        return {b: {m: per_method[setting_of.get(m, m)] for m in kept} for b, per_method in choices.items()}
    files = find_tuning_files(result_folder, dataset)
    wanted = list(files) if bits is None else list(dict.fromkeys(bits))  # --bits 3 2 3: each file once
    if not wanted:
        sampled = sorted((Path(result_folder) / dataset).glob(f"{dataset}_hyperparameter_tuning_*iterations_*.csv"))
        note = f" ({sampled[0].name} is the file of another sampler, which is not selected from)" if sampled else ""
        raise ProtocolError(f"no tuning files {dataset}_hyperparameter_tuning_*bits_*iterations.csv in "
                            f"{Path(result_folder) / dataset}{note}; run hyperparameter_tuning.py first")
    missing = [b for b in wanted if b not in files]
    if missing:
        raise ProtocolError(f"no tuning file for {dataset} at {', '.join(map(str, missing))} bits in "
                            f"{Path(result_folder) / dataset}; run hyperparameter_tuning.py for them "
                            "or drop them from --bits")
    for b in wanted if on_file is not None else ():
        on_file(b, files[b])
    frames = {b: read_results(files[b], TUNING) for b in wanted}
    if methods is None:
        methods = [m for m in METHOD_NAMES if all(has_method(frame, m) for frame in frames.values())]
    choices = {}
    for b, frame in frames.items():
        if frame.empty:
            raise ProtocolError(f"{files[b]} has no rows yet; let the tuning finish some settings first")
        other_bits = sorted(set(frame["bits"].dropna().astype(int)) - {b})
        if other_bits:
            raise ProtocolError(f"{files[b]} holds rows of {', '.join(map(str, other_bits))} bits, but its name says "
                                f"{b} bits: rename it to the bit width of its rows")
        absent = [m for m in methods if not has_method(frame, m)]
        if absent:
            raise ProtocolError(f"{files[b]} was written without the method(s) {', '.join(absent)}; "
                                "leave them out of --methods")
        try:
            choices[b] = select_best(frame, planned_folds(frame, int(_TUNING_NAME.search(files[b].name)[2])), methods)
        except ProtocolError as error:
            raise ProtocolError(f"{files[b]}: {error}") from None
    return choices


def print_source(bits: int, path: Path) -> None:
    """Say on stderr which tuning file a bit width is selected from (a folder may hold several, say --debug's
    and a real one)."""
    print(f"{bits} bits: selecting from {path}", file=sys.stderr)


def selection_frame(choices: dict[int, dict[str, Choice]]) -> pd.DataFrame:
    """``bits,method,best_hyperparameter_id,val_loss`` rows, as ``--select_only`` prints them."""
    return pd.DataFrame(
        [(b, m, c.setting_id, c.val_loss) for b, per_method in choices.items() for m, c in per_method.items()],
        columns=["bits", "method", "best_hyperparameter_id", "val_loss"],
    )


def classification(choices: dict[int, dict[str, Choice]]) -> bool:
    """Whether the choices come from a classification's tuning files (they hold accuracies)."""
    return any(c.val_accuracy is not None for per_method in choices.values() for c in per_method.values())


def _empty_row(bits: int, run: int, accuracy: bool = False) -> dict[str, object]:
    columns = BEST.columns(accuracy=accuracy)
    return {**{c: np.nan for c in columns}, "bits": bits, "step": run}  # the paper's column of the run


_KINDS = ("a regression", "a classification")  # indexed by "is a classification"


def stored_runs(path: Path, choices: dict[int, dict[str, Choice]]) -> dict[tuple[int, int], dict[str, object]]:
    """The output's rows by (bits, run) as they are now, checked against the choices: a method's
    stored runs must come from the setting, and the validation loss, that the tuning selects now."""
    if not path.exists():
        return {}
    frame = read_results(path, BEST)
    accuracy = classification(choices)
    if has_accuracy(frame.columns) != accuracy:
        raise ProtocolError(f"{path} holds the results of {_KINDS[has_accuracy(frame.columns)]}, but the tuning files "
                            f"are {_KINDS[accuracy]}'s; move it away to rerun")
    frame = frame.reindex(columns=list(BEST.columns(accuracy=accuracy)))
    rows = {(int(r["bits"]), int(r["step"])): r for r in frame.to_dict("records")}
    for (b, _), row in rows.items():
        for m, choice in choices.get(b, {}).items():
            setting_id, val_loss = row[f"best_hyperparameter_id_{m}"], row[f"val_loss_{m}"]
            if pd.isna(setting_id):
                continue
            if int(setting_id) != choice.setting_id or not np.isclose(val_loss, choice.val_loss, rtol=1e-9, atol=0):
                raise ProtocolError(
                    f"{path} was computed with setting {setting_id} (validation loss {val_loss:.6g}) for {m} at "
                    f"{b} bits, but the tuning now selects setting {choice.setting_id} (validation loss "
                    f"{choice.val_loss:.6g}); delete its rows of {b} bits (or move the file away) to rerun them, "
                    f"or leave {b} bits out with --bits"
                )
    return rows


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a scratch file there: a folder that cannot take the output fails now,
    not after training."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def _model_path(save_models: str | os.PathLike, dataset: str, bits: int, method: str, run: int) -> Path:
    return Path(save_models) / f"{dataset}_{bits}bits_{method}_run{run}.pt"


def run_best_settings(
    dataset: str,
    result_folder: str | os.PathLike,
    n_runs: int = 10,
    bits: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    scratch: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    save_models: str | os.PathLike | None = None,
    progress: bool = True,
    target: str | None = None,
    task: str | None = None,
    setting_of: Mapping[str, str] | None = None,
) -> Path:
    """Rerun each method's best setting ``n_runs`` times (``--n_steps``) per bit width; resumable per (bits, run).

    Run ``s`` splits with ``random_state = 42 + s`` and seeds every network with ``42 + s``.
    ``methods`` defaults to every method of the tuning files; ``setting_of`` (:func:`load_choices`) adds methods
    run at another's selected setting, which the output records as theirs. A row already in the output keeps
    its methods; only missing ones are computed. Several runs may share the output (other bits
    or methods, or the same command twice): each run's results are merged into the file as it
    is then, under a lock, and work another run has finished meanwhile is skipped.

    ``dataset`` is a registered name or a table file of your own (with ``target`` and ``task``,
    see ``data.load_table``), whose tuning files and results are filed under its stem. A
    classification's splits are stratified, and its file adds the accuracy columns.
    """
    for m in methods or ():
        get_method(m)
    if n_runs < 1:
        raise ProtocolError(f"--n_steps (the number of runs) must be at least 1, got {n_runs}")
    check_registered_options(dataset, target, task)
    # a table file is checked first (quick); a registered dataset is loaded once there is work to do
    data = load_dataset(dataset, scratch, target, task) if is_table_file(dataset) else None
    if progress and data is not None and data.task_note:
        print(data.task_note, file=sys.stderr)
    source, dataset = dataset, dataset_name(dataset)
    choices = load_choices(result_folder, dataset, bits, methods, print_source if progress else None, setting_of)
    methods = list(next(iter(choices.values())))
    path = best_path(result_folder, dataset)

    def missing(rows: dict[tuple[int, int], dict[str, object]], b: int, run: int) -> list[str]:
        row = rows.get((b, run))
        return [m for m in methods if row is None or pd.isna(row[f"test_loss_{m}"])]

    rows = stored_runs(path, choices)
    todo = [(b, r) for b in choices for r in range(n_runs) if missing(rows, b, r)]
    if save_models is not None:
        _check_writable(Path(save_models))
        unsaved = sum(not _model_path(save_models, dataset, b, m, r).exists()
                      for b in choices for r in range(n_runs) for m in methods if m not in missing(rows, b, r))
        if unsaved:
            print(f"note: {unsaved} of the requested (bits, run, method) results are already in {path} without a model "
                  f"in {save_models}; they are not trained again, so no model is saved for them (move {path} away "
                  "to train and save them)", file=sys.stderr)
    if not todo:
        return path
    _check_writable(path.parent)
    data = data if data is not None else load_dataset(source, scratch)
    if (data.task == "classification") != classification(choices):
        raise ProtocolError(f"the tuning files of {dataset} are {_KINDS[classification(choices)]}'s, but the data is "
                            f"read as {_KINDS[data.task == 'classification']}; pass the --task and --target they "
                            "were tuned with")
    job = _BestSettingsJob(dataset, data, choices, path, device, save_models)
    total = len(choices) * n_runs
    with tqdm(total=total, initial=total - len(todo), desc=f"{dataset} best settings", unit="run",
              disable=not progress) as bar:
        for b, run in todo:
            names = missing(stored_runs(path, choices), b, run)  # another run may have done them meanwhile
            if names:
                job.rerun(b, run, names, bar)
            bar.update()
    return path


@dataclass(frozen=True, eq=False)
class _BestSettingsJob:
    """What every (bits, run) of one best-setting job shares: its data, choices, output and device."""

    dataset: str
    data: Dataset
    choices: dict[int, dict[str, Choice]]
    path: Path
    device: torch.device | str
    save_models: str | os.PathLike | None

    def rerun(self, b: int, run: int, names: list[str], bar: tqdm) -> None:
        """Train run ``run`` of the methods ``names`` at ``b`` bits and merge their results into the output."""
        stratify = self.data.task == "classification"
        splits = holdout_split(self.data.x, self.data.y, seed=BASE_SEED + run, stratify=stratify)
        parts = splits.tensors(self.device)
        results = run_methods(
            names,
            {m: self.choices[b][m].setting for m in names},
            parts["train"],
            {"test": parts["test"]},
            b,
            BASE_SEED + run,
            on_stack=lambda methods: bar.set_postfix_str(f"{b} bits run {run} {methods}"),
            n_classes=self.data.n_classes,
        )
        if self.save_models is not None:
            for m, result in results.items():
                assert result.model is not None
                y_mean, y_scale = (0.0, 1.0) if splits.y_scaler is None else (  # class indices: not standardized
                    float(splits.y_scaler.mean_[0]), float(splits.y_scaler.scale_[0]))
                saved = SavedModel(
                    result.model.cpu(), m, b, self.choices[b][m].setting, self.data.feature_names,
                    splits.x_scaler.mean_, splits.x_scaler.scale_, y_mean, y_scale, self.dataset, self.data.classes,
                )
                save_model(saved, _model_path(self.save_models, self.dataset, b, m, run))
        self._merge(b, run, results)

    def _merge(self, b: int, run: int, results: dict[str, MethodResult]) -> None:
        """Write the results of run ``run`` at ``b`` bits into the output as it is now, under its lock."""
        accuracy = classification(self.choices)
        with file_lock(str(self.path.with_name(f".{self.path.name}.merge"))):
            rows = stored_runs(self.path, self.choices)
            row = rows.setdefault((b, run), _empty_row(b, run, accuracy))
            for m, result in results.items():
                choice = self.choices[b][m]
                row.update({
                    f"best_hyperparameter_id_{m}": choice.setting_id,
                    f"val_loss_{m}": choice.val_loss,
                    f"test_loss_{m}": result.losses["test"],
                    f"time_{m}": result.seconds,
                })
                if accuracy:
                    row.update({f"val_accuracy_{m}": choice.val_accuracy,
                                f"test_accuracy_{m}": result.accuracies["test"]})
            write_results(pd.DataFrame([rows[key] for key in sorted(rows)]), self.path, BEST, accuracy)
