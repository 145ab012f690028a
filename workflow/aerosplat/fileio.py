"""Atomic output writing: a killed job never leaves a half file that looks finished."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success.

    Works for files and directories. The temporary name starts with '.' and ends in
    '.partial' so it is obvious in a listing and never matches a Snakemake output. Temporaries
    of `final` left by a killed run (Snakemake runs one job per output at a time) are removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_partials(final: str | Path) -> list[Path]:
    """Delete the '.<name>.*.partial' temporaries of `final` that a killed job left; return them."""
    final = Path(final)
    stale = sorted(final.parent.glob(f".{glob.escape(final.name)}.*.partial"))
    for path in stale:
        log.info("removing %s, left by an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True)
    return stale


def remove_paths(paths: Iterable[str | Path]) -> None:
    """Delete files, links and folders that exist among `paths` (outputs that must not look current)."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed, with a trailing newline."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
