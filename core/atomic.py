"""Atomic file writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    An interruption during the write takes effect once it is done, so no temporary file stays behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _interruptions_held(), tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
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
