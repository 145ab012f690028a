"""Sparse-view quality: depth per view from the workflow, and our trainer against the plain gsplat loop
on the sample thinned to every second nadir photo (bench/quality.py, the same command as the
committed figures in bench/results/)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# The thinned-sample comparison's training budget. 500 steps halves the test, but the median depths
# then barely separate (ours vs plain: 0.451 vs 0.498 m, then 0.437 vs 0.444 m on another SfM), so
# the comparison keeps the 1000 steps its figures were measured at (tests/README.md).
THIN_STEPS = 1000


def test_every_view_gets_expected_and_median_depth_scored_against_the_true_dsm(sample_run):
    from aerosplat.depthmaps import read_depth_tiff

    res = sample_run / "results/sample"
    manifest = json.loads((res / "partitions/manifest.json").read_text())
    metrics = json.loads((res / "merged/metrics.json").read_text())
    names = sorted(set(manifest["train"]) | set(manifest["heldout"]))
    files = sorted(p.name for p in (res / "merged/depth").iterdir() if not p.name.startswith("."))  # Snakemake's marker
    assert files == sorted(f"{n.rsplit('.', 1)[0]}_{k}.tif" for n in names for k in ("expected", "median"))
    depth, meta = read_depth_tiff(res / "merged/depth" / f"{manifest['heldout'][1].rsplit('.', 1)[0]}_median.tif")
    assert depth.dtype == np.float32 and meta["units"] == "metre"
    assert 40 < np.nanmedian(depth) < 80  # the flight is 60 m above the ground
    d = metrics["depth"]
    assert d["views"] == len(names) and len(d["heldout"]) == len(manifest["heldout"])
    # Held-out median depth within two ground pixels of the true DSM (median over views).
    assert d["heldout_median_abs_error_m"] <= 2 * d["gsd_m"], d["heldout"]
    # The appearance protocol and the auto-exposed render are reported beside the raw figure. The
    # synthetic camera has one fixed exposure, so auto exposure costs a little where a view shows
    # darker or brighter ground than the average (thinned sample: 0.0 to -2.8 dB per view). On the
    # nadir views the model covers, it never helps more than the demo's bound of +1 dB (test scene,
    # 160 x 120: -3.5 to +0.01 dB over three CI runs). The held-out oblique (IMG_0025) sees past the
    # model's edge, where the raw render is dark, and there it helps: -0.17, +1.18 and +3.04 dB in
    # three CI runs (raw 18.2 dB in the last), so obliques get +5 dB.
    # The synthetic camera's exposure is fixed, so a gain/offset fitted on a photo's left half changes
    # its right half's score little (400 steps under SLURM: -0.5 dB on the mean of 4 views).
    raw_right = np.mean([v["psnr_right_half_raw"] for v in metrics["heldout_images"]])
    assert abs(metrics["heldout_psnr_right_half_appearance_fit"] - raw_right) < 1.5, metrics["heldout_images"]
    truth = json.loads((res / "synthetic/truth/cameras.json").read_text())
    oblique = {im["name"] for im in truth["images"] if im["oblique"]}
    for view in metrics["heldout_images"]:
        assert -5 < view["psnr_auto_exposure"] - view["psnr"] < (5 if view["name"] in oblique else 1), view


def test_thinned_sample_ours_recovers_the_surface_the_plain_loop_misses(sample_run, tmp_path):
    """Every second nadir photo trains; the 8 between two training photos are scored. The bar the
    sparse-view issue sets (+3 dB over the plain loop) is not met (see bench/results/README.md);
    what is asserted is what was measured in three runs on three SfM reconstructions (1000 steps,
    GSD 0.30 m): ours 29.1-29.3 dB vs plain 29.7-30.1 dB; median-depth error 0.32-0.35 m vs
    0.43-0.51 m; expected-depth error 0.36-0.41 m vs 2.0-5.5 m (plain's floaters smear it). So:
    depth within 2 GSD of the truth DSM, no worse than plain's median depth and far better in
    expected depth, for at most a small loss of held-out PSNR and SSIM."""
    # The two variants side by side, one thread each (two small trainings share 2 cores better
    # than one after the other with two threads each).
    procs = {}
    for variant in ("plain", "ours"):
        cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), "--scene", "sample",
               "--results", str(sample_run / "results"), "--split", "thin-nadir", "--steps", str(THIN_STEPS),
               "--variants", variant, "--threads", "1", "--out", str(tmp_path / f"{variant}.json")]
        with open(tmp_path / f"{variant}.log", "w") as log:
            procs[variant] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for variant, proc in procs.items():
        assert proc.wait(timeout=3600) == 0, (tmp_path / f"{variant}.log").read_text()[-4000:]
    r = json.loads((tmp_path / "ours.json").read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())["plain"]
    assert len(r["train_images"]) == 12 and len(r["heldout_images"]) == 8
    assert not set(r["train_images"]) & set(r["heldout_images"])
    ours = r["ours"]
    assert ours["depth_median_abs_error_m"] <= 2 * ours["gsd_m"], (ours["depth_median_abs_error_m"], ours["gsd_m"])
    assert ours["depth_median_abs_error_m"] <= plain["depth_median_abs_error_m"]
    assert ours["depth_expected_median_abs_error_m"] < 0.5 * plain["depth_expected_median_abs_error_m"]
    assert ours["heldout_psnr"] >= plain["heldout_psnr"] - 1.5, (ours["heldout_psnr"], plain["heldout_psnr"])
    assert ours["heldout_ssim"] >= plain["heldout_ssim"] - 0.04
