"""Shared test helpers: where the repository and the shared datasets are, and how to run Snakemake."""

from __future__ import annotations

import os
import re
import shutil
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


# The sample scene at the test settings (tests/scenes/sample.yaml: the demo's photos, SfM, georef,
# partitions and schedule; smaller training images). Every workflow test that needs a finished
# stage of the sample reads it from the one session run below, staged so that tests needing only
# georef do not wait for training; a test that changes a run works on a copy (`copy_run`).
TEST_SCENES = ROOT / "tests" / "scenes"
# `--config` takes every argument after it: targets go before it.
SAMPLE_CONFIG = ("--config", f"scenes_dir={TEST_SCENES}", "scenes=[sample]")
# Stage folders of results/<scene>/ up to and including georef (what the georef-level fixture made).
GEOREF_STAGES = ("synthetic", "ingest", "sfm", "georef")


def copy_run(src: Path, dst: Path, stages: tuple[str, ...] | None = None, scene: str = "sample") -> Path:
    """Copy a finished workflow folder (`stages` of results/<scene>/, or all of them) with its logs,
    benchmarks and Snakemake's metadata, timestamps kept, so that Snakemake started in `dst` takes
    the copied stages as done and runs only what is missing or changed there."""
    src_res, dst_res = src / "results" / scene, dst / "results" / scene
    names = stages if stages is not None else sorted(p.name for p in src_res.iterdir())
    dst_res.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(src_res / name, dst_res / name, symlinks=True, dirs_exist_ok=True)
    for folder in ("logs", "benchmarks", ".snakemake/metadata"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, dst / folder, symlinks=True, dirs_exist_ok=True)
    return dst


@pytest.fixture(scope="session")
def sample_georef(tmp_path_factory) -> Path:
    """The sample scene (test settings) through generate, ingest, sfm and georef, once per test
    session; returns the working directory holding results/sample/. Training continues in the same
    folder (`sample_run`)."""
    work = tmp_path_factory.mktemp("sample_run")
    run_snakemake(work, "--cores", "2", "results/sample/georef/frame.json", *SAMPLE_CONFIG)
    return work


@pytest.fixture(scope="session")
def sample_run(sample_georef) -> Path:
    """The sample scene through the whole workflow (partition, train, merge, evaluate, with the
    monolithic reference), once per test session, in the folder of `sample_georef`."""
    run_snakemake(sample_georef, "--cores", "2", *SAMPLE_CONFIG)
    return sample_georef
