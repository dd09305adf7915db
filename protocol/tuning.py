"""Hyperparameter tuning (SPEC section 5): every (setting, fold) row trains all 13 methods."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from data import load_dataset, tuning_folds
from models import METHOD_NAMES, METHODS, SETTING_KEYS, MethodResult, Setting, run_methods
from quantization import check_bits

from .common import ProtocolError
from .schema import SOFT_EVALUATED, TRAINED, TUNING_COLUMNS, UNTIMED_IN_TUNING, read_results, tuning_path, write_results
from .search_space import draw_settings, paper_search_space

K_FOLDS, DEBUG_K_FOLDS = 4, 2
BASE_SEED = 42


@dataclass(frozen=True)
class TuningPlan:
    """The settings of one tuning run, its folds and where its CSV goes."""

    dataset: str
    bits: int
    settings: pd.DataFrame  # index hyperparameter_setting_id, columns SETTING_KEYS
    k_folds: int
    path: Path

    def rows(self) -> Iterator[tuple[int, int]]:
        """(setting id, fold) in the paper's setting-major order."""
        for setting_id in self.settings.index:
            for fold in range(self.k_folds):
                yield int(setting_id), fold

    def seed(self, setting_id: int, fold: int) -> int:
        """``42 + fold + r * k_folds`` for row ``r = setting_id * k_folds + fold``."""
        return BASE_SEED + fold + (setting_id * self.k_folds + fold) * self.k_folds

    def setting_values(self, setting_id: int) -> dict[str, object]:
        """The seven hyperparameters of a setting with the types they were drawn with."""
        return {key: self.settings.at[setting_id, key].item() for key in SETTING_KEYS}


def plan_tuning(
    dataset: str,
    bits: int,
    n_steps: int,
    result_folder: str | os.PathLike,
    debug: bool = False,
    search_space: dict[str, list] | None = None,
) -> TuningPlan:
    """Draw the settings (``--debug``: 2 folds and, without a custom space, the debug space)."""
    check_bits(bits)
    space = search_space if search_space is not None else paper_search_space(debug)
    settings = draw_settings(space, n_steps)
    k_folds = DEBUG_K_FOLDS if debug else K_FOLDS
    return TuningPlan(dataset, bits, settings, k_folds, tuning_path(result_folder, dataset, bits, k_folds * n_steps))


def tuning_row(plan: TuningPlan, setting_id: int, fold: int, results: dict[str, MethodResult]) -> dict[str, object]:
    """One CSV row of SPEC section 5 from the methods' results."""
    row: dict[str, object] = {"hyperparameter_setting_id": setting_id, "kFold_id": fold, "bits": plan.bits}
    row.update(plan.setting_values(setting_id))
    for split in ("val", "test"):
        row.update({f"{split}_loss_{m}": results[m].losses[split] for m in METHOD_NAMES})
    row.update({f"train_loss_{m}": results[m].train_loss for m in TRAINED})
    row.update({f"time_{m}": results[m].seconds for m in TRAINED if m not in UNTIMED_IN_TUNING})
    for m in SOFT_EVALUATED:
        row.update({f"{split}_loss_{m}_train": results[m].soft_losses[split] for split in ("val", "test")})
    return row


def finished_rows(plan: TuningPlan) -> list[dict[str, object]]:
    """Rows already in the plan's CSV, after checking that they belong to this plan."""
    if not plan.path.exists():
        return []
    frame = read_results(plan.path, TUNING_COLUMNS)
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


def run_tuning(
    plan: TuningPlan,
    scratch: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Path:
    """Run every row of ``plan`` not yet in its CSV, rewriting the CSV atomically after each."""
    rows = finished_rows(plan)
    done = {(r["hyperparameter_setting_id"], r["kFold_id"]) for r in rows}
    todo = [key for key in plan.rows() if key not in done]
    if not todo:
        return plan.path
    data = load_dataset(plan.dataset, scratch)
    folds = [splits.tensors(device) for splits in tuning_folds(data.x, data.y, plan.k_folds)]
    total = plan.k_folds * len(plan.settings)
    with tqdm(total=total, initial=total - len(todo), desc=f"{plan.dataset} {plan.bits} bits", unit="row", disable=not progress) as bar:
        for setting_id, fold in todo:
            setting = Setting.from_mapping(plan.setting_values(setting_id))
            parts = folds[fold]
            results = run_methods(
                METHOD_NAMES,
                {m: setting for m in METHOD_NAMES},
                parts["train"],
                {"val": parts["val"], "test": parts["test"]},
                plan.bits,
                plan.seed(setting_id, fold),
                on_method=lambda m: bar.set_postfix_str(f"setting {setting_id} fold {fold} {m}"),
            )
            rows.append(tuning_row(plan, setting_id, fold, results))
            rows.sort(key=lambda r: (r["hyperparameter_setting_id"], r["kFold_id"]))
            write_results(pd.DataFrame(rows), plan.path, TUNING_COLUMNS)
            bar.update()
    return plan.path
