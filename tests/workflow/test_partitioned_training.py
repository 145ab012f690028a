"""The sample scene through partition -> train -> merge -> evaluate, and re-running one partition.

These use the session's `sample_run` (the whole workflow, CPU path, the test settings of
tests/scenes/sample.yaml); the test that deletes and retrains a partition works on a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from aerosplat.splats import read_ply
from conftest import ROOT, SAMPLE_CONFIG, SNAKEMAKE, copy_run, job_counts, run_snakemake

pytestmark = pytest.mark.slow

# Held-out PSNR floor of the sample at the test settings (tests/scenes/sample.yaml); see tests/README.md.
SAMPLE_MIN_PSNR = 25.0


def _json(path):
    return json.loads(path.read_text())


def test_manifest_partitions_the_sample(sample_run):
    res = sample_run / "results/sample"
    m = _json(res / "partitions/manifest.json")
    parts = m["partitions"]
    assert len(parts) >= 2
    heldout = set(m["heldout"])
    names = sorted(m["cameras"])
    assert heldout == {n for i, n in enumerate(names) if i % 8 == 0}
    for p in parts:
        assert {"id", "cell_bounds", "expanded_bounds", "images", "num_points"} <= set(p)
        assert not heldout & set(p["images"]), "a held-out photo leaked into training"
        assert p["num_points"] > 1000
        e, b = p["expanded_bounds"], p["cell_bounds"]
        assert e[0] <= b[0] and e[1] <= b[1] and e[2] >= b[2] and e[3] >= b[3]
    assert set().union(*[p["images"] for p in parts]) == set(m["train"])
    # Obliques are assigned by what they see: some train a cell they do not stand in.
    outside = 0
    for name in m["train"]:
        w2c = np.asarray(m["cameras"][name]["w2c"])
        center = -w2c[:, :3].T @ w2c[:, 3]
        if w2c[2, 2] > -0.9:  # optical axis (third row of R) not pointing straight down
            for p in parts:
                e = p["expanded_bounds"]
                if name in p["images"] and not (e[0] <= center[0] <= e[2] and e[1] <= center[1] <= e[3]):
                    outside += 1
    assert outside >= 1


def test_merged_model_scores_on_heldout_views(sample_run):
    res = sample_run / "results/sample"
    metrics = _json(res / "merged/metrics.json")
    manifest = _json(res / "partitions/manifest.json")
    assert metrics["num_partitions"] >= 2
    assert metrics["heldout_psnr"] >= SAMPLE_MIN_PSNR, metrics["heldout_images"]
    assert 0.7 < metrics["heldout_ssim"] <= 1.0
    # Partitioning costs no quality against one model of the whole scene with the same settings.
    # With 4 held-out views one run varies by about 1 dB (SfM is not bit-deterministic), so the
    # guard allows 1 dB; metrics.json reports the difference of each run.
    assert metrics["heldout_psnr"] >= metrics["monolithic_heldout_psnr"] - 1.0
    # The reference is one model of every training photo, and itself a working model.
    mono = _json(res / "monolithic/metrics.json")
    assert mono["num_images"] == len(manifest["train"])
    assert metrics["monolithic_heldout_psnr"] >= SAMPLE_MIN_PSNR
    assert len(metrics["heldout_images"]) == len(manifest["heldout"])
    # The seam: the sample's two cells meet in the middle of the flight, so some held-out views see
    # both cells; those score no worse than the views inside one cell (no visible seam).
    seam = metrics["seam"]
    assert seam["border_views"], metrics["heldout_images"]
    if seam["interior_psnr"] is not None:
        assert seam["border_psnr"] >= seam["interior_psnr"] - 1.0, seam
    assert len(list((res / "merged/heldout").glob("*.png"))) == len(metrics["heldout_images"])


def test_merged_ply_is_the_cropped_union_in_the_local_frame(sample_run):
    res = sample_run / "results/sample"
    merged = read_ply(res / "merged/splats.ply")
    report = _json(res / "merged/merge.json")
    assert merged["means"].shape[0] == sum(p["kept"] for p in report["partitions"])
    for p in report["partitions"]:
        assert 0 < p["kept"] < p["gaussians"]  # the overlap margins were cropped away
    frame = _json(res / "merged/frame.json")
    assert frame["epsg"] == 32632 and len(frame["origin"]) == 3
    # Local frame: the ground of the sample lies ~50 m below the origin height, not at UTM values.
    z = np.median(merged["means"][:, 2].numpy())
    assert -80 < z < -20 and np.abs(merged["means"][:, :2].numpy()).max() < 1e4


def test_removing_one_partition_replans_only_it_and_resumes_a_killed_job(sample_run, tmp_path):
    work = copy_run(sample_run, tmp_path / "work")  # the session's run stays as it was
    res = work / "results/sample"
    target = res / "partitions/p01/splats.ply"
    target.unlink()
    dry = run_snakemake(work, "--cores", "2", "-n", *SAMPLE_CONFIG)
    counts = job_counts(dry.stdout)
    assert counts.get("train") == 1, dry.stdout[-3000:]
    assert sorted(set(re.findall(r"Training sample partition (p\d+)", dry.stdout))) == ["p01"]
    assert counts.get("merge") == 1 and counts.get("evaluate") == 1
    assert not {"sfm", "georef", "partition", "train_monolithic"} & set(counts)

    # Start the re-run, kill everything once the job has written a checkpoint, then run again. The
    # one partition retrains alone here: on both cores (threads are no provenance: nothing else reruns).
    ckpt = res / "partitions/p01/ckpt/last.pt"
    alone = ("--cores", "2", "--set-threads", "train=2")  # like --config, takes what follows: targets first
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(work),
           "--profile", str(ROOT / "profiles" / "default"), "results/sample/partitions/p01/splats.ply",
           *alone, *SAMPLE_CONFIG]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert ckpt.exists(), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    run_snakemake(work, "--unlock", *SAMPLE_CONFIG)  # a killed Snakemake leaves its directory lock behind
    # Up to the evaluation: the products after it are the products tests' business.
    # (Named with the partition's model: Snakemake remakes a deleted intermediate only when asked.)
    run_snakemake(work, "results/sample/partitions/p01/splats.ply", "results/sample/merged/metrics.json", *alone,
                  *SAMPLE_CONFIG)
    log = (work / "logs/train/sample/p01.log").read_text()
    resumed = re.findall(r"resumed p01 from checkpoint at step (\d+)", log)
    assert resumed and int(resumed[-1]) > 0
    m = _json(res / "partitions/p01/metrics.json")
    assert m["resumed_from_step"] == int(resumed[-1])
    assert m["steps_this_run"] == m["steps"] - m["resumed_from_step"]
    assert not ckpt.exists()  # removed once the result is written
    assert _json(res / "merged/metrics.json")["heldout_psnr"] >= SAMPLE_MIN_PSNR
