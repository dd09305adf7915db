"""Imported first by the protocol scripts: Ctrl-C while torch and optuna load ends the process at once.

Python would otherwise print a long traceback from inside an import. ``run_cli`` restores
Python's handler before the work starts, and from then on an interruption is one line. Nothing
changes where the script is imported rather than run (a test) or where SIGINT is ignored (a
worker started with ``&`` by a script).
"""

import signal
import sys


def _imported_by_the_program() -> bool:
    """Whether the module importing this one is ``__main__``, the script being run."""
    frame = sys._getframe(1).f_back  # past this module's own code: the import machinery, then the importer
    # the machinery's frames are named _frozen_importlib*, or importlib._bootstrap* once importlib is loaded
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("_frozen_importlib", "importlib")):
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__") == "__main__"


if _imported_by_the_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
