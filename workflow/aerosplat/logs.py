"""Logging for rule scripts: everything a job prints ends up in its rule log; warnings and
errors are also shown on the console, so what a run skipped or doubted is seen, not only logged.

COLMAP (through pycolmap) writes its progress with glog to file descriptor 2,
so redirecting `sys.stderr` is not enough: we point fd 2 itself at the log.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def setup_rule_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    """Send fd 1/2 and Python logging to `log_path` (line-buffered); call before heavy imports."""
    console = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        console = os.fdopen(os.dup(2), "w", buffering=1)  # the terminal (or the cluster job's output)
        f = open(log_path, "a", buffering=1)
        os.dup2(f.fileno(), 2)
        os.dup2(f.fileno(), 1)
        sys.stderr = f
        sys.stdout = f
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if console is not None:
        # Warnings (and errors) also reach the person running the workflow, not only the log file.
        loud = logging.StreamHandler(console)
        loud.setLevel(logging.WARNING)
        loud.setFormatter(logging.Formatter(f"%(levelname)s [{Path(log_path).parent.name}]: %(message)s "
                                            f"(log: {log_path})"))
        logging.getLogger().addHandler(loud)
    os.environ.setdefault("GLOG_logtostderr", "1")
    sys.excepthook = _report_user_errors


def _report_user_errors(exc_type, exc, tb) -> None:
    """Bad input and unusable results are reported as one clear message; bugs keep their traceback."""
    from .errors import InputError, StageFailure

    if issubclass(exc_type, (InputError, StageFailure)):
        kind = "bad input" if issubclass(exc_type, InputError) else "stage failed"
        logging.getLogger("aerosplat").error("%s: %s", kind, exc)
    else:
        sys.__excepthook__(exc_type, exc, tb)
