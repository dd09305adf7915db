"""Atomic file writes: a temporary file in the same folder, then a rename.

The temporary file of ``name`` is ``.<name>.<machine>-<pid>.<random>.tmp``: ``machine`` names this
host, boot and PID namespace (where a PID means the same process), ``pid`` the writer. A writer
killed outright (SIGKILL, a power cut) leaves it behind; the next write of the same file removes
it once its writer is gone, see :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .processes import MACHINE, pid_alive

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STALE_TEMPORARY_SECONDS = 600  # a temporary file untouched this long has no live writer (a write takes seconds)


MACHINE_TAG = hashlib.sha256(MACHINE.encode()).hexdigest()[:8]  # names this host, boot and PID namespace


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporary files of ``path`` that no live writer will finish.

    Several workers may write the same file at once (cluster job arrays), so a temporary file is
    removed only where its writer ran on this machine (same host, boot and PID namespace) and
    its PID is gone, or where it is older than ``STALE_TEMPORARY_SECONDS`` (a writer elsewhere,
    or a name from before writers were named in it). Files that cannot be removed are left.
    """
    path = Path(path)
    name = re.escape(path.name)
    named = re.compile(rf"\.{name}\.([0-9a-f]{{8}})-(\d+)\.[a-z0-9_]+\.tmp")
    unnamed = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")  # tempfile's random part alone
    now = time.time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        writer = named.fullmatch(candidate.name)
        if writer is None and unnamed.fullmatch(candidate.name) is None:
            continue  # another file's, say ".a.csv.gz.sha256...tmp" beside a.csv.gz
        with contextlib.suppress(OSError):  # removed or renamed into place meanwhile, or another user's
            dead = writer is not None and writer[1] == MACHINE_TAG and not pid_alive(int(writer[2]))
            if dead or now - candidate.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                candidate.unlink()


@contextlib.contextmanager
def _interruptions_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM (a cluster's time limit) until the block ends, then deliver them.

    Python runs signal handlers in the main thread only, so only there can they be held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    # None: a handler set outside Python, which cannot be held
    held = [number for number in _HELD_SIGNALS if signal.getsignal(number) is not None]
    previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)  # to the handler of before: an exception, or the end of the process


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> None:
    """Replace ``path`` by ``content`` so that readers see the old file or the new, never half.

    An interruption during the write takes effect once it is done, so no temporary file stays behind;
    one left by a writer killed outright (SIGKILL) is removed here once that writer is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    with _interruptions_held(), tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.{MACHINE_TAG}-{os.getpid()}.", suffix=".tmp", delete=False
    ) as tmp:
        try:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, 0o644)
            os.replace(tmp.name, path)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
