"""Shared test helpers: where the repository and the shared datasets are, and how to run Snakemake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800,
                  profile: Path = ROOT / "profiles" / "default") -> subprocess.CompletedProcess:
    """Run this repository's Snakefile with `workdir` as working directory (results/ land there)."""
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(profile), *args]
    env = dict(os.environ)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(stdout: str) -> dict[str, int]:
    """The 'job count' table Snakemake prints when it plans a (dry) run: {rule: jobs}."""
    counts, inside = {}, False
    for line in stdout.splitlines():
        if re.match(r"^job\s+count\s*$", line):
            inside = True
            continue
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if inside and m:
            if m.group(1) == "total":
                break
            counts[m.group(1)] = int(m.group(2))
    return counts


def needs_dataset(name: str):
    path = DATASETS / name
    return pytest.mark.skipif(not path.is_dir(), reason=f"dataset {name} not present at {path} (shared/ not beside the checkout)")


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """The built-in sample scene run through the workflow once per test session (generate, ingest,
    sfm, georef); returns the working directory holding results/sample/."""
    work = tmp_path_factory.mktemp("sample_run")
    run_snakemake(work, "--cores", "2")
    return work
