"""Georeferencing the sample's SfM model from each position source: geo.txt (ODM format, with its own
accuracies and a wild fix), GCPs alone, and EXIF GPS alone; each checked against the true cameras."""

from __future__ import annotations

import json

import pytest

from aerosplat import georef, ingest

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
