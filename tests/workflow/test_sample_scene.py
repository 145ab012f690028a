"""The built-in sample scene end to end through Snakemake, checked against its ground truth."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import rasterio

pytestmark = pytest.mark.slow


def _json(path):
    return json.loads(path.read_text())


def test_sample_sfm_registers_everything_precisely(sample_georef):
    report = _json(sample_georef / "results/sample/sfm/report.json")
    for key in ("registered", "total", "mean_reproj_error_px", "num_points3d", "mean_track_length", "seconds"):
        assert key in report
    assert report["total"] >= 25
    assert report["registered"] == report["total"]
    assert report["mean_reproj_error_px"] < 1.0
    assert report["num_points3d"] > 1000 and report["mean_track_length"] > 3.0


def test_sample_georef_matches_truth(sample_georef):
    frame = _json(sample_georef / "results/sample/georef/frame.json")
    truth = _json(sample_georef / "results/sample/synthetic/truth/cameras.json")
    assert frame["epsg"] == truth["epsg"] == 32632  # UTM zone of the scene centroid
    for key in ("origin", "scale", "rmse_gps_m", "per_image", "gt_camera_rmse_m"):
        assert key in frame
    # GCPs take the camera centres to a few decimetres of the truth; GPS alone cannot with 2-3 m noise.
    assert frame["gt_camera_rmse_m"] <= 0.3
    assert frame["rmse_gcp_m"]["horizontal"] < 0.2 and abs(frame["rmse_gcp_m"]["vertical"]) < 0.3
    # The residuals to the noisy GPS are what its noise says (sigma 2 m per axis, 3 m vertical).
    assert 1.5 < frame["rmse_gps_m"]["horizontal"] < 4.5 and 1.5 < frame["rmse_gps_m"]["vertical"] < 5.0
    assert len(frame["per_image"]) == len(truth["images"])
    assert frame["height_prior"]["nadir_only"] is False  # the sample has obliques


def test_sample_points_lie_on_the_true_surface(sample_georef):
    """Georeferenced sparse points against the true DSM: the local frame + origin is the delivery CRS."""
    frame = _json(sample_georef / "results/sample/georef/frame.json")
    rec = pycolmap.Reconstruction(str(sample_georef / "results/sample/georef/sparse"))
    pts = np.array([p.xyz for p in rec.points3D.values()]) + np.array(frame["origin"])
    with rasterio.open(sample_georef / "results/sample/synthetic/truth/dsm.tif") as dsm:
        assert dsm.crs.to_epsg() == frame["epsg"]
        z = np.array([v[0] for v in dsm.sample(pts[:, :2])])
        inside = z != dsm.nodata
    dz = pts[inside, 2] - z[inside]
    assert inside.sum() > 0.8 * len(pts)
    assert abs(np.median(dz)) < 0.3
    assert np.median(np.abs(dz)) < 0.5
