"""Whether a process that left something behind (a temporary file, a claimed tuning setting) still runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _machine_id() -> str:
    """This host, boot and PID namespace: where a PID means the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot = namespace = ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


MACHINE = _machine_id()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
