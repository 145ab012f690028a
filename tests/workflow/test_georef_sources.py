"""Georeferencing the sample's SfM model from each position source: geo.txt (ODM format, with its own
accuracies and a wild fix), GCPs alone, and EXIF GPS alone; each checked against the true cameras.
And check points (CHK... in gcp_list.txt) kept out of the fit and scored apart."""

from __future__ import annotations

import json

import pytest
import yaml

from aerosplat import georef, ingest, summary
from conftest import GEOREF_STAGES, TEST_SCENES, copy_run, job_counts, run_snakemake

pytestmark = pytest.mark.slow


def _truth(sample_georef):
    return json.loads((sample_georef / "results/sample/synthetic/truth/cameras.json").read_text())


def test_geo_txt_with_accuracies_and_one_wild_fix(sample_georef, tmp_path):
    res = sample_georef / "results/sample"
    truth = _truth(sample_georef)
    lines = ["WGS84 UTM 32N"]
    for i, im in enumerate(truth["images"]):
        e, n, h = im["center"]
        if i == 7:
            e, n, h = e + 60.0, n - 45.0, h + 30.0  # a wild fix
        lines.append(f"{im['name']} {e:.3f} {n:.3f} {h:.3f} 0 0 0 0.03 0.05")
    geo = tmp_path / "geo.txt"
    geo.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r"
    metas = ingest.run(res / "synthetic/images", out / "ingest/images", out / "ingest/exif.csv",
                       out_skipped_csv=out / "ingest/skipped.csv", geo_txt=geo)
    assert all(m.position_source == "geo_txt" for m in metas)
    frame = georef.run(res / "sfm/sparse", out / "ingest/exif.csv", out / "georef/sparse", out / "georef/frame.json",
                       truth_dir=res / "synthetic/truth", options={"method": "gps"})
    assert frame["outliers"] == [truth["images"][7]["name"]]
    assert frame["gt_camera_rmse_m"] < 0.1  # centimetre positions, the wild one ignored
    # The headline residual is over every position, so the wild fix shows in it; the inliers' beside it.
    assert frame["rmse_gps_m"]["horizontal_inliers"] < 0.1 and frame["rmse_gps_m"]["horizontal"] > 10
    bad = next(p for p in frame["per_image"] if p["image"] == truth["images"][7]["name"])
    assert bad["inlier"] is False and bad["horizontal_m"] > 70


@pytest.mark.parametrize("method,bound", [("gcp", 0.1), ("gps", 1.5)])
def test_gcp_only_and_gps_only(sample_georef, tmp_path, method, bound):
    res = sample_georef / "results/sample"
    frame = georef.run(res / "sfm/sparse", res / "ingest/exif.csv", tmp_path / "sparse", tmp_path / "frame.json",
                       gcp_list=res / "synthetic/gcp_list.txt" if method == "gcp" else None,
                       truth_dir=res / "synthetic/truth", options={"method": method})
    assert frame["method"] == method
    # GCPs: centimetres. GPS alone (sigma 2 m / 3 m, 30 photos): the fit averages the noise down by
    # about sqrt(30), to under a metre, and no further.
    assert frame["gt_camera_rmse_m"] < bound
    if method == "gcp":
        assert len(frame["gcps"]) == 6 and frame["rmse_gcp_m"]["horizontal"] < 0.05


def test_check_points_reported_apart(sample_georef, tmp_path):
    """Two of the sample's six GCPs renamed CHK...: the fit uses the other four, the two are scored
    against the final model as check points, and the cameras stay where four GCPs put them."""
    work = copy_run(sample_georef, tmp_path / "run", GEOREF_STAGES)
    res = work / "results/sample"
    lines = (res / "synthetic/gcp_list.txt").read_text().splitlines()
    renamed = {"GCP02": "CHK02", "GCP05": "CHK05"}
    body = [" ".join(t[:6] + [renamed.get(t[6], t[6])] + t[7:]) for t in (line.split() for line in lines[1:])]
    gcp_list = tmp_path / "gcp_list.txt"
    gcp_list.write_text("\n".join([lines[0], *body]) + "\n")
    scene = yaml.safe_load((TEST_SCENES / "sample.yaml").read_text())
    scene["positions"]["gcp_list"] = str(gcp_list)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "sample.yaml").write_text(yaml.safe_dump(scene))
    # Georef only: the photos, SfM model and truth are the session's.
    # (The target first: --forcerun and --config take every argument after them.)
    proc = run_snakemake(work, "results/sample/georef/frame.json", "--cores", "1", "--forcerun", "georef",
                         "--allowed-rules", "georef", "--config", f"scenes_dir={scenes}", "scenes=[sample]")
    assert job_counts(proc.stdout + proc.stderr) == {"georef": 1}
    frame = json.loads((res / "georef/frame.json").read_text())
    listed = {t[6]: [float(v) for v in t[:3]] for t in (line.split() for line in body)}
    chk, control = frame["checkpoints"], frame["gcps"]
    print(f"\ncheck points: {[(r['gcp'], round(r['horizontal_m'], 3), round(r['dz'], 3)) for r in chk]}, "
          f"RMSE {frame['rmse_checkpoints_m']}; GCP RMSE {frame['rmse_gcp_m']}; "
          f"camera RMSE vs truth {frame['gt_camera_rmse_m']:.3f} m")
    assert frame["method"] == "gcp+gps"
    assert sorted(r["gcp"] for r in chk) == ["CHK02", "CHK05"] and all(r["role"] == "check" for r in chk)
    assert len(control) == 4 and all(r["role"] == "control" and not r["gcp"].startswith("CHK") for r in control)
    for r in chk + control:
        assert r["xyz"] == pytest.approx(listed[r["gcp"]], abs=1e-6)  # the file's CRS is the delivery CRS
    assert frame["rmse_checkpoints_m"]["count"] == 2 and frame["rmse_checkpoints_m"]["horizontal"] < 0.3
    assert frame["gt_camera_rmse_m"] <= 0.3  # the foundation's bound (test_sample_scene.py)
    log = (work / "logs/georef/sample.log").read_text()
    assert "check points (not in the fit): 2 of 2 triangulated" in log
    assert "check points (not in the fit): 2, RMSE" in summary.summarize(res)
