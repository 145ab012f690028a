"""The procedural sample scene: determinism, metadata, truth consistency.

Most tests use a reduced variant of the real recipe (320x240 images with the same
field of view, a 0.2 m texture raster, 8 photos) so the module stays fast; the
`slow` test checks the real recipe as the workflow generated it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import exifread
import numpy as np
import pytest
import rasterio
from PIL import Image

from aerosplat import samplescene
from aerosplat.errors import InputError

RECIPE = Path(__file__).resolve().parents[2] / "resources" / "sample_scene.yaml"

# Same field of view as the real recipe at half the resolution; fewer, smaller everything.
SMALL = {
    "scene": {"texture_cell_m": 0.2},
    "buildings": {"count": 25},
    "trees": {"count": 60},
    "camera": {"width": 320, "height": 240, "fx": 265.0, "fy": 265.0},
    "flight": {"lines": 2, "images_per_line": 3},
    "obliques": {"count": 2, "pitch_deg": [-50, -58]},
}
# Many tiny photos: only for noise statistics.
TINY = {
    "scene": {"texture_cell_m": 0.2},
    "camera": {"width": 40, "height": 30, "fx": 33.125, "fy": 33.125},
    "render": {"supersample": 1},
    "flight": {"lines": 6, "images_per_line": 12},
    "obliques": {"count": 0},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scene_small")
    summary = samplescene.generate(RECIPE, out, overrides=SMALL)
    return out, summary


def _cameras(out: Path) -> dict:
    return json.loads((out / "truth" / "cameras.json").read_text())


def _gcp_lines(out: Path) -> tuple[str, list[list[str]]]:
    lines = (out / "gcp_list.txt").read_text().splitlines()
    return lines[0], [ln.split() for ln in lines[1:]]


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_outputs_and_summary(small: tuple[Path, dict]) -> None:
    out, summary = small
    names = sorted(p.name for p in (out / "images").glob("*.jpg"))
    assert names == [f"IMG_{i:04d}.jpg" for i in range(1, 9)]
    assert summary["images"] == 8 and summary["nadir"] == 6 and summary["oblique"] == 2
    assert summary["buildings"] > 5 and summary["trees"] > 10
    with Image.open(out / "images" / names[0]) as im:
        assert im.size == (320, 240) and im.format == "JPEG"
    origin = json.loads((out / "truth" / "origin.json").read_text())
    assert origin["epsg"] == 32632 and origin["lat"] == 47.3962 and origin["h"] == 450.0
    assert 400_000 < origin["easting"] < 600_000 and 5_200_000 < origin["northing"] < 5_300_000
    cams = _cameras(out)
    assert (cams["width"], cams["height"], cams["cx"], cams["cy"]) == (320, 240, 160.0, 120.0)
    assert [im["oblique"] for im in cams["images"]] == [False] * 6 + [True] * 2


def test_deterministic(small: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = small
    samplescene.generate(RECIPE, tmp_path, overrides=SMALL)
    first, second = _digests(out), _digests(tmp_path)
    assert first.keys() == second.keys() and len(first) == 8 + 5
    assert first == second


def _exif_degrees(tag: exifread.classes.IfdTag, ref: exifread.classes.IfdTag) -> float:
    d, m, s = (float(v.num) / float(v.den) for v in tag.values)
    return (d + m / 60 + s / 3600) * (-1 if str(ref) in ("S", "W") else 1)


def test_exif_and_xmp_round_trip(small: tuple[Path, dict]) -> None:
    out, _ = small
    cams = _cameras(out)
    origin = json.loads((out / "truth" / "origin.json").read_text())
    times = []
    for im in cams["images"]:
        path = out / "images" / im["name"]
        with path.open("rb") as f:
            tags = exifread.process_file(f, details=False)
        lat = _exif_degrees(tags["GPS GPSLatitude"], tags["GPS GPSLatitudeRef"])
        lon = _exif_degrees(tags["GPS GPSLongitude"], tags["GPS GPSLongitudeRef"])
        alt_tag = tags["GPS GPSAltitude"].values[0]
        alt = float(alt_tag.num) / float(alt_tag.den)
        lat_w, lon_w, alt_w = im["gps_latlon"]
        assert abs(lat - lat_w) < 1e-6 and abs(lon - lon_w) < 1e-6 and abs(alt - alt_w) < 1e-3
        assert str(tags["GPS GPSAltitudeRef"]) == "0"
        assert str(tags["Image Make"]) == "aerosplat" and str(tags["Image Model"]) == "SimDrone 640"
        focal = tags["EXIF FocalLength"].values[0]
        res = tags["EXIF FocalPlaneXResolution"].values[0]
        unit_mm = {2: 25.4, 3: 10.0}[int(str(tags["EXIF FocalPlaneResolutionUnit"]))]
        sensor_mm = 320 / (float(res.num) / float(res.den)) * unit_mm
        assert float(focal.num) / float(focal.den) / sensor_mm * 320 == pytest.approx(265.0, abs=0.05)
        assert int(str(tags["EXIF FocalLengthIn35mmFilm"])) == 30
        times.append(str(tags["EXIF DateTimeOriginal"]))
        with Image.open(path) as pim:
            desc = pim.getxmp()["xmpmeta"]["RDF"]["Description"]
        assert float(desc["GimbalPitchDegree"]) == pytest.approx(im["gimbal_pitch_deg"], abs=0.006)
        assert float(desc["GimbalYawDegree"]) == pytest.approx(im["gimbal_yaw_deg_true_north"], abs=0.006)
        assert float(desc["GimbalRollDegree"]) == 0.0
        assert float(desc["AbsoluteAltitude"]) == pytest.approx(alt_w, abs=1e-3)
        assert float(desc["RelativeAltitude"]) == pytest.approx(alt_w - origin["h"], abs=1e-3)
        # the GPS in cameras.json is the EXIF value, projected; it is near (not at) the truth
        assert np.linalg.norm(np.subtract(im["gps"], im["center"])) < 20
    assert times == sorted(times) and len(set(times)) == len(times)
    # nadir shots are level: yaw 0/180 grid, i.e. -0.33/179.67 against true north
    yaws = {round(im["gimbal_yaw_deg_true_north"], 1) for im in cams["images"] if not im["oblique"]}
    assert yaws == {-0.3, 179.7}


def test_gps_noise_statistics(tmp_path: Path) -> None:
    samplescene.generate(RECIPE, tmp_path, overrides=TINY)
    cams = _cameras(tmp_path)
    diff = np.array([np.subtract(im["gps"], im["center"]) for im in cams["images"]])   # [72, 3]
    assert diff.shape == (72, 3)
    sig_h = diff[:, :2].std()
    sig_v = diff[:, 2].std()
    assert 1.6 < sig_h < 2.5, sig_h
    assert 2.4 < sig_v < 3.7, sig_v
    assert np.abs(diff.mean(0)).max() < 1.2
    # i.i.d.: neighbouring shots are not correlated like a drift would be
    assert abs(np.corrcoef(diff[:-1, 0], diff[1:, 0])[0, 1]) < 0.35


def test_dsm_dtm(small: tuple[Path, dict]) -> None:
    out, _ = small
    origin = json.loads((out / "truth" / "origin.json").read_text())
    with rasterio.open(out / "truth" / "dsm.tif") as dsm_ds, rasterio.open(out / "truth" / "dtm.tif") as dtm_ds:
        for ds in (dsm_ds, dtm_ds):
            assert ds.crs.to_epsg() == 32632
            assert ds.res == (0.25, 0.25) and ds.nodata == -9999 and ds.dtypes == ("float32",)
            assert ds.transform.e < 0          # north-up
            assert ds.bounds.left < origin["easting"] < ds.bounds.right
            assert ds.bounds.bottom < origin["northing"] < ds.bounds.top
            assert ds.width == ds.height == 1024
        dsm, dtm = dsm_ds.read(1), dtm_ds.read(1)
        row, col = dtm_ds.index(origin["easting"], origin["northing"])
    assert (dsm >= dtm).all()
    assert (dsm - dtm).max() > 3.0                     # buildings (and trees) stand on the terrain
    assert ((dsm - dtm) > 3.0).mean() > 0.05
    assert 2.0 < dtm.max() - dtm.min() < 12.0          # gentle hills of a few metres
    assert abs(dtm[row, col] - origin["h"]) < 0.2      # ground at the take-off point is h0
    # the GCP targets stand on open ground
    header, rows = _gcp_lines(out)
    for e, n, h in {tuple(map(float, r[:3])) for r in rows}:
        r, c = dsm_ds.index(e, n)
        assert abs(dsm[r, c] - dtm[r, c]) < 1e-4 and abs(dtm[r, c] - h) < 0.05


def test_gcp_projection_and_visibility(small: tuple[Path, dict]) -> None:
    out, _ = small
    cams = _cameras(out)
    by_name = {im["name"]: im for im in cams["images"]}
    header, rows = _gcp_lines(out)
    assert header == "EPSG:32632"
    assert len({r[6] for r in rows}) == 6               # every target seen at least once
    assert len(rows) >= 12
    for r in rows:
        X = np.array(r[:3], float)
        u, v = float(r[3]), float(r[4])
        im = by_name[r[5]]
        xc = np.array(im["R_world_to_cam"]) @ X + np.array(im["t_world_to_cam"])
        assert xc[2] > 0
        up = cams["fx"] * xc[0] / xc[2] + cams["cx"]
        vp = cams["fy"] * xc[1] / xc[2] + cams["cy"]
        assert np.hypot(up - u, vp - v) < 2.0
        # the local pose gives the same projection
        xl = np.array(im["R_local"]) @ (X - [json.loads((out / "truth" / "origin.json").read_text())[k]
                                             for k in ("easting", "northing", "h")]) + np.array(im["t_local"])
        assert np.allclose(xl, xc, atol=1e-5)
        # the checker is really there: dark and bright quadrants meet at the listed pixel
        with Image.open(out / "images" / r[5]) as pim:
            lum = np.asarray(pim.convert("L"), float)     # [H, W]
        j, i = int(u), int(v)                             # pixel centres at +0.5: floor gives the pixel
        patch = lum[i - 2:i + 3, j - 2:j + 3]
        assert patch.max() - patch.min() > 100, (r, patch)
        assert patch.min() < 70 and patch.max() > 150


def test_camera_geometry(small: tuple[Path, dict]) -> None:
    out, _ = small
    cams = _cameras(out)
    for im in cams["images"]:
        R = np.array(im["R_world_to_cam"])
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
        C = np.array(im["center"])
        assert np.allclose(-R.T @ np.array(im["t_world_to_cam"]), C, atol=1e-6)
        forward = R[2]
        if im["oblique"]:
            assert -np.sin(np.radians(60.5)) < forward[2] < -np.sin(np.radians(44.5))
        else:
            assert forward[2] == pytest.approx(-1.0)
    nadir_h = [im["center"][2] for im in cams["images"] if not im["oblique"]]
    assert nadir_h == pytest.approx([450.0 + 60.0] * len(nadir_h))


def test_recipe_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\n")
    with pytest.raises(InputError, match="location.lat"):
        samplescene.load_recipe(bad)
    with pytest.raises(InputError, match="not found"):
        samplescene.load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="half_size_m"):
        samplescene.generate(RECIPE, tmp_path / "o", overrides={
            "scene": {"half_size_m": 64, "texture_cell_m": 0.5}, "camera": {"width": 40, "height": 30,
                                                                            "fx": 33.125, "fy": 33.125}})


@pytest.mark.slow
def test_real_recipe_output(sample_georef: Path) -> None:
    """The shipped recipe as the workflow generated it: 30 photos, 6 GCPs, and the focal COLMAP
    recovers from the pixels is the one the truth says."""
    out = sample_georef / "results" / "sample" / "synthetic"
    truth = _cameras(out)
    assert len(truth["images"]) == 30 and sum(im["oblique"] for im in truth["images"]) == 6
    with Image.open(out / "images" / "IMG_0001.jpg") as im:
        assert im.size == (640, 480)
    header, rows = _gcp_lines(out)
    assert header == "EPSG:32632" and len({r[6] for r in rows}) == 6
    report = json.loads((sample_georef / "results" / "sample" / "sfm" / "report.json").read_text())
    (cam,) = report["cameras"].values()
    assert cam["params"][0] == pytest.approx(truth["fx"], rel=0.01)
