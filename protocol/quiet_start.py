"""Imported first by the protocol scripts: Ctrl-C while torch and optuna load ends the process at once.

Python would otherwise print a long traceback from inside an import. ``run_cli`` restores
Python's handler before the work starts, and from then on an interruption is one line.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)
