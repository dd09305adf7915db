"""The tuning's optuna side: a storage many workers share, one study per tuning, and its trials.

A trial is one setting: its folds are stored as user attributes ``fold_<k>`` (the CSV row) the
moment they end, so the study is the result and the CSV an export of it. Workers take settings
one at a time under a lock on the storage; while the lock is held a worker also enqueues what is
missing (the initial settings in their order, and a fresh trial for every unfinished setting
that nobody works on) and fails the trials of dead workers. A worker marks its trial with its
machine and PID and beats a heartbeat into it; a trial is dead when its PID is gone (same
machine) or its heartbeat has been silent for ``STALE_BEATS`` intervals.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from core.processes import MACHINE, pid_alive

from .common import ProtocolError

SAMPLER_SEED = 42
HEARTBEAT_SECONDS = 60
STALE_BEATS = 5
LOCK_GRACE_SECONDS = 30
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"bsq tuning claims").digest()[:8], "big", signed=True)
SETTING_ATTR, VALUES_ATTR, OWNER_ATTR, BEAT_ATTR, FOLD_PREFIX = "setting_id", "setting", "owner", "heartbeat", "fold_"
LIVE = (TrialState.WAITING, TrialState.RUNNING)
TRANSIENT = (OSError, sqlalchemy.exc.SQLAlchemyError, StorageInternalError)
Row = dict[str, object]


@dataclass(frozen=True)
class Storage:
    """An optuna storage and the lock that serializes the workers' claims on it."""

    backend: optuna.storages.BaseStorage
    lock: Callable[[], AbstractContextManager[None]]
    label: str


@dataclass(frozen=True)
class StudySpec:
    """What a study holds: its settings (the ``initial`` ones first, the sampler's after) and folds."""

    name: str
    space: dict[str, list]
    k_folds: int
    n_settings: int
    sampler: str  # "paper" (only the initial settings), "random" or "tpe"
    initial: tuple[dict[str, object], ...]


@dataclass(frozen=True)
class TuningStudy:
    """An open study of a spec, and the heartbeat interval of this worker."""

    spec: StudySpec
    storage: Storage
    study: optuna.Study
    heartbeat: int


@dataclass(frozen=True)
class Claim:
    """A setting taken by this worker: its trial, its values and the folds stored for it already."""

    tuning: TuningStudy
    trial: optuna.Trial
    setting_id: int
    values: dict[str, object]
    stored: dict[int, Row]


def open_storage(url: str, create: bool = True) -> Storage:
    """``journal:PATH``, ``sqlite:///PATH`` or ``postgresql://…``; ``create=False`` refuses missing files."""
    if url.startswith("journal:"):
        return _journal(Path(url.removeprefix("journal:")), create)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        parsed = None
    backend = parsed.get_backend_name() if parsed is not None else None
    if backend == "sqlite":
        return _sqlite(url, parsed.database, create)
    if backend == "postgresql":
        return _postgres(parsed)
    raise ProtocolError(f"--storage {url.split(':', 1)[0]}:… is not supported; use journal:PATH, sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE")


def _journal(path: Path, create: bool) -> Storage:
    """Open a journal file, refused before anything is written to it where any of its lines cannot be read."""
    _check_file(path, create)
    damaged = "" if _ends_in_complete_line(path) else "its last line is incomplete, a write cut short"
    line = _undecodable_line(path)
    if line is not None:  # optuna's replay skips a bad last line, then fails once a line follows it
        damaged = f"line {line} is no JSON record"
    try:
        backend = JournalStorage(JournalFileBackend(str(path)))  # replays the whole journal
    except (ValueError, LookupError, TypeError) as error:  # undecodable bytes, broken JSON, missing fields
        damaged = damaged or type(error).__name__
    if damaged:  # optuna would append after a cut-off line and so break the journal for good
        raise ProtocolError(
            f"the storage {path} is not a readable optuna journal ({damaged}); "
            "move it away to start again from the rows in the CSV, or restore it"
        )
    return Storage(backend, partial(file_lock, f"{path}.claim"), f"journal:{path}")


def _ends_in_complete_line(path: Path, attempts: int = 3) -> bool:
    """Whether the file is missing, empty or ends with a newline; a worker appending right now gets a second
    to finish."""
    for attempt in range(attempts):
        try:
            with path.open("rb") as journal:
                size = journal.seek(0, os.SEEK_END)
                if size == 0:
                    return True
                journal.seek(size - 1)
                if journal.read(1) == b"\n":
                    return True
        except FileNotFoundError:
            return True
        if attempt < attempts - 1:
            time.sleep(0.5)
    return False


def _undecodable_line(path: Path) -> int | None:
    """The number of the first complete line of a journal that is no JSON object (None: all are)."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return None
    for number, line in enumerate(content.split(b"\n")[:-1], start=1):  # the last piece: a line being appended
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:  # broken JSON or undecodable bytes
            pass
        return number
    return None


def _sqlite(url: str, database: str | None, create: bool) -> Storage:
    if not database or database == ":memory:":
        raise ProtocolError(f"--storage {url} names no file; workers can only share a file, as in sqlite:///PATH")
    _check_file(Path(database), create)
    lock = partial(file_lock, f"{database}.claim")
    return Storage(_rdb(url, url, lock, connect_args={"timeout": 120}), lock, url)


def _postgres(url: sqlalchemy.engine.URL) -> Storage:
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        url = url.set(drivername="postgresql+psycopg2")  # SQLAlchemy's default driver is psycopg 3
    label, full = url.render_as_string(hide_password=True), url.render_as_string(hide_password=False)
    lock = partial(_advisory_lock, full)
    return Storage(_rdb(full, label, lock, pool_pre_ping=True), lock, label)


def _check_file(path: Path, create: bool) -> None:
    if not create and not path.exists():
        raise ProtocolError(f"the storage {path} does not exist; run the tuning with it first")
    path.parent.mkdir(parents=True, exist_ok=True)


def _rdb(
    url: str, label: str, lock: Callable[[], AbstractContextManager[None]], **engine_kwargs: object,
) -> RDBStorage:
    """An RDB storage, opened under ``lock``: workers that start together race to create its tables."""
    try:
        with lock():
            return RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ProtocolError(
            f"cannot open the storage {label} ({reason}); check the URL and that the server runs") from None


@contextmanager
def file_lock(path: str) -> Iterator[None]:
    """A lock ``path + ".lock"``, a symbolic link to ``path`` (safe on NFS), for short critical sections;
    one left by a dead worker expires after ``LOCK_GRACE_SECONDS``.

    optuna dates a lock by the modification time of its target and breaks it once that time has
    not changed for the grace period (it waits without end, and without a pause, where the target
    is missing). So ``path`` is created, writable by every user, and touched on every acquisition
    (not while waiting, which would keep a dead worker's lock alive): a waiter whose timer ran out
    on a dead worker's lock then sees a new time instead of breaking the lock the next worker has
    just taken.
    """
    target = Path(path)
    if not target.exists():
        target.touch()
        with suppress(PermissionError):  # another user's worker created it a moment ago
            target.chmod(0o666)  # workers may run as different users
    lock = JournalFileSymlinkLock(path, grace_period=LOCK_GRACE_SECONDS)
    lock.acquire()
    with suppress(PermissionError):  # another user's target from before 0o666: the lock works without it
        os.utime(target)
    try:
        yield
    finally:
        with suppress(RuntimeError):  # broken by a waiter after all: the section is done anyway
            lock.release()


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """A PostgreSQL advisory lock, on a connection of its own; the server drops it if the worker dies."""
    with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})


def open_study(
    storage: Storage, spec: StudySpec, heartbeat: int = HEARTBEAT_SECONDS, create: bool = True,
) -> TuningStudy:
    """Create or load the study of ``spec`` (``create=False``: it must exist already)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if create:
            study = optuna.create_study(storage=storage.backend, study_name=spec.name, direction="minimize",
                                        load_if_exists=True)
        else:
            study = optuna.load_study(storage=storage.backend, study_name=spec.name)
    except KeyError:
        raise ProtocolError(f"the storage {storage.label} holds no study {spec.name}; "
                            "run the tuning with the same arguments first") from None
    return TuningStudy(spec, storage, study, heartbeat)


def stored_rows(tuning: TuningStudy) -> list[Row]:
    """Every fold stored in the study, in setting-major order."""
    groups = _by_setting(tuning.study.get_trials(deepcopy=False))
    return [row for s in sorted(groups) for _, row in sorted(_setting_folds(groups[s]).items())]


def started_settings(tuning: TuningStudy) -> set[int]:
    """The ids of the settings that the study holds a trial for."""
    return set(_by_setting(tuning.study.get_trials(deepcopy=False)))


def finished(tuning: TuningStudy) -> bool:
    """Whether every setting of the study has all its folds and a finished trial."""
    groups = _by_setting(tuning.study.get_trials(deepcopy=False))
    return len(groups) >= tuning.spec.n_settings and all(_done(group, tuning.spec.k_folds) for group in groups.values())


def claim_setting(tuning: TuningStudy, imported: dict[int, dict[int, Row]]) -> Claim | None:
    """Take the next setting to compute, or None while all that is left is taken by others.

    ``imported`` holds folds of a CSV from before, stored with an initial setting when it is enqueued.
    """
    with tuning.storage.lock():
        trials = _reconcile(tuning, imported)
        trial = _next_trial(tuning, trials)
        if trial is None:
            return None
        trial.set_user_attr(OWNER_ATTR, {"machine": MACHINE, "pid": os.getpid(), "interval": tuning.heartbeat})
        trial.set_user_attr(BEAT_ATTR, time.time())
        values = {key: trial.suggest_categorical(key, choices) for key, choices in tuning.spec.space.items()}
        if SETTING_ATTR not in trial.user_attrs:  # a new draw of the sampler: it gets the next id
            trial.set_user_attr(VALUES_ATTR, values)
            trial.set_user_attr(SETTING_ATTR, len(_by_setting(trials)))
        setting_id = trial.user_attrs[SETTING_ATTR]
    stored = _setting_folds(_by_setting(trials).get(setting_id, []))
    return Claim(tuning, trial, setting_id, values, stored)


def _reconcile(tuning: TuningStudy, imported: dict[int, dict[int, Row]]) -> list[FrozenTrial]:
    """Fail dead workers' trials, then enqueue every setting that is missing or needs a new trial."""
    now = time.time()
    for trial in tuning.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(trial, now):
            _tell(tuning.study, trial.number, TrialState.FAIL)
    groups = _by_setting(tuning.study.get_trials(deepcopy=False))
    for setting_id in sorted(set(range(len(tuning.spec.initial))) | set(groups)):
        group = groups.get(setting_id, [])
        if not group:
            _enqueue(tuning, setting_id, tuning.spec.initial[setting_id], imported.get(setting_id, {}))
        elif not _done(group, tuning.spec.k_folds) and not any(t.state in LIVE for t in group):
            _enqueue(tuning, setting_id, group[0].user_attrs[VALUES_ATTR], {})
    return tuning.study.get_trials(deepcopy=False)


def _enqueue(tuning: TuningStudy, setting_id: int, values: dict[str, object], folds: dict[int, Row]) -> None:
    attrs = {SETTING_ATTR: setting_id, VALUES_ATTR: values, **{f"{FOLD_PREFIX}{k}": row for k, row in folds.items()}}
    tuning.study.enqueue_trial(values, user_attrs=attrs)


def _next_trial(tuning: TuningStudy, trials: list[FrozenTrial]) -> optuna.Trial | None:
    """The oldest waiting trial, else a new one from the sampler while the study has room."""
    if any(t.state == TrialState.WAITING for t in trials):
        return tuning.study.ask()
    n_settings = len(_by_setting(trials))
    if tuning.spec.sampler == "paper" or n_settings >= tuning.spec.n_settings:
        return None
    tuning.study.sampler = _sampler(tuning.spec.sampler, n_settings)
    return tuning.study.ask()


def _sampler(kind: str, setting_id: int) -> optuna.samplers.BaseSampler:
    """Seeded per setting, so that workers never draw the same random values for different settings."""
    seed = SAMPLER_SEED + setting_id
    return optuna.samplers.TPESampler(seed=seed) if kind == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def _by_setting(trials: list[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    groups: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        if SETTING_ATTR in trial.user_attrs:
            groups.setdefault(trial.user_attrs[SETTING_ATTR], []).append(trial)
    return groups


def _setting_folds(group: list[FrozenTrial]) -> dict[int, Row]:
    """The folds stored for a setting by any of its trials (the first one stored wins)."""
    folds: dict[int, Row] = {}
    for trial in group:
        for key, row in trial.user_attrs.items():
            if key.startswith(FOLD_PREFIX):
                folds.setdefault(int(key.removeprefix(FOLD_PREFIX)), row)
    return folds


def _done(group: list[FrozenTrial], k_folds: int) -> bool:
    finished_trial = any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in group)
    return finished_trial and len(_setting_folds(group)) == k_folds


def _is_stale(trial: FrozenTrial, now: float) -> bool:
    """A running trial whose worker is gone: its PID ended here, or its heartbeat fell silent."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if owner is None:  # claimed but never marked: its worker died holding the claim lock
        return True
    if owner["machine"] == MACHINE and not pid_alive(owner["pid"]):
        return True
    return now - trial.user_attrs[BEAT_ATTR] > STALE_BEATS * owner["interval"]


@contextmanager
def working(claim: Claim) -> Iterator[None]:
    """Beat the claim's heartbeat from a thread while the block runs; if the block raises, fail the trial."""
    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(claim, stop), daemon=True)
    thread.start()
    try:
        yield
    except BaseException as error:
        if not isinstance(error, json.JSONDecodeError):  # nothing more goes into a journal that cannot be read
            _tell(claim.tuning.study, claim.trial, TrialState.FAIL)
        raise
    finally:
        stop.set()
        thread.join()


def _beat(claim: Claim, stop: threading.Event) -> None:
    while not stop.wait(claim.tuning.heartbeat):
        try:
            claim.trial.set_user_attr(BEAT_ATTR, time.time())
        except (UpdateFinishedTrialError, json.JSONDecodeError):  # an unreadable journal stops the worker itself
            return
        except TRANSIENT:
            continue


def store_fold(claim: Claim, fold: int, row: Row) -> bool:
    """Store one finished fold; False if the trial was declared dead meanwhile (another worker redoes it)."""
    try:
        claim.trial.set_user_attr(f"{FOLD_PREFIX}{fold}", row)
    except UpdateFinishedTrialError:
        return False
    claim.stored[fold] = row
    return True


def finish(claim: Claim, value: float) -> None:
    """Complete the trial with ``value`` (pruned when it is not finite, so that samplers skip it)."""
    if math.isfinite(value):
        _tell(claim.tuning.study, claim.trial, TrialState.COMPLETE, value)
    else:
        _tell(claim.tuning.study, claim.trial, TrialState.PRUNED)


def _tell(study: optuna.Study, trial: optuna.Trial | int, state: TrialState, value: float | None = None) -> None:
    """Finish a trial unless it is finished already (by its worker, or by one that found it dead)."""
    with suppress(UpdateFinishedTrialError):
        study.tell(trial, value, state=state, skip_if_finished=True)
