"""Tuning with many workers on real optuna storages: shared work, kills, stale workers, resume.

PostgreSQL runs where ``BSQ_TEST_POSTGRES_URL`` names a server (``.ci/postgres.sh`` starts one).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import hyperparameter_tuning as tuning_script
from protocol import study
from protocol.common import ProtocolError, run_cli
from protocol.search_space import paper_search_space
from protocol.study import BEAT_ATTR, FOLD_PREFIX, OWNER_ATTR, SETTING_ATTR, claim_setting, open_storage
from protocol.tuning import TuningPlan, open_tuning, plan_tuning

REPO = Path(__file__).resolve().parents[1]
N_SETTINGS, N_ROWS = 2, 4  # --debug: two folds per setting
# Every run that trains is a worker process with one thread: the results depend on the number of
# threads, and two workers with two threads each on two cores spin-wait each other to a crawl.
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
POSTGRES_URL = os.environ.get("BSQ_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL,
                                    reason="BSQ_TEST_POSTGRES_URL is unset; run .ci/postgres.sh and export its URL")


def arguments(shared: Path, folder: Path, storage: str | None) -> list[str]:
    storage_args = ["--storage", storage] if storage else []
    return [
        "--dataset", "wine_quality", "--n_bits", "3", "--n_steps", str(N_SETTINGS), "--debug", "--device", "cpu",
        "--scratch", str(shared / "datasets"), "--result_folder", str(folder),
        "--quiet", "--heartbeat", "1", *storage_args,
    ]


def start_worker(args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "hyperparameter_tuning.py", *args]
    return subprocess.Popen(command, cwd=REPO, env=WORKER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish_worker(worker: subprocess.Popen) -> None:
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output


def debug_plan(
    folder: Path, n_settings: int = N_SETTINGS, sampler: str = "paper", objective: str = "Bw-SQ",
) -> TuningPlan:
    return plan_tuning("wine_quality", 3, n_settings, folder, debug=True, sampler=sampler, objective=objective)


def trials(plan: TuningPlan, storage: str | None) -> list[optuna.trial.FrozenTrial]:
    return open_tuning(plan, storage, create=False).study.get_trials()


def stored_folds(trial: optuna.trial.FrozenTrial) -> list[int]:
    return sorted(int(key.removeprefix(FOLD_PREFIX)) for key in trial.user_attrs if key.startswith(FOLD_PREFIX))


def without_times(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not c.startswith("time_")]]


def assert_same_rows(path: Path, reference: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(without_times(pd.read_csv(path)), without_times(reference), check_exact=True)


def assert_each_row_stored_once(plan: TuningPlan, storage: str | None) -> list[optuna.trial.FrozenTrial]:
    """Every (setting, fold) is stored by exactly one trial, and no trial is left running."""
    found = trials(plan, storage)
    stored = [(t.user_attrs[SETTING_ATTR], fold) for t in found for fold in stored_folds(t)]
    assert sorted(stored) == list(plan.rows())
    assert not [t.number for t in found if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return found


def fresh_postgres(plan: TuningPlan) -> str:
    """The test server's URL, without the study a previous test run left there."""
    assert POSTGRES_URL
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=plan.spec().name, storage=open_storage(POSTGRES_URL).backend)
    return POSTGRES_URL


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_dir: Path) -> pd.DataFrame:
    """The CSV of one uninterrupted single-process run (default storage)."""
    folder = tmp_path_factory.mktemp("reference")
    finish_worker(start_worker(arguments(shared_dir, folder, None)))
    return pd.read_csv(debug_plan(folder).path)


def storage_url(kind: str, plan: TuningPlan, folder: Path) -> str:
    return {"journal": f"journal:{folder / 'shared.journal'}",
            "sqlite": f"sqlite:///{folder / 'shared.db'}"}.get(kind) or fresh_postgres(plan)


@pytest.mark.parametrize("kind", ["journal", "sqlite", pytest.param("postgres", marks=needs_postgres)])
def test_two_workers_share_the_work(kind: str, tmp_path: Path, shared_dir: Path, reference: pd.DataFrame) -> None:
    plan = debug_plan(tmp_path)
    storage = storage_url(kind, plan, tmp_path)
    workers = [start_worker(arguments(shared_dir, tmp_path, storage)) for _ in range(2)]
    for worker in workers:
        finish_worker(worker)
    assert_same_rows(plan.path, reference)
    found = assert_each_row_stored_once(plan, storage)
    assert [t.user_attrs[SETTING_ATTR] for t in found] == list(range(N_SETTINGS)), "one trial per setting, in order"
    assert all(t.state == TrialState.COMPLETE for t in found)
    # the trial's value is the mean validation loss of the objective (Bw-SQ)
    means = reference.groupby("hyperparameter_setting_id")["val_loss_Bw-SQ"].mean()
    assert [t.value for t in found] == pytest.approx(means.tolist(), rel=1e-12)
    # --export_csv regenerates the CSV from the storage alone
    plan.path.unlink()
    assert tuning_script.main([*arguments(shared_dir, tmp_path, storage), "--export_csv"]) == 0
    assert_same_rows(plan.path, reference)


def wait_for_first_row(path: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (path.exists() and len(pd.read_csv(path)) >= 1):
        time.sleep(0.02)


def test_killed_worker_loses_only_its_fold(tmp_path: Path, shared_dir: Path, reference: pd.DataFrame) -> None:
    args, plan = arguments(shared_dir, tmp_path, None), debug_plan(tmp_path)
    victim = start_worker(args)
    wait_for_first_row(plan.path)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 1 <= len(pd.read_csv(plan.path)) < N_ROWS, "the worker should be killed part-way"
    killed = [t for t in trials(plan, None) if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and stored_folds(killed[0]) == [0], "killed in the second fold of its setting"
    finish_worker(start_worker(args))
    assert_same_rows(plan.path, reference)
    found = assert_each_row_stored_once(plan, None)  # the killed fold alone was computed twice
    assert found[killed[0].number].state == TrialState.FAIL
    retry = [t for t in found
             if t.user_attrs[SETTING_ATTR] == killed[0].user_attrs[SETTING_ATTR] and t.state == TrialState.COMPLETE]
    assert len(retry) == 1 and stored_folds(retry[0]) == [1], "the stored fold is not recomputed"


def test_silent_worker_is_taken_over(tmp_path: Path, shared_dir: Path, reference: pd.DataFrame) -> None:
    """A frozen worker (its PID alive, its heartbeat silent) loses its setting after 5 beats; awake, it stores
    nothing."""
    storage = f"journal:{tmp_path / 'shared.journal'}"
    args, plan = arguments(shared_dir, tmp_path, storage), debug_plan(tmp_path)
    frozen = start_worker(args)
    wait_for_first_row(plan.path)
    frozen.send_signal(signal.SIGSTOP)
    try:
        finish_worker(start_worker(args))
    finally:
        frozen.send_signal(signal.SIGCONT)
    finish_worker(frozen)
    assert_same_rows(plan.path, reference)
    found = assert_each_row_stored_once(plan, storage)
    owners = {t.user_attrs[OWNER_ATTR]["pid"]: t.state for t in found if t.state != TrialState.COMPLETE}
    assert owners == {frozen.pid: TrialState.FAIL}


def claim_one(plan: TuningPlan, storage: str, barrier, results) -> None:
    tuning = open_tuning(plan, storage)
    barrier.wait()
    claim = claim_setting(tuning, {})
    results.put(None if claim is None else claim.setting_id)


@pytest.mark.parametrize("kind", ["journal", "sqlite", pytest.param("postgres", marks=needs_postgres)])
def test_simultaneous_workers_enqueue_the_settings_once(kind: str, tmp_path: Path) -> None:
    n_workers, n_settings = 4, 6
    plan = debug_plan(tmp_path, n_settings)
    storage = storage_url(kind, plan, tmp_path)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(n_workers), context.Queue()
    processes = [context.Process(target=claim_one, args=(plan, storage, barrier, results)) for _ in range(n_workers)]
    for process in processes:
        process.start()
    claimed = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert sorted(claimed) == list(range(n_workers)), "each worker took another setting"
    found = trials(plan, storage)
    assert [(t.number, t.user_attrs[SETTING_ATTR]) for t in found] == [(i, i) for i in range(n_settings)]
    assert [t.params for t in found[:n_workers]] == [plan.setting_values(i) for i in range(n_workers)]


def test_old_csv_is_imported_not_recomputed(tmp_path: Path, shared_dir: Path, reference: pd.DataFrame) -> None:
    plan = debug_plan(tmp_path)
    plan.path.parent.mkdir(parents=True)
    reference.iloc[:2].to_csv(plan.path, index=False)  # setting 0 done before there was a storage
    finish_worker(start_worker([*arguments(shared_dir, tmp_path, None), "--import_csv"]))
    result = pd.read_csv(plan.path)
    assert_same_rows(plan.path, reference)
    pd.testing.assert_frame_equal(result.iloc[:2], reference.iloc[:2])  # training times too: not retrained


def test_tpe_sampler_draws_from_the_space(tmp_path: Path, shared_dir: Path) -> None:
    finish_worker(start_worker([*arguments(shared_dir, tmp_path, None), "--sampler", "tpe", "--objective", "LSQ"]))
    plan = debug_plan(tmp_path, sampler="tpe", objective="LSQ")
    assert plan.path.name.endswith("_tpe_LSQ.csv")
    rows = pd.read_csv(plan.path)
    assert list(zip(rows.hyperparameter_setting_id, rows.kFold_id, strict=True)) == list(plan.rows())
    for key, values in plan.space.items():
        assert set(rows[key]) <= set(values)
    found = trials(plan, None)
    assert [t.value for t in found] == pytest.approx(
        rows.groupby("hyperparameter_setting_id")["val_loss_LSQ"].mean().tolist(), rel=1e-12)


def test_storage_errors_are_one_sentence(tmp_path: Path, shared_dir: Path, capsys) -> None:
    base = arguments(shared_dir, tmp_path, None)
    assert tuning_script.main([*base, "--storage", "mysql://user:secret@host/db"]) == 2
    assert tuning_script.main([*base, "--export_csv"]) == 2
    assert tuning_script.main([*base, "--sampler", "random", "--list_settings"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and "not supported" in errors[0] and "secret" not in errors[0]
    assert "does not exist" in errors[1] and "--sampler paper" in errors[2]
    with pytest.raises(ProtocolError, match="does not exist"):
        open_tuning(debug_plan(tmp_path), f"sqlite:///{tmp_path / 'missing.db'}", create=False)


def test_damaged_journal_is_one_sentence_and_kept(tmp_path: Path) -> None:
    journal = tmp_path / "damaged.journal"
    damaged = b'{"op_code": 0, "worker_id": "w"}\n' + bytes(range(128, 256))
    journal.write_bytes(damaged)
    with pytest.raises(ProtocolError, match="is not a readable optuna journal.*move it away"):
        open_tuning(debug_plan(tmp_path), f"journal:{journal}")
    assert journal.read_bytes() == damaged


def test_journal_with_a_cut_off_last_line_is_refused_before_any_write(tmp_path: Path) -> None:
    journal = tmp_path / "cut.journal"
    open_tuning(debug_plan(tmp_path), f"journal:{journal}")  # a study, one line per operation
    cut = journal.read_bytes() + b'{"op_code": 5, "worker_id": "w", "trial_id": 0, "us'  # a worker died mid-append
    journal.write_bytes(cut)
    with pytest.raises(ProtocolError, match="last line is incomplete.*move it away"):
        open_tuning(debug_plan(tmp_path), f"journal:{journal}")
    assert journal.read_bytes() == cut


def test_journal_damaged_before_the_run_is_reported_as_such_and_kept(tmp_path: Path, capsys) -> None:
    """optuna's replay passes over a bad last line (a write in progress), and fails only once a line follows it."""
    plan = plan_tuning("friedman1", 3, 1, tmp_path, debug=True)
    journal = plan.path.with_suffix(".journal")
    open_tuning(plan)  # the study, one line per operation
    damaged = journal.read_bytes() + b"edited by hand\n"
    journal.write_bytes(damaged)
    args = ["--dataset", "friedman1", "--n_bits", "3", "--n_steps", "1", "--debug", "--quiet"]
    assert tuning_script.main([*args, "--result_folder", str(tmp_path)]) == 2
    reason = f"line {len(damaged.splitlines())} is no JSON record"
    assert capsys.readouterr().err == (f"error: the storage {journal} is not a readable optuna journal ({reason}); "
                                       "move it away to start again from the rows in the CSV, or restore it\n")
    assert journal.read_bytes() == damaged  # nothing appended to a journal that cannot be read
    assert not plan.path.exists()


def test_a_worker_writes_nothing_more_into_a_journal_it_found_unreadable(tmp_path: Path) -> None:
    """An error of the worker's own fails its trial (a line in the journal); an unreadable journal gets no line."""
    plan = debug_plan(tmp_path)
    tuning = open_tuning(plan, heartbeat=3600)
    journal = plan.path.with_suffix(".journal")
    for error, fails in ((json.JSONDecodeError("Expecting value", "x", 0), False), (RuntimeError("a bug"), True)):
        claim = claim_setting(tuning, {})
        before = journal.read_bytes()
        with pytest.raises(type(error)), study.working(claim):
            raise error
        assert (journal.read_bytes() != before) == fails
        assert (tuning.study.get_trials()[claim.trial.number].state == TrialState.FAIL) == fails


def test_two_tunings_writing_one_csv_are_refused(tmp_path: Path) -> None:
    # one setting x 4 folds and --debug's 2 settings x 2 folds both write ..._4iterations.csv
    space = {"weight_decay": [0.0], "learning_rate": [0.001], "hidden_layers": [1], "hidden_neurons": [5],
             "num_epochs": [10], "decrease_factor": [0.001], "dropout_rate": [0.0]}
    four_folds = plan_tuning("wine_quality", 3, 1, tmp_path, search_space=space)
    debug = plan_tuning("wine_quality", 3, 2, tmp_path, debug=True, search_space=space)
    assert four_folds.path == debug.path
    open_tuning(four_folds)
    with pytest.raises(ProtocolError,
                       match="already the CSV of another tuning .*objective.*use another --result_folder"):
        open_tuning(debug)
    journal = open_storage(f"journal:{four_folds.path.with_suffix('.journal')}")
    assert len(journal.backend.get_all_studies()) == 1  # the refused tuning left no study behind
    open_tuning(four_folds)  # its own study opens again
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)  # the folder, its CSV and its default journal move together
    with pytest.raises(ProtocolError, match="already the CSV of another tuning"):
        open_tuning(plan_tuning("wine_quality", 3, 2, moved, debug=True, search_space=space))
    open_tuning(plan_tuning("wine_quality", 3, 1, moved, search_space=space))


def test_journal_broken_while_running_is_one_sentence(capsys) -> None:
    def replay_a_broken_journal(args):
        raise json.JSONDecodeError("Expecting ',' delimiter", '{"op_code": 5, "us', 17)  # what optuna raises

    assert run_cli(replay_a_broken_journal, tuning_script.build_parser(), ["--dataset", "fried", "--n_bits", "3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the tuning's journal became unreadable") and "move the journal away" in error
    assert len(error.splitlines()) == 1


def test_a_dead_writer_s_lock_expires_even_before_its_target_exists(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / ".results.csv.merge"
    os.symlink(target, f"{target}.lock")  # left by a writer killed while holding it, before anything was written
    monkeypatch.setattr(study, "LOCK_GRACE_SECONDS", 3)  # optuna warns below 3
    done, times = threading.Event(), []

    def take_the_lock() -> None:
        with study.file_lock(str(target)):
            times.append(os.stat(target).st_mtime)
        done.set()  # taken and released

    threading.Thread(target=take_the_lock, daemon=True).start()
    assert done.wait(timeout=20), "the stale lock was never released"
    assert not os.path.lexists(f"{target}.lock")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666  # other users' workers can touch it too
    # taking the lock touches its target, so waiters that timed out on the dead lock see a fresh one
    assert times[0] > time.time() - 5


def test_a_shared_storage_serves_tunings_in_several_folders(tmp_path: Path) -> None:
    shared = f"journal:{tmp_path / 'shared.journal'}"
    space = {"num_epochs": [1]}
    open_tuning(plan_tuning("wine_quality", 3, 1, tmp_path / "a", debug=True), shared)
    open_tuning(plan_tuning("wine_quality", 3, 1, tmp_path / "b", debug=True,
                            search_space={**paper_search_space(True), **space}), shared)
    with pytest.raises(ProtocolError, match="already the CSV of another tuning"):  # b's CSV, by another study
        open_tuning(plan_tuning("wine_quality", 3, 1, tmp_path / "b", debug=True), shared)


# ---------------------------------------------------------------- the claim rules, by hand (no worker processes)


def _running_trial(owner: dict | None, beat: float) -> SimpleNamespace:
    """What the rules read of a running trial: its owner (None: never marked) and its last heartbeat."""
    return SimpleNamespace(user_attrs={BEAT_ATTR: beat} if owner is None else {OWNER_ATTR: owner, BEAT_ATTR: beat})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_rule_by_hand() -> None:
    """Dead: never marked, its PID gone on this machine, or silent for more than STALE_BEATS of its own interval."""
    now, here = 10_000.0, {"machine": study.MACHINE, "pid": os.getpid(), "interval": 2}
    assert study.STALE_BEATS == 5
    assert study._is_stale(_running_trial(None, now), now)  # claimed but never marked
    assert not study._is_stale(_running_trial(here, now - 5 * 2), now)  # exactly 5 beats: still alive
    assert study._is_stale(_running_trial(here, now - 5 * 2 - 0.01), now)  # more than 5 of its 2-second beats
    assert not study._is_stale(_running_trial({**here, "interval": 60}, now - 11), now)  # a slow beater is not dead
    assert study._is_stale(_running_trial({**here, "pid": _dead_pid()}, now), now)  # its process ended here


def test_a_pid_of_another_machine_is_judged_by_its_heartbeat(monkeypatch) -> None:
    """A PID says nothing about a process on another machine, and someone else's process is alive."""
    now, dead = 10_000.0, _dead_pid()
    elsewhere = {"machine": study.MACHINE + "-other", "pid": dead, "interval": 1}
    assert not study._is_stale(_running_trial(elsewhere, now - 1), now)
    assert study._is_stale(_running_trial(elsewhere, now - 6), now)

    def not_permitted(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(study.os, "kill", not_permitted)  # another user's worker on this machine
    assert study.pid_alive(dead)
    assert not study._is_stale(_running_trial({"machine": study.MACHINE, "pid": dead, "interval": 1}, now - 1), now)


def test_a_setting_is_done_when_its_folds_are_stored_and_a_trial_finished() -> None:
    """All folds stored by a trial that never finished (its worker died before telling) is not done:
    the setting is offered again so that a finished trial records its value for the sampler."""
    def trial(state: TrialState, folds: list[int]) -> SimpleNamespace:
        return SimpleNamespace(state=state, user_attrs={f"{FOLD_PREFIX}{k}": {"fold": k} for k in folds})

    assert not study._done([trial(TrialState.RUNNING, [0, 1])], 2)
    assert not study._done([trial(TrialState.FAIL, [0, 1])], 2)
    assert not study._done([trial(TrialState.COMPLETE, [0])], 2)
    assert study._done([trial(TrialState.FAIL, [0]), trial(TrialState.COMPLETE, [1])], 2)
    assert study._done([trial(TrialState.PRUNED, [0, 1])], 2)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sampled_settings_differ_from_each_other(tmp_path: Path, sampler: str) -> None:
    """Each new setting gets a sampler seeded with its id: a fixed seed would draw the same setting every time."""
    space = paper_search_space()
    spec = study.StudySpec("sampled", space, k_folds=2, n_settings=4, sampler=sampler, initial=())
    tuning = study.open_study(open_storage(f"journal:{tmp_path / 'sampled.journal'}"), spec)
    claims = [claim_setting(tuning, {}) for _ in range(4)]
    assert [c.setting_id for c in claims] == [0, 1, 2, 3]
    assert all(c.values[k] in space[k] for c in claims for k in space)
    assert len({tuple(c.values.items()) for c in claims}) == 4
    assert claim_setting(tuning, {}) is None  # the study has room for 4 settings only


def test_rows_other_workers_store_or_import_while_the_csv_is_compared_are_not_foreign(
    tmp_path: Path, reference: pd.DataFrame, monkeypatch,
) -> None:
    """The CSV and the started settings are read before the stored rows; each part below fails where the stored
    rows come earlier."""
    import protocol.tuning as tuning_module

    plan = debug_plan(tmp_path)
    plan.path.parent.mkdir(parents=True)
    reference.to_csv(plan.path, index=False)  # rows of an earlier run, to import
    imported = tuning_module.rows_to_import(plan)
    tuning = open_tuning(plan)
    real_stored_rows = tuning_module.stored_rows

    def import_meanwhile(tuning_study):  # another worker imports the CSV's settings right after this read
        rows = real_stored_rows(tuning_study)
        study._reconcile(tuning_study, imported)
        return rows

    monkeypatch.setattr(tuning_module, "stored_rows", import_meanwhile)
    tuning_module._check_csv_matches_storage(plan, tuning, imported, import_csv=True)
    monkeypatch.setattr(tuning_module, "stored_rows", real_stored_rows)
    assert len(real_stored_rows(tuning)) == N_ROWS  # imported: every row is stored now

    reference.iloc[:-1].to_csv(plan.path, index=False)  # exported before the last row was stored

    def store_and_export_meanwhile(tuning_study):  # another worker stores the last row and exports it right after
        rows = real_stored_rows(tuning_study)[:-1]
        reference.to_csv(plan.path, index=False)
        return rows

    monkeypatch.setattr(tuning_module, "stored_rows", store_and_export_meanwhile)
    tuning_module._check_csv_matches_storage(plan, tuning, {})
