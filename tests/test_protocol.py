"""The paper's protocol: settings, CSV schemas, resume, selection and the command lines."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

import best_hyperparameter_testing_multiple as best_script
import hyperparameter_tuning as tuning_script
from models import METHOD_NAMES, METHODS, PAPER_METHODS, SETTING_KEYS, MethodResult, Setting
from protocol import best_settings, tuning
from protocol.best_settings import Choice, load_choices, planned_folds, run_best_settings, select_best
from protocol.common import ProtocolError, parse_positive, parse_steps
from protocol.schema import (
    BEST,
    BEST_COLUMNS,
    SOFT_EVALUATED,
    TRAINED,
    TUNING,
    has_method,
    read_results,
    write_results,
)
from protocol.search_space import draw_settings, load_search_space, paper_search_space
from protocol.tuning import export_tuning, open_tuning, plan_tuning, run_tuning

REPO = Path(__file__).resolve().parents[1]
PAPER_BEST_DATASETS = ["california", "fried", "sulfur", "superconduct", "wine_quality"]


def paper_file(shared: Path, dataset: str, bits: int) -> Path:
    return shared / "paper_results" / dataset / f"{dataset}_hyperparameter_tuning_{bits}bits_400iterations.csv"


def test_paper_settings_are_reproduced_exactly(shared_dir: Path) -> None:
    drawn = draw_settings(paper_search_space(), 100)
    for path in sorted((shared_dir / "paper_results").glob("*/*_hyperparameter_tuning_*bits_400iterations.csv")):
        paper = pd.read_csv(path, usecols=["hyperparameter_setting_id", "kFold_id", *SETTING_KEYS])
        first_fold = paper[paper.kFold_id == 0].set_index("hyperparameter_setting_id")[list(SETTING_KEYS)]
        assert first_fold.index.tolist() == list(range(100)), path
        np.testing.assert_array_equal(first_fold.to_numpy(), drawn.to_numpy(), err_msg=str(path))


def test_list_settings_prints_the_paper_settings(shared_dir: Path, capsys) -> None:
    assert tuning_script.main(["--dataset", "fried", "--n_bits", "3", "--n_steps", "100", "--list_settings"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    paper = pd.read_csv(paper_file(shared_dir, "fried", 3), nrows=1)
    assert list(printed.columns) == ["hyperparameter_setting_id", *SETTING_KEYS]
    assert len(printed) == 100
    assert printed.iloc[0][list(SETTING_KEYS)].tolist() == paper.iloc[0][list(SETTING_KEYS)].tolist()


@pytest.fixture(scope="module")
def debug_results(tmp_path_factory, shared_dir: Path) -> Path:
    """A --debug tuning of wine_quality at 3 bits with two settings (four rows)."""
    folder = tmp_path_factory.mktemp("results")
    code = tuning_script.main([
        "--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "2", "--debug", "--device", "cpu",
        "--scratch", str(shared_dir / "datasets"), "--result_folder", str(folder), "--quiet",
    ])
    assert code == 0
    return folder


def test_debug_tuning_writes_the_paper_schema(debug_results: Path, shared_dir: Path) -> None:
    path = debug_results / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    ours = pd.read_csv(path)
    paper_header = pd.read_csv(paper_file(shared_dir, "wine_quality", 3), nrows=0).columns.tolist()
    further = ["val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "train_loss_Bw-SQ-ST", "time_Bw-SQ-ST"]  # no soft columns
    assert ours.columns.tolist() == paper_header + further
    assert list(zip(ours.hyperparameter_setting_id, ours.kFold_id)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    losses = ours[[c for c in ours.columns if "loss" in c]].to_numpy()
    assert np.isfinite(losses).all() and (losses > 0).all()
    # Po-* evaluate the FP network on quantized inputs: their losses differ from FP's
    assert not np.allclose(ours["val_loss_Po-QQ"], ours["val_loss_FP"])
    assert ours.hidden_neurons.eq(5).all() and ours.num_epochs.eq(10).all()


def test_rerun_of_a_finished_tuning_changes_nothing(debug_results: Path, shared_dir: Path) -> None:
    path = debug_results / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    before = path.read_bytes()
    plan = plan_tuning("wine_quality", 3, 2, debug_results, debug=True)
    run_tuning(plan, shared_dir / "datasets", progress=False)
    assert path.read_bytes() == before


def without_times(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not c.startswith("time_")]]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, debug_results: Path, shared_dir: Path) -> None:
    reference = pd.read_csv(debug_results / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv")
    path = tmp_path / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    command = [
        sys.executable, "hyperparameter_tuning.py", "--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "2",
        "--debug", "--device", "cpu", "--scratch", str(shared_dir / "datasets"), "--result_folder", str(tmp_path),
        "--quiet",
    ]
    worker = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (path.exists() and len(pd.read_csv(path)) >= 1):
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    interrupted = pd.read_csv(path)
    assert 1 <= len(interrupted) < 4, "the worker should be killed part-way"
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    resumed = pd.read_csv(path)
    pd.testing.assert_frame_equal(without_times(resumed), without_times(reference))
    assert not list(path.parent.glob("*.tmp")), "no temporary files are left behind"


def test_sigterm_releases_the_setting_at_once(tmp_path: Path, shared_dir: Path) -> None:
    """A scheduler's SIGTERM (time limit) fails the running trial, so a resubmitted job takes it without waiting."""
    path = tmp_path / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    command = [
        sys.executable, "hyperparameter_tuning.py", "--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "2",
        "--debug", "--device", "cpu", "--scratch", str(shared_dir / "datasets"), "--result_folder", str(tmp_path),
        "--quiet",
    ]
    worker = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (path.exists() and len(pd.read_csv(path)) >= 1):
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 130 and stderr.startswith("interrupted: every finished row is saved"), stderr
    trials = open_tuning(plan_tuning("wine_quality", 3, 2, tmp_path, debug=True), create=False).study.get_trials()
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING], "no setting is left claimed"


def test_select_only_reproduces_the_paper_choices(shared_dir: Path) -> None:
    for dataset in PAPER_BEST_DATASETS:
        paper = pd.read_csv(shared_dir / "paper_results" / "best_hyperparameter_multiple"
                            / f"{dataset}_best_hyperparameter_test_multiple.csv")
        choices = load_choices(shared_dir / "paper_results", dataset, None, PAPER_METHODS)
        assert sorted(choices) == sorted(paper.bits.unique())
        for bits, per_method in choices.items():
            first = paper[paper.bits == bits].iloc[0]
            for method, choice in per_method.items():
                assert choice.setting_id == first[f"best_hyperparameter_id_{method}"], (dataset, bits, method)
                assert choice.val_loss == pytest.approx(first[f"val_loss_{method}"], rel=1e-12)


def test_select_only_prints_csv(shared_dir: Path, capsys) -> None:
    code = best_script.main(["--dataset", "sulfur", "--result_folder", str(shared_dir / "paper_results"), "--bits", "2",
                             "--select_only"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "2 bits: selecting from "
        f"{shared_dir / 'paper_results' / 'sulfur' / 'sulfur_hyperparameter_tuning_2bits_400iterations.csv'}\n"
    )
    printed = pd.read_csv(io.StringIO(captured.out))
    assert printed.columns.tolist() == ["bits", "method", "best_hyperparameter_id", "val_loss"]
    # the paper's own choices at 2 bits (the same on every row of a bit width), read independently
    paper = pd.read_csv(shared_dir / "paper_results" / "best_hyperparameter_multiple"
                        / "sulfur_best_hyperparameter_test_multiple.csv")
    paper = paper[paper.bits == 2]
    assert len(paper) > 0
    methods = [c.removeprefix("best_hyperparameter_id_") for c in paper.columns
               if c.startswith("best_hyperparameter_id_")]
    assert len(methods) == 13
    assert printed.bits.tolist() == [2] * 13 and printed.method.tolist() == methods
    for _, row in printed.iterrows():
        ids = paper[f"best_hyperparameter_id_{row.method}"].unique()
        losses = paper[f"val_loss_{row.method}"].unique()
        assert len(ids) == len(losses) == 1, row.method
        assert row.best_hyperparameter_id == ids[0], row.method
        assert row.val_loss == pytest.approx(losses[0], rel=1e-12), row.method
    # by eye from the file
    assert printed.set_index("method").loc["FP"].tolist() == [2, 6, pytest.approx(0.177237, abs=1e-6)]


def test_tiny_best_setting_run_writes_the_paper_schema(debug_results: Path, shared_dir: Path, tmp_path: Path) -> None:
    path = run_best_settings(
        "wine_quality", debug_results, n_runs=2, methods=["FP", "Po-QQ", "Bw-SQ", "LLT4"],
        scratch=shared_dir / "datasets", save_models=tmp_path, progress=False,
    )
    ours = pd.read_csv(path)
    paper_header = pd.read_csv(shared_dir / "paper_results" / "best_hyperparameter_multiple"
                               / "wine_quality_best_hyperparameter_test_multiple.csv", nrows=0)
    further = ["best_hyperparameter_id_Bw-SQ-ST", "val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "time_Bw-SQ-ST"]
    assert ours.columns.tolist() == paper_header.columns.tolist() + further == list(BEST_COLUMNS)
    assert ours[further].isna().all(axis=None)  # not run
    assert ours[["bits", "step"]].values.tolist() == [[3, 0], [3, 1]]
    assert np.isfinite(ours["test_loss_Bw-SQ"]).all() and ours["test_loss_SQ"].isna().all()
    assert ours["time_Po-QQ"].tolist() == ours["time_FP"].tolist()  # Po-QQ reuses the FP network
    assert len(list(tmp_path.glob("*.pt"))) == 8
    # resuming with one more method fills it in and leaves the rest untouched
    before = ours.copy()
    run_best_settings("wine_quality", debug_results, n_runs=2, methods=["SQ"], scratch=shared_dir / "datasets",
                      progress=False)
    after = pd.read_csv(path)
    assert np.isfinite(after["test_loss_SQ"]).all()
    pd.testing.assert_series_equal(after["test_loss_Bw-SQ"], before["test_loss_Bw-SQ"])


def test_schema_lists_further_methods_after_the_papers(shared_dir: Path) -> None:
    """Bw-SQ-ST's columns follow the paper's (no soft-mode pair: trained straight through, its soft mode is
    its hard mode); the paper's files, which lack them, still read."""
    assert TUNING.columns() == (*TUNING.paper_columns,
                                "val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "train_loss_Bw-SQ-ST", "time_Bw-SQ-ST")
    assert BEST_COLUMNS == (*BEST.paper_columns, "best_hyperparameter_id_Bw-SQ-ST",
                            "val_loss_Bw-SQ-ST", "test_loss_Bw-SQ-ST", "time_Bw-SQ-ST")
    assert len(TUNING.paper_columns) == 10 + 26 + 11 + 9 + 10 and len(BEST.paper_columns) == 4 * 13 + 2
    tuning_frame = read_results(paper_file(shared_dir, "fried", 3), TUNING)
    best_frame = read_results(shared_dir / "paper_results" / "best_hyperparameter_multiple"
                              / "fried_best_hyperparameter_test_multiple.csv", BEST)
    for frame, schema in ((tuning_frame, TUNING), (best_frame, BEST)):
        assert list(frame.columns) == list(schema.paper_columns) and not has_method(frame, "Bw-SQ-ST")


def test_setting_of_runs_a_method_at_another_methods_selected_setting(shared_dir: Path, capsys) -> None:
    paper = shared_dir / "paper_results"
    plain = load_choices(paper, "fried", [2, 3], ["Bw-SQ"])
    choices = load_choices(paper, "fried", [2, 3], ["Bw-SQ", "LSQ"], setting_of={"Bw-SQ-ST": "Bw-SQ"})
    for b in (2, 3):
        assert list(choices[b]) == ["Bw-SQ", "LSQ", "Bw-SQ-ST"]
        assert choices[b]["Bw-SQ-ST"] == choices[b]["Bw-SQ"] == plain[b]["Bw-SQ"]
    assert [choices[b]["Bw-SQ-ST"].setting_id for b in (2, 3)] == [19, 38]  # the paper's best-setting file's ids
    alone = load_choices(paper, "fried", [2], ["Bw-SQ-ST"], setting_of={"Bw-SQ-ST": "Bw-SQ"})
    assert list(alone[2]) == ["Bw-SQ-ST"] and alone[2]["Bw-SQ-ST"] == plain[2]["Bw-SQ"]
    every = load_choices(paper, "fried", [2], setting_of={"Bw-SQ-ST": "SQ"})
    assert list(every[2]) == [*PAPER_METHODS, "Bw-SQ-ST"] and every[2]["Bw-SQ-ST"] == every[2]["SQ"]
    with pytest.raises(ProtocolError, match="takes another's itself"):
        load_choices(paper, "fried", [2], setting_of={"Bw-SQ-ST": "SQ", "SQ": "Bw-SQ"})
    with pytest.raises(ProtocolError, match="do not all hold Bw-SQ-ST"):
        load_choices(paper, "fried", [2], setting_of={"SQ": "Bw-SQ-ST"})
    with pytest.raises(ProtocolError, match=r"was written without the method\(s\) Bw-SQ-ST"):
        load_choices(paper, "fried", [2], ["FP", "SQ"], setting_of={"SQ": "Bw-SQ-ST"})
    argv = ["--dataset", "fried", "--bits", "4", "--methods", "Bw-SQ", "--setting_of", "Bw-SQ-ST=Bw-SQ",
            "--result_folder", str(paper), "--select_only", "--quiet"]
    assert best_script.main(argv) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert printed.method.tolist() == ["Bw-SQ", "Bw-SQ-ST"] and printed.best_hyperparameter_id.tolist() == [19, 19]
    for wrong in ("Bw-SQ-ST", "Bw-SQ-ST=Nope", "Bw-SQ=Bw-SQ"):
        with pytest.raises(SystemExit):
            best_script.main([*argv[:6], "--setting_of", wrong, *argv[8:]])
        assert "expected METHOD=OTHER" in capsys.readouterr().err


def copy_tuning(debug_results: Path, folder: Path) -> Path:
    """The fixture's tuning file in a results folder of its own; returns the copy."""
    path = debug_results / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    target = folder / "wine_quality" / path.name
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    return target


def test_selection_skips_settings_with_a_missing_or_infinite_fold(debug_results: Path, tmp_path: Path) -> None:
    path = copy_tuning(debug_results, tmp_path)
    frame = pd.read_csv(path)
    first, second = frame.hyperparameter_setting_id == 0, frame.hyperparameter_setting_id == 1
    frame.loc[first, "val_loss_Bw-SQ"] = [0.1, np.nan]  # the best fold, but the other one is missing
    frame.loc[second, "val_loss_Bw-SQ"] = [0.5, 0.7]
    frame.loc[first, "val_loss_LSQ"] = [0.3, 0.5]
    frame.loc[second, "val_loss_LSQ"] = [0.2, np.inf]  # diverged on one fold
    frame.to_csv(path, index=False)  # NaN becomes an empty cell, inf "inf"
    choices = load_choices(tmp_path, "wine_quality", [3], ["Bw-SQ", "LSQ"])[3]
    assert (choices["Bw-SQ"].setting_id, choices["Bw-SQ"].val_loss) == (1, pytest.approx(0.6))
    assert (choices["LSQ"].setting_id, choices["LSQ"].val_loss) == (0, pytest.approx(0.4))
    frame["val_loss_FP"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(ProtocolError, match=f"{path.name}: no complete setting of FP has a finite validation loss"):
        load_choices(tmp_path, "wine_quality", [3], ["FP"])


def test_selection_waits_for_all_planned_folds(shared_dir: Path) -> None:
    paper = pd.read_csv(paper_file(shared_dir, "sulfur", 2))  # 100 settings x 4 folds = 400 iterations
    setting, fold = paper.hyperparameter_setting_id, paper.kFold_id
    early = paper[((setting == 0) & (fold < 2)) | ((setting == 1) & (fold == 0))]  # two workers just started
    assert planned_folds(early, 400) == 4
    with pytest.raises(ProtocolError, match="no setting has all its 4 folds yet"):
        select_best(early, 4, ["FP"])
    later = pd.concat([early, paper[setting == 5]])
    choice = select_best(later, planned_folds(later, 400), ["FP"])["FP"]
    assert (choice.setting_id, choice.val_loss) == (
        5, pytest.approx(paper[setting == 5]["val_loss_FP"].mean(), rel=1e-12))
    debug = paper[(setting < 3) & (fold < 2)]  # read as a --debug file of 3 settings x 2 folds
    assert planned_folds(debug, 6) == 2  # setting 2 cannot exist with 4 folds and 6 iterations
    first = debug[debug.hyperparameter_setting_id == 0]
    assert planned_folds(first, 8) == 4  # 2 settings x 4 folds or 4 x 2: cannot tell yet, wait for 4
    assert planned_folds(first, 6) == 2 and planned_folds(first, 2) == 2  # 4 folds cannot make 6 or 2 rows
    assert select_best(first, planned_folds(first, 2), ["FP"])["FP"].setting_id == 0  # --debug --n_steps 1


def test_damaged_tuning_file_is_reported_and_kept(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fried" / "fried_hyperparameter_tuning_3bits_4iterations.csv"
    path.parent.mkdir()
    damaged = bytes(range(256)) * 4
    path.write_bytes(damaged)
    assert best_script.main(["--dataset", "fried", "--result_folder", str(tmp_path), "--select_only"]) == 2
    info, error = capsys.readouterr().err.splitlines()
    assert info == f"3 bits: selecting from {path}"
    assert "is not a readable CSV" in error
    assert path.read_bytes() == damaged


def test_save_models_names_the_runs_it_does_not_train_again(
    debug_results: Path, shared_dir: Path, tmp_path: Path, capsys,
) -> None:
    copy_tuning(debug_results, tmp_path)
    run = dict(n_runs=1, methods=["FP"], scratch=shared_dir / "datasets", progress=False)
    run_best_settings("wine_quality", tmp_path, save_models=tmp_path / "first", **run)
    assert [p.name for p in (tmp_path / "first").glob("*.pt")] == ["wine_quality_3bits_FP_run0.pt"]
    assert capsys.readouterr().err == ""
    path = run_best_settings("wine_quality", tmp_path, save_models=tmp_path / "again", **run)
    assert list((tmp_path / "again").glob("*.pt")) == []
    assert f"1 of the requested (bits, run, method) results are already in {path}" in capsys.readouterr().err


def test_runs_sharing_the_output_merge(debug_results: Path, shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A run for LSQ finishes while one for FP trains (as another job would): both land in the file."""
    copy_tuning(debug_results, tmp_path)
    run = dict(n_runs=1, scratch=shared_dir / "datasets", progress=False)
    train = best_settings.run_methods
    others = []

    def train_while_another_run_writes(names, *args, **kwargs):
        if names == ["FP"] and not others:
            others.append(run_best_settings("wine_quality", tmp_path, methods=["LSQ"], **run))
        return train(names, *args, **kwargs)

    monkeypatch.setattr(best_settings, "run_methods", train_while_another_run_writes)
    path = run_best_settings("wine_quality", tmp_path, methods=["FP"], **run)
    assert others == [path]
    merged = pd.read_csv(path)
    assert len(merged) == 1 and merged[["test_loss_FP", "test_loss_LSQ"]].notna().all(axis=None)
    # a run that finds its work done by another run trains nothing
    monkeypatch.setattr(best_settings, "run_methods", None)
    assert run_best_settings("wine_quality", tmp_path, methods=["LSQ", "FP"], **run) == path


def test_runs_from_another_tuning_are_refused(debug_results: Path, shared_dir: Path, tmp_path: Path) -> None:
    copy_tuning(debug_results, tmp_path)
    run = dict(methods=["FP"], scratch=shared_dir / "datasets", progress=False)
    path = run_best_settings("wine_quality", tmp_path, n_runs=1, **run)
    frame = pd.read_csv(path)
    frame["val_loss_FP"] *= 1.5  # same setting id, but another tuning file's mean validation loss
    frame.to_csv(path, index=False)
    with pytest.raises(ProtocolError, match="computed with setting 0 .*validation loss .* for FP at 3 bits, "
                                            "but the tuning now selects setting 0"):
        run_best_settings("wine_quality", tmp_path, n_runs=2, **run)


def test_cut_off_and_header_only_files(debug_results: Path, shared_dir: Path, tmp_path: Path) -> None:
    tuning = copy_tuning(debug_results, tmp_path)
    content = tuning.read_bytes()
    tuning.write_bytes(content[: len(content) - 100])  # the last row cut off mid-line
    with pytest.raises(ProtocolError, match="ends without a newline, so its last line may be cut short"):
        run_tuning(plan_tuning("wine_quality", 3, 2, tmp_path, debug=True), shared_dir / "datasets", progress=False)
    with pytest.raises(ProtocolError, match="ends without a newline, so its last line may be cut short"):
        load_choices(tmp_path, "wine_quality", None)
    lines = content.splitlines(keepends=True)
    tuning.write_bytes(lines[0] + b"," + lines[1].split(b",", 1)[1])  # a row without its setting id
    with pytest.raises(ProtocolError, match="has no hyperparameter_setting_id on line 2"):
        load_choices(tmp_path, "wine_quality", None)
    tuning.write_bytes(lines[0])  # the header alone, as --export_csv writes it before any row
    with pytest.raises(ProtocolError, match="has no rows yet"):
        load_choices(tmp_path, "wine_quality", None)
    run_tuning(plan_tuning("wine_quality", 3, 2, tmp_path, debug=True), shared_dir / "datasets", progress=False)
    assert len(pd.read_csv(tuning)) == 4
    best = run_best_settings("wine_quality", tmp_path, n_runs=1, methods=["FP"], scratch=shared_dir / "datasets",
                             progress=False)
    best.write_bytes(best.read_bytes()[:-10])
    with pytest.raises(ProtocolError, match="ends without a newline, so its last line may be cut short"):
        run_best_settings("wine_quality", tmp_path, n_runs=2, methods=["FP"], scratch=shared_dir / "datasets",
                          progress=False)


def _wait_until_torch_loads(worker: subprocess.Popen) -> None:
    """Return once ``worker`` has mapped libtorch: it is still importing."""
    maps = Path(f"/proc/{worker.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux's /proc to see when the worker loads torch")
    deadline = time.monotonic() + 60
    while "libtorch" not in maps.read_text():
        assert worker.poll() is None and time.monotonic() < deadline, "the worker ended or never loaded torch"
        time.sleep(0.002)


def test_a_worker_started_with_sigint_ignored_keeps_running() -> None:
    command = [sys.executable, "hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--list_settings"]
    worker = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              # as `worker &` in a script
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _wait_until_torch_loads(worker)
    worker.send_signal(signal.SIGINT)
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0 and len(stdout.splitlines()) == 101, stderr


def test_result_columns_in_another_order_are_read(shared_dir: Path, tmp_path: Path) -> None:
    paper = pd.read_csv(paper_file(shared_dir, "fried", 3))
    shuffled = tmp_path / "fried" / "fried_hyperparameter_tuning_3bits_400iterations.csv"
    shuffled.parent.mkdir()
    paper[list(reversed(paper.columns))].to_csv(shuffled, index=False)  # say, an older layout
    assert load_choices(tmp_path, "fried", [3]) == load_choices(shared_dir / "paper_results", "fried", [3])


def test_output_into_a_reader_that_stops_early_is_quiet() -> None:
    command = [sys.executable, "hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--n_steps", "200000",
               "--list_settings"]
    worker = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert worker.stdout.readline().startswith(b"hyperparameter_setting_id")
    worker.stdout.close()  # as `| head -1` does: 200 000 settings are far more than a pipe holds
    assert worker.wait(timeout=60) == 141 and worker.stderr.read() == b""


def test_unusable_paths_are_one_sentence(debug_results: Path, shared_dir: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    tuning = ["--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "2", "--debug", "--quiet"]
    assert tuning_script.main([*tuning, "--result_folder", str(a_file)]) == 2
    copy_tuning(debug_results, tmp_path)
    best = ["--dataset", "wine_quality", "--n_steps", "1", "--methods", "FP", "--quiet", "--scratch",
            str(shared_dir / "datasets")]
    assert best_script.main([*best, "--result_folder", str(tmp_path), "--save_models", str(a_file)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith(f"error: cannot use {a_file}") for line in errors), errors
    assert not (tmp_path / "best_hyperparameter_multiple").exists()  # refused before any training
    assert a_file.read_text() == "not a folder"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "9"], "bits must be an integer from 2 to 8"),
        (["hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "1"], "bits must be an integer from 2 to 8"),
        (["hyperparameter_tuning.py", "--dataset", "nope", "--n_bits", "3"], "unknown dataset 'nope'"),
        (["hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--n_steps", "0"], "at least 1"),
        (["hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--n_steps", str(10**20)],
         f"--n_steps: expected an integer from 1 to 1000000, got '{10**20}'"),
        (["best_hyperparameter_testing_multiple.py", "--dataset", "fried", "--n_steps", "1000001"],
         "--n_steps: expected an integer from 1 to 1000000, got '1000001'"),
        (["best_hyperparameter_testing_multiple.py", "--dataset", "fried", "--methods", "XQ"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    result = run_script(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_tuning_file_is_refused(tmp_path: Path) -> None:
    result = run_script("best_hyperparameter_testing_multiple.py", "--dataset", "fried", "--result_folder",
                        str(tmp_path))
    assert result.returncode == 2 and "run hyperparameter_tuning.py first" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_of_another_sampler_s_files_says_so(shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "fried").mkdir()
    sampled = tmp_path / "fried" / "fried_hyperparameter_tuning_3bits_400iterations_random_Bw-SQ.csv"
    sampled.write_bytes(paper_file(shared_dir, "fried", 3).read_bytes())
    with pytest.raises(ProtocolError, match=f"no tuning files .*\\({sampled.name} is the file of another sampler, "
                                            "which is not selected from\\)"):
        load_choices(tmp_path, "fried", None)


def test_foreign_tuning_csv_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "fried"
    folder.mkdir()
    foreign = folder / "fried_hyperparameter_tuning_3bits_4iterations.csv"
    foreign.write_text("a,b\n1,2\n")
    for script in (["hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--n_steps", "2", "--debug"],
                   ["best_hyperparameter_testing_multiple.py", "--dataset", "fried"]):
        result = run_script(*script, "--result_folder", str(tmp_path))
        assert result.returncode == 2 and "schema" in result.stderr, result.stderr
    assert foreign.read_text() == "a,b\n1,2\n"


def test_tuning_rows_of_other_settings_are_refused(debug_results: Path, tmp_path: Path) -> None:
    path = debug_results / "wine_quality" / "wine_quality_hyperparameter_tuning_3bits_4iterations.csv"
    target = tmp_path / "wine_quality" / path.name
    target.parent.mkdir()
    frame = pd.read_csv(path)
    frame.loc[0, "learning_rate"] = 0.5
    frame.to_csv(target, index=False)
    with pytest.raises(ProtocolError, match="would not produce"):
        run_tuning(plan_tuning("wine_quality", 3, 2, tmp_path, debug=True), progress=False)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"foo": [1]}, "unknown keys"),
        ({"hidden_layers": []}, "non-empty list"),
        ({"hidden_neurons": [32.5]}, "integers"),
        ({"learning_rate": ["fast"]}, "numbers"),
        ({"num_epochs": [0]}, "num_epochs must be >= 1, got 0"),
        ({"dropout_rate": [0.2, 1.5]}, "dropout_rate must be in [0, 1), got 1.5"),
        ({"decrease_factor": [0]}, "decrease_factor must be in (0, 1], got 0"),
        ({"learning_rate": [0.0]}, "learning_rate must be > 0, got 0.0"),
        ({"weight_decay": [-1e-4]}, "weight_decay must be >= 0, got -0.0001"),
    ],
)
def test_bad_search_space_is_refused(tmp_path: Path, space: dict, message: str) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    result = run_script("hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--search_space", str(path),
                        "--list_settings")
    assert result.returncode == 2 and message in result.stderr


def test_a_search_space_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_bytes('{"hidden_neurons": [5], "num_epochs": [3], "caf\xe9": [1]}'.encode("latin-1"))  # Latin-1 bytes
    result = run_script("hyperparameter_tuning.py", "--dataset", "fried", "--n_bits", "3", "--search_space", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    expected = f"the search space {path} is not UTF-8 text (byte 0xe9 at position 47); save it as UTF-8 JSON"
    assert result.stderr == f"error: {expected}\n"


def test_custom_search_space_is_used(tmp_path: Path, capsys) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"hidden_neurons": [7], "num_epochs": [2, 3]}))
    assert tuning_script.main(["--dataset", "fried", "--n_bits", "3", "--n_steps", "5", "--search_space", str(path),
                               "--list_settings"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert printed.hidden_neurons.eq(7).all() and set(printed.num_epochs) <= {2, 3}
    assert set(printed.hidden_layers) <= {5, 6, 8, 10}


def test_a_tuning_file_whose_name_gives_other_bits_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "fried").mkdir()
    mislabeled = tmp_path / "fried" / "fried_hyperparameter_tuning_3bits_400iterations.csv"
    mislabeled.write_bytes(paper_file(shared_dir, "fried", 2).read_bytes())  # 2-bit rows
    with pytest.raises(ProtocolError, match="holds rows of 2 bits, but its name says 3 bits"):
        load_choices(tmp_path, "fried", None)
    mislabeled.rename(mislabeled.with_name("fried_hyperparameter_tuning_9bits_400iterations.csv"))
    with pytest.raises(ProtocolError, match=r"names 9 bits, outside 2\.\.8"):
        load_choices(tmp_path, "fried", None)


def test_missing_bit_widths_are_named(shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "fried").mkdir()
    (tmp_path / "fried" / paper_file(shared_dir, "fried", 3).name).write_bytes(
        paper_file(shared_dir, "fried", 3).read_bytes())
    with pytest.raises(ProtocolError, match="no tuning file for fried at 2, 4 bits in .*drop them from --bits"):
        load_choices(tmp_path, "fried", [2, 3, 4])


def test_tuning_seeds_follow_the_spec(tmp_path: Path) -> None:
    """Row r = setting * k + fold is seeded with 42 + fold + r * k (the paper's tuning seeds), worked out by hand."""
    plan = plan_tuning("wine_quality", 3, 3, tmp_path)  # 4 folds
    assert [plan.seed(s, f) for s, f in [(0, 0), (0, 1), (0, 3), (1, 0), (2, 3)]] == [42, 47, 57, 58, 89]
    debug = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True)  # 2 folds
    assert [debug.seed(s, f) for s, f in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [42, 45, 46, 49]


def _distinct_results() -> dict[str, MethodResult]:
    """Method i: val i + .1, test i + .2, soft val i + .3, soft test i + .4, train i + .5, seconds i + .6."""
    return {
        m: MethodResult({"val": i + 0.1, "test": i + 0.2}, i + 0.5, i + 0.6,
                        {"val": i + 0.3, "test": i + 0.4} if METHODS[m].soft_eval else {})
        for i, m in enumerate(METHOD_NAMES)
    }


def test_tuning_row_takes_each_column_from_its_result_and_seed(shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A fold's row holds each method's hard val/test, soft val/test and train loss in their columns,
    and the fold trains with the plan's seed."""
    plan = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True)
    calls = []

    def fake_run_methods(names, settings, train, evaluations, bits, seed, on_stack=None, n_classes=None):
        calls.append((list(names), sorted(evaluations), bits, seed))
        return _distinct_results()

    monkeypatch.setattr(tuning, "run_methods", fake_run_methods)
    folds = tuning._Folds(plan, shared_dir / "datasets", "cpu")
    claim = SimpleNamespace(setting_id=1, values=plan.setting_values(1))  # what row reads of a Claim
    row = folds.row(claim, 1, on_stack=lambda _: None)
    assert calls == [(list(METHOD_NAMES), ["test", "val"], 3, 49)]
    for i, m in enumerate(METHOD_NAMES):
        assert (row[f"val_loss_{m}"], row[f"test_loss_{m}"]) == (i + 0.1, i + 0.2), m
        if m in TRAINED:
            assert row[f"train_loss_{m}"] == i + 0.5, m
        if m in SOFT_EVALUATED:
            assert (row[f"val_loss_{m}_train"], row[f"test_loss_{m}_train"]) == (i + 0.3, i + 0.4), m
    assert (row["hyperparameter_setting_id"], row["kFold_id"], row["bits"]) == (1, 1, 3)


def test_best_setting_run_s_is_seeded_with_42_plus_s(shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Run s trains with seed 42 + s (the paper's best-setting seeds), not one seed for all runs."""
    setting = Setting(0.0, 1e-3, 1, 4, 1, 1e-3, 0.0)
    monkeypatch.setattr(best_settings, "load_choices", lambda *args, **kwargs: {3: {"FP": Choice(0, 0.5, setting)}})
    seeds = []

    def fake_run_methods(names, settings, train, evaluations, bits, seed, on_stack=None, n_classes=None):
        seeds.append(seed)
        return {m: MethodResult({"test": 1.0 + seed}, 0.0, 0.0) for m in names}

    monkeypatch.setattr(best_settings, "run_methods", fake_run_methods)
    path = run_best_settings("wine_quality", tmp_path, n_runs=3, methods=["FP"], scratch=shared_dir / "datasets",
                             progress=False)
    assert seeds == [42, 43, 44]
    assert pd.read_csv(path)["test_loss_FP"].tolist() == [43.0, 44.0, 45.0]


def test_selection_takes_the_first_setting_on_ties() -> None:
    """Settings 1 and 2 tie on the mean validation loss (0.5, exact in binary); the first is picked."""
    values = {"weight_decay": 0.0, "learning_rate": 0.001, "hidden_layers": 1, "hidden_neurons": 5,
              "num_epochs": 10, "decrease_factor": 0.001, "dropout_rate": 0.0}
    assert list(SETTING_KEYS) == list(values)
    losses = {0: [1.0, 1.0], 1: [0.25, 0.75], 2: [0.5, 0.5], 3: [0.75, 0.5]}
    frame = pd.DataFrame([{"hyperparameter_setting_id": s, "kFold_id": f, **values, "val_loss_FP": v}
                          for s, fold_losses in losses.items() for f, v in enumerate(fold_losses)])
    choice = select_best(frame, 2, ["FP"])["FP"]
    assert (choice.setting_id, choice.val_loss) == (1, 0.5)


def test_a_loss_that_is_not_a_number_is_one_sentence(shared_dir: Path, tmp_path: Path) -> None:
    """A damaged cell is refused by the reader with its column named, not a TypeError in the selection."""
    frame = pd.read_csv(paper_file(shared_dir, "fried", 3))
    frame["val_loss_FP"] = frame["val_loss_FP"].astype(object)
    frame.loc[5, "val_loss_FP"] = "0.3oops"
    damaged = tmp_path / "damaged.csv"
    frame.to_csv(damaged, index=False)
    with pytest.raises(ProtocolError, match="non-numeric values in column val_loss_FP"):
        read_results(damaged, TUNING)


@pytest.mark.parametrize("value", ["one", "1.5", "3x", "9223372036854775808", "-9223372036854775809"])
@pytest.mark.parametrize("column", ["hyperparameter_setting_id", "kFold_id", "bits"])
def test_an_integer_column_with_no_whole_number_is_one_sentence(
    shared_dir: Path, tmp_path: Path, column: str, value: str,
) -> None:
    frame = pd.read_csv(paper_file(shared_dir, "fried", 3)).astype({column: object})
    frame.loc[6, column] = value
    damaged = tmp_path / "damaged.csv"
    frame.to_csv(damaged, index=False)
    with pytest.raises(ProtocolError,
                       match=f"has '{value}' in column {column} on line 8, where a whole number belongs"):
        read_results(damaged, TUNING)


def test_a_row_twice_is_refused_not_averaged_as_another_fold(shared_dir: Path, tmp_path: Path) -> None:
    """Two machines' CSVs pasted together hold a (setting, fold) twice; read as another fold it would move the
    selection."""
    paper = pd.read_csv(paper_file(shared_dir, "fried", 3))
    (tmp_path / "fried").mkdir()
    pasted = tmp_path / "fried" / paper_file(shared_dir, "fried", 3).name
    copy_of_row_0 = paper.iloc[[0]].assign(**{"val_loss_Bw-SQ": 1e-6})
    pd.concat([paper, copy_of_row_0]).to_csv(pasted, index=False)
    with pytest.raises(ProtocolError, match="holds the row of hyperparameter_setting_id 0, kFold_id 0 twice "
                                            f"\\(lines 2 and {len(paper) + 2}\\)"):
        load_choices(tmp_path, "fried", [3])
    best = pd.read_csv(shared_dir / "paper_results" / "best_hyperparameter_multiple"
                       / "fried_best_hyperparameter_test_multiple.csv")
    best.loc[1, "step"] = best.loc[0, "step"]  # a run edited by hand into another's place
    edited = tmp_path / "best.csv"
    best.to_csv(edited, index=False)
    with pytest.raises(ProtocolError,
                       match=f"holds the row of bits {best.bits[0]}, step {best.step[0]} twice \\(lines 2 and 3\\)"):
        read_results(edited, BEST)


def test_a_csv_that_its_storage_does_not_hold_is_refused_and_kept(
    debug_results: Path, shared_dir: Path, tmp_path: Path,
) -> None:
    """The CSV is rewritten from the storage: rows it holds otherwise (a copied or merged file) would be lost."""
    shutil.copytree(debug_results / "wine_quality", tmp_path / "wine_quality")
    plan = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True)
    written = plan.path.read_bytes()
    run_tuning(plan, shared_dir / "datasets", progress=False)  # the storage's own CSV: nothing to do, nothing changes
    assert plan.path.read_bytes() == written
    frame = pd.read_csv(plan.path)
    frame.loc[1, "val_loss_Bw-SQ"] *= 1 + 1e-9  # setting 0 fold 1: more than the CSV's printed precision
    frame.to_csv(plan.path, index=False)
    foreign = plan.path.read_bytes()
    with pytest.raises(ProtocolError,
                       match="holds other results for setting 0 fold 1 than .*journal.*; move the CSV away to keep it"):
        run_tuning(plan, shared_dir / "datasets", progress=False)
    with pytest.raises(ProtocolError, match="holds other results for setting 0 fold 1"):
        export_tuning(plan)  # --export_csv
    assert plan.path.read_bytes() == foreign
    # another sampler's file name with a fresh storage: the storage lacks every row
    random_plan = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True, sampler="random")
    random_plan.path.write_bytes(written)
    with pytest.raises(ProtocolError,
                       match="holds setting 0 fold 0, which .* lacks, and the CSV is rewritten from there"):
        run_tuning(random_plan, shared_dir / "datasets", progress=False)
    assert random_plan.path.read_bytes() == written


def _cut_last_line(path: Path) -> None:
    """The last line keeps its first 30 cells and its newline: the 31st column, test_loss_Bw-MQ, is missing first."""
    *lines, last = path.read_text().splitlines()
    path.write_text("\n".join([*lines, ",".join(last.split(",")[:30])]) + "\n")


def _clear(line: int, column: str, value: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        frame = pd.read_csv(path)
        frame.loc[line - 2, column] = value
        frame.to_csv(path, index=False)
    return damage


@pytest.mark.parametrize("damage, where", [
    (_cut_last_line, "a blank cell in test_loss_Bw-MQ on line 5 (setting 1 fold 1)"),
    (_clear(4, "test_loss_LLT4", np.nan), "a blank cell in test_loss_LLT4 on line 4 (setting 1 fold 0)"),
    (_clear(2, "time_LSQ", np.inf), "inf in time_LSQ on line 2 (setting 0 fold 0)"),
    (_clear(3, "val_loss_SQ_train", -0.25), "-0.25 in val_loss_SQ_train on line 3 (setting 0 fold 1)"),
])
def test_a_damaged_row_is_refused_with_or_without_its_journal(
    debug_results: Path, shared_dir: Path, tmp_path: Path, damage: Callable[[Path], None], where: str,
) -> None:
    """Without the journal the CSV's rows are imported: a row lacking a result of its methods is damage, not data."""
    shutil.copytree(debug_results / "wine_quality", tmp_path / "wine_quality")
    plan = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True)
    damage(plan.path)
    damaged = plan.path.read_bytes()
    with pytest.raises(ProtocolError, match="holds other results for setting . fold . than journal"):
        run_tuning(plan, shared_dir / "datasets", progress=False)
    plan.path.with_suffix(".journal").unlink()
    with pytest.raises(ProtocolError, match="rows that journal:.* lacks .* pass --import_csv to continue from them"):
        run_tuning(plan, shared_dir / "datasets", progress=False)
    with pytest.raises(ProtocolError, match=re.escape(
            f"{plan.path} has {where}, where a tuning row holds a finite loss or time >= 0; "
            "repair that line, or delete it to have the row computed again")):
        run_tuning(plan, shared_dir / "datasets", progress=False, import_csv=True)
    assert plan.path.read_bytes() == damaged


def test_rows_without_their_journal_are_continued_from_only_when_asked(
    debug_results: Path, shared_dir: Path, tmp_path: Path, capsys,
) -> None:
    """A loss edited into another plausible number (123.0) cannot be told from the file: without its journal the
    CSV's rows are refused, with one sentence and exit 2, unless --import_csv takes them as they stand."""
    shutil.copytree(debug_results / "wine_quality", tmp_path / "wine_quality")
    plan = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True)
    _clear(3, "test_loss_Bw-SQ", 123.0)(plan.path)
    plan.path.with_suffix(".journal").unlink()
    edited = plan.path.read_bytes()
    arguments = ["--dataset", "wine_quality", "--n_bits", "3", "--n_steps", "2", "--debug", "--quiet",
                 "--result_folder", str(tmp_path), "--scratch", str(shared_dir / "datasets")]
    assert tuning_script.main(arguments) == 2
    error = capsys.readouterr().err
    assert f"{plan.path} holds 4 rows that journal:" in error and "pass --import_csv" in error
    assert len(error.strip().splitlines()) == 1 and plan.path.read_bytes() == edited
    assert tuning_script.main([*arguments, "--import_csv"]) == 0  # taken as it stands
    assert pd.read_csv(plan.path)["test_loss_Bw-SQ"].iloc[1] == 123.0


def test_folds_of_one_setting_with_other_hyperparameters_are_refused(shared_dir: Path, tmp_path: Path) -> None:
    """A hand merge of two tunings can give a setting's folds other values; the selection would use the first fold's."""
    paper = pd.read_csv(paper_file(shared_dir, "fried", 3))
    (tmp_path / "fried").mkdir()
    row = paper.index[(paper.hyperparameter_setting_id == 5) & (paper.kFold_id == 2)][0]
    paper.loc[row, "hidden_neurons"] = paper.loc[row, "hidden_neurons"] * 2
    paper.to_csv(tmp_path / "fried" / paper_file(shared_dir, "fried", 3).name, index=False)
    with pytest.raises(ProtocolError, match="setting 5 has other hidden_neurons on some folds than on others"):
        load_choices(tmp_path, "fried", [3])


def test_a_column_outside_the_schema_is_refused_not_dropped(shared_dir: Path, tmp_path: Path) -> None:
    """A file with a column this project does not write is refused: reading it would drop the column on the next
    write."""
    frame = pd.read_csv(paper_file(shared_dir, "fried", 3))
    frame["test_loss_Bw-XX"] = 1.0  # say, a method registered in another checkout
    other = tmp_path / "other.csv"
    frame.to_csv(other, index=False)
    with pytest.raises(ProtocolError, match=r"unexpected \['test_loss_Bw-XX'\]"):
        read_results(other, TUNING)


def test_best_setting_ids_are_written_as_integers_also_beside_empty_cells(tmp_path: Path) -> None:
    """The ids stay integers ("12", as in the paper's files) where a method was not run (an empty cell)."""
    frame = pd.DataFrame({c: [1.0, 2.0] if c.startswith("best_") else [0.5, 0.25] for c in BEST_COLUMNS})
    frame["best_hyperparameter_id_FP"] = [12.0, np.nan]  # FP not run in the second row
    frame["best_hyperparameter_id_LSQ"] = [3.0, 7.0]
    frame["bits"], frame["step"] = [3.0, 3.0], [0.0, 1.0]
    path = tmp_path / "best.csv"
    write_results(frame, path, BEST)
    rows = list(csv.DictReader(path.open()))
    assert [r["best_hyperparameter_id_FP"] for r in rows] == ["12", ""]
    assert [r["best_hyperparameter_id_LSQ"] for r in rows] == ["3", "7"]
    assert [(r["bits"], r["step"]) for r in rows] == [("3", "0"), ("3", "1")]
    back = read_results(path, BEST)
    assert (str(back["best_hyperparameter_id_FP"].dtype) == "Int64"
            and back["best_hyperparameter_id_LSQ"].tolist() == [3, 7])


def test_debug_space_and_its_draws_follow_the_spec() -> None:
    """--debug replaces hidden_neurons by [5], num_epochs by [10], hidden_layers by [1, 2] (in this order)."""
    space = paper_search_space(debug=True)
    assert space == {
        "weight_decay": [0], "learning_rate": [0.001, 0.0001], "hidden_layers": [1, 2], "hidden_neurons": [5],
        "num_epochs": [10], "decrease_factor": [0.001, 0.0001], "dropout_rate": [0.0, 0.2, 0.4, 0.5],
    }
    assert list(space) == list(SETTING_KEYS)
    np.random.seed(42)  # the paper's draws, key by key
    np.random.choice([0], size=6)
    np.random.choice([0.001, 0.0001], size=6)
    layers = np.random.choice([1, 2], size=6)
    assert draw_settings(space, 6)["hidden_layers"].tolist() == layers.tolist()


@pytest.mark.parametrize("key", ["hidden_layers", "hidden_neurons", "num_epochs"])
def test_search_space_counts_must_be_integers(tmp_path: Path, key: str) -> None:
    """Layers, neurons and epochs are counts: 2.5 is refused when the space is read, not by a TypeError in training."""
    path = tmp_path / "space.json"
    path.write_text(json.dumps({key: [2, 2.5]}))
    with pytest.raises(ProtocolError, match=f"{key} must list integers, got 2.5"):
        load_search_space(path)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two"])
def test_counts_on_the_command_line_are_at_least_one(text: str) -> None:
    """--n_steps, --threads and --heartbeat take integers >= 1 (a 0-second heartbeat would make every worker
    look dead)."""
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected an integer of at least 1, got '{text}'"):
        parse_positive(text)
    assert parse_positive("1") == 1 and parse_positive("60") == 60


def test_step_counts_are_capped_before_anything_is_drawn() -> None:
    assert parse_steps("1000000") == 1000000
    for text in ("1000001", str(10**20)):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected an integer from 1 to 1000000, got '{text}'"):
            parse_steps(text)
    with pytest.raises(ProtocolError,
                       match=r"--n_steps \(the number of settings\) must be from 1 to 1000000, got 1000000000"):
        draw_settings(paper_search_space(), 10**9)  # 7.45 GiB of draws, refused before any
