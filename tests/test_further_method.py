"""A method added to the registry runs through the whole protocol, and the paper's files stay readable.

The registry is extended in a subprocess before the protocol modules are imported, as if
``models/methods.py`` had one more entry; the script there asserts and exits non-zero on failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = r'''
import contextlib, io, shutil, sys
from pathlib import Path

import numpy as np
import pandas as pd

import models
import models.methods as registry
from quantization import BwSQQuantizer

NEW = "Bw-SQ-MM"  # Bw-SQ started from the min-max thresholds
registry.METHODS[NEW] = registry.Method(NEW, lambda rows_info: BwSQQuantizer(rows_info.minmax), soft_eval=True)
registry.METHOD_NAMES = models.METHOD_NAMES = tuple(registry.METHODS)

import best_hyperparameter_testing_multiple as best_script
import hyperparameter_tuning as tuning_script
from result_analysis import compare_runs, create_result_tables

shared, tmp = Path(sys.argv[1]), Path(sys.argv[2])
paper = shared / "paper_results"
common = ["--scratch", str(shared / "datasets"), "--result_folder", str(tmp), "--device", "cpu", "--quiet"]

def run(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()

# selecting from the paper's tuning files: their 13 methods
code, out, _ = run(best_script.main,
                   ["--dataset", "fried", "--bits", "3", "--select_only", "--result_folder", str(paper)])
assert code == 0 and pd.read_csv(io.StringIO(out))["method"].tolist() == list(models.PAPER_METHODS), out

# tuning: the paper's columns, then the new method's, filled
assert run(tuning_script.main,
           ["--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "1", "--debug", *common])[0] == 0
tuning = pd.read_csv(tmp / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_2iterations.csv")
paper_header = list(pd.read_csv(paper / "fried" / "fried_hyperparameter_tuning_3bits_400iterations.csv",
                                nrows=0).columns)
new_columns = [f"val_loss_{NEW}", f"test_loss_{NEW}", f"train_loss_{NEW}", f"time_{NEW}", f"val_loss_{NEW}_train",
               f"test_loss_{NEW}_train"]
registered = ["val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "train_loss_Bw-SQ-ST", "time_Bw-SQ-ST"]  # registered before
assert list(tuning.columns) == paper_header + registered + new_columns, list(tuning.columns)
assert len(tuning) == 2 and np.isfinite(tuning[new_columns].to_numpy()).all()

# best settings: the paper's columns, then the new method's, filled
assert run(best_script.main, ["--dataset", "wine_quality", "--n_steps", "1", *common])[0] == 0
best = pd.read_csv(tmp / "best_hyperparameter_multiple" / "wine_quality_best_hyperparameter_test_multiple.csv")
paper_best = paper / "best_hyperparameter_multiple" / "wine_quality_best_hyperparameter_test_multiple.csv"
new_best = [f"best_hyperparameter_id_{NEW}", f"val_loss_{NEW}", f"test_loss_{NEW}", f"time_{NEW}"]
registered_best = ["best_hyperparameter_id_Bw-SQ-ST", "val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "time_Bw-SQ-ST"]
assert list(best.columns) == list(pd.read_csv(paper_best, nrows=0).columns) + registered_best + new_best
assert len(best) == 1 and np.isfinite(best[new_best].to_numpy()).all()

# a tuning file written without the new method is not resumed with it
(tmp / "old" / "fried").mkdir(parents=True)
shutil.copy(paper / "fried" / "fried_hyperparameter_tuning_3bits_400iterations.csv", tmp / "old" / "fried")
code, _, err = run(tuning_script.main, ["--dataset", "fried", "--n_bits", "3", "--n_steps", "100",
                                        "--result_folder", str(tmp / "old"), "--quiet"])
assert code == 2 and f"was written without the method(s) Bw-SQ-ST, {NEW}" in err, err

# the analysis reads the paper's files (no column for the new method) and ours
code, _, err = run(create_result_tables.main, ["--results_dir", str(paper / "best_hyperparameter_multiple"),
                                               "--out_dir", str(tmp / "tables")])
assert code == 0, err
confidence = pd.read_csv(tmp / "tables" / "confidence.csv")
assert NEW not in set(confidence["method"]) and set(confidence["method"]) == set(models.PAPER_METHODS)
ours = tmp / "best_hyperparameter_multiple" / "wine_quality_best_hyperparameter_test_multiple.csv"
code, out, err = run(compare_runs.main, ["--ours", str(ours), "--theirs", str(paper_best)])
assert code == 0 and f"skipped, no runs in both files: Bw-SQ-ST, {NEW}" in err, err
print("ok")
'''


def test_a_registered_method_runs_through_the_protocol(shared_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(shared_dir), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
