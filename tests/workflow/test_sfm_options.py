"""The non-default SfM paths on the sample photos: spatial matching from GPS priors, global mapping."""

from __future__ import annotations

import json

import pycolmap
import pytest

from aerosplat import sfm

pytestmark = pytest.mark.slow


def test_spatial_matcher_and_global_mapper(sample_georef, tmp_path):
    res = sample_georef / "results/sample"
    out = tmp_path / "sfm"
    report = sfm.run(res / "ingest/images", res / "ingest/exif.csv", out / "sparse", out / "report.json",
                     out / "database.db", threads=2,
                     options={"matcher": "auto", "exhaustive_max_images": 10, "spatial_max_neighbors": 12,
                              "mapper": "global"})
    assert report["matcher"] == "spatial" and report["mapper"] == "global"
    assert report == json.loads((out / "report.json").read_text())
    assert report["registered"] == report["total"] and report["mean_reproj_error_px"] < 1.0
    with pycolmap.Database.open(str(out / "database.db")) as db:
        priors = db.read_all_pose_priors()
        # every image's GPS is a pose prior with the covariance we wrote (not COLMAP's NaN default)
        assert len(priors) == report["total"] == report["pose_priors"]
        assert all(p.position_covariance[0, 0] > 0 for p in priors)
        # spatial matching pairs neighbours only, not every pair
        assert db.num_matched_image_pairs() < report["total"] * (report["total"] - 1) / 2
