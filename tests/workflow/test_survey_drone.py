"""A survey drone's own metadata gets the heights right: the sample flown by a DJI-style RTK drone
(config/scenes/sample_survey.yaml: 24 nadir photos at 45 m, factory calibration with a small lens
distortion in XMP, RTK-fixed positions, a 35 mm tag 8 % short, no GCPs), and the same photos with
their calibration tags stripped, where the heights rest on the 35 mm tag and the run says so."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import rasterio

from conftest import ROOT, copy_run, run_snakemake

pytestmark = pytest.mark.slow

SCENE = "sample_survey"
CALIBRATION_TAGS = ("DewarpData", "DewarpFlag", "CalibratedFocalLength", "CalibratedOpticalCenterX",
                    "CalibratedOpticalCenterY")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    """The shipped survey scene through generate, ingest, sfm and georef."""
    work = tmp_path_factory.mktemp("survey")
    run_snakemake(work, "--cores", "2", f"results/{SCENE}/georef/frame.json", "--config", f"scenes=[{SCENE}]")
    return work / "results" / SCENE


def _sparse_points_vs_dsm(res: Path, truth: Path) -> np.ndarray:
    frame = _json(res / "georef/frame.json")
    rec = pycolmap.Reconstruction(str(res / "georef/sparse"))
    pts = np.array([p.xyz for p in rec.points3D.values()]) + np.array(frame["origin"])
    with rasterio.open(truth / "dsm.tif") as dsm:
        z = np.array([v[0] for v in dsm.sample(pts[:, :2])])
        inside = z != dsm.nodata
    assert inside.sum() > 0.8 * len(pts)
    return pts[inside, 2] - z[inside]


def test_factory_calibration_and_rtk_give_centimetres_from_the_photos_alone(survey):
    truth = _json(survey / "synthetic/truth/cameras.json")
    with open(survey / "ingest/exif.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(truth["images"]) == 24
    # The unit's DewarpData outranks the 35 mm tag, which is 8 % short.
    assert {r["focal_px_source"] for r in rows} == {"dewarp_data"} and {r["rtk_flag"] for r in rows} == {"50"}
    assert {float(r["focal_35mm"]) for r in rows} == {23.0} and float(rows[0]["calib_fx"]) == truth["fx"]

    sfm = _json(survey / "sfm/report.json")
    assert sfm["registered"] == 24 and sfm["nadir_only"] is True and sfm["refine_focal"] is False
    (cam,) = sfm["cameras"].values()
    assert cam["model"] == "OPENCV"
    assert abs(cam["params"][0] / truth["fx"] - 1) <= 0.005, cam["params"]  # focal within 0.5 %
    assert np.allclose(cam["params"][4:8], truth["params"][4:8], atol=1e-9)  # the distortion it was given

    frame = _json(survey / "georef/frame.json")
    assert frame["method"] == "gps" and not frame["gcps"]
    assert frame["positions"]["rtk_fixed_share"] == 1.0
    assert {tuple(p["sigma_m"]) for p in frame["per_image"]} == {(0.02, 0.02, 0.03)}
    assert frame["gt_camera_rmse_m"] <= 0.05, frame["gt_camera_rmse_m"]  # GPS alone, no GCPs
    assert "warning" not in frame["height_prior"], frame["height_prior"]
    dz = _sparse_points_vs_dsm(survey, survey / "synthetic/truth")
    assert np.median(np.abs(dz)) <= 0.1, np.median(np.abs(dz))


def test_without_the_calibration_tags_the_height_check_speaks_up(survey, tmp_path):
    """Same photos, calibration tags stripped (pixels and EXIF untouched): the focal falls back to
    the 35 mm tag, 8 % short, SfM holds it on this nadir-only flight, and every height shrinks with
    it; the warning names both heights, both explanations and the key, on the console, in
    frame.json and in the summary."""
    from aerosplat.samplescene import strip_xmp_attributes
    from aerosplat.summary import summarize

    images = tmp_path / "photos"
    images.mkdir()
    for photo in sorted((survey / "synthetic/images").glob("*.jpg")):
        strip_xmp_attributes(photo, images / photo.name, CALIBRATION_TAGS)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    shipped = (ROOT / "config/scenes" / f"{SCENE}.yaml").read_text()
    (scenes / "stripped.yaml").write_text(shipped.replace("generate: resources/sample_survey_scene.yaml\n", "")
                                          .replace('images: "{synthetic}/images"', f'images: "{images}"')
                                          .replace('truth: "{synthetic}/truth"', f'truth: "{survey}/synthetic/truth"'))
    proc = run_snakemake(tmp_path, "--cores", "2", "results/stripped/georef/frame.json", "--config",
                         f"scenes_dir={scenes}", "scenes=[stripped]")
    res = tmp_path / "results/stripped"
    sfm = _json(res / "sfm/report.json")
    assert sfm["focal_sources"] == {"35mm_equivalent": 24} and sfm["refine_focal"] is False
    frame = _json(res / "georef/frame.json")
    hp = frame["height_prior"]
    warning = hp["warning"]
    console = proc.stdout + proc.stderr
    assert warning in console  # printed, not only logged
    for words in (f"model flying height {hp['model_agl_m']:.1f} m",
                  f"relative altitude {hp['relative_altitude_m']:.1f} m",
                  "take-off point", "focal-length prior (35mm_equivalent", "`georef.height_prior`"):
        assert words in warning, warning
    assert hp["model_agl_m"] < 0.95 * hp["relative_altitude_m"]  # 8 % short focal: 8 % low flying height
    assert f"WARNING (georef): {warning}" in summarize(res)
    # The RTK positions still pin the cameras, so the ground is what moves: up, by about 8 % of 45 m.
    dz = np.median(_sparse_points_vs_dsm(res, survey / "synthetic/truth"))
    print(f"stripped: camera RMSE {frame['gt_camera_rmse_m']:.3f} m, model AGL {hp['model_agl_m']:.2f} m vs "
          f"relative altitude {hp['relative_altitude_m']:.2f} m, sparse points {dz:+.2f} m off the true DSM")
    assert 2.0 < dz < 5.0
