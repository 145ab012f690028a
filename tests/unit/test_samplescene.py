"""The procedural sample scene: determinism, metadata, truth consistency.

Most tests use a reduced variant of the real recipe (320x240 images with the same
field of view, a 0.2 m texture raster, 8 photos) so the module stays fast; the
`slow` test checks the real recipe as the workflow generated it. The survey-drone
variant (base recipe, lens distortion, DJI calibration/RTK tags) is tested at 64x48 px.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import exifread
import numpy as np
import piexif
import pycolmap
import pytest
import rasterio
import scipy.ndimage as ndi
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp

from aerosplat import samplescene
from aerosplat.errors import InputError

RECIPE = Path(__file__).resolve().parents[2] / "resources" / "sample_scene.yaml"
SURVEY_RECIPE = RECIPE.with_name("sample_survey_scene.yaml")

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
    "truth": {"ortho_supersample": 1},
    "flight": {"lines": 6, "images_per_line": 12},
    "obliques": {"count": 0},
}

# The survey recipe at a tenth of its resolution (same field of view, principal offset scaled).
SURVEY_TINY = {
    "scene": {"texture_cell_m": 0.2},
    "camera": {"width": 64, "height": 48, "fx": 44.44, "fy": 44.44, "principal_offset_px": [0.27, -0.19]},
    "render": {"supersample": 1},
    "truth": {"ortho_supersample": 1},
    "flight": {"lines": 2, "images_per_line": 2},
}
CALIBRATION_TAGS = ("CalibratedFocalLength", "CalibratedOpticalCenterX", "CalibratedOpticalCenterY",
                    "DewarpData")


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
    assert first.keys() == second.keys() and len(first) == 8 + 6
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


def _truth_grids(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Affine]:
    """DSM, DTM [m, m], the orthophoto's RGB [m, m, 3] (float), the cell-centre E, N [m, m], the grid."""
    with rasterio.open(out / "truth" / "dsm.tif") as ds:
        dsm, grid = ds.read(1).astype(float), ds.transform
    with rasterio.open(out / "truth" / "dtm.tif") as ds:
        dtm = ds.read(1).astype(float)
    with rasterio.open(out / "truth" / "ortho.tif") as ds:
        rgb = np.moveaxis(ds.read((1, 2, 3)), 0, -1).astype(float)
    assert grid.b == grid.d == 0                       # north-up: E from the column, N from the row
    east = np.broadcast_to(grid.c + (np.arange(dsm.shape[1]) + 0.5)[None, :] * grid.a, dsm.shape)
    north = np.broadcast_to(grid.f + (np.arange(dsm.shape[0]) + 0.5)[:, None] * grid.e, dsm.shape)
    return dsm, dtm, rgb, east, north, grid


def test_ortho_grid(small: tuple[Path, dict]) -> None:
    """truth/ortho.tif is an RGBA image on exactly the DSM's grid, every cell covered by the scene."""
    out, _ = small
    with rasterio.open(out / "truth" / "dsm.tif") as dsm, rasterio.open(out / "truth" / "ortho.tif") as ortho:
        assert ortho.crs == dsm.crs and ortho.crs.to_epsg() == 32632
        assert ortho.transform == dsm.transform and (ortho.width, ortho.height) == (dsm.width, dsm.height)
        assert ortho.count == 4 and ortho.dtypes == ("uint8",) * 4
        assert ortho.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
        assert ortho.profile["compress"] == "deflate" and ortho.profile["tiled"]
        alpha = ortho.read(4)
    assert (alpha == 255).all()                   # alpha comes from the ray hits: no sky anywhere


def test_ortho_matches_nadir_photos(small: tuple[Path, dict]) -> None:
    """Open flat ground looks the same in the orthophoto and in each nadir photo.

    Ground points (E, N, DSM) project into the photo with the true pose; only visible cells
    where DSM == DTM (no object) at least 1 m from any object are compared.
    """
    out, _ = small
    dsm, dtm, ortho, east, north, grid = _truth_grids(out)
    cams = _cameras(out)
    flat = ndi.binary_erosion(np.abs(dsm - dtm) < 0.05, iterations=4)
    ground = np.stack([east, north, dsm], -1)
    last = np.array(dsm.shape) - 1
    for im in (im for im in cams["images"] if not im["oblique"]):
        xc = ground @ np.array(im["R_world_to_cam"]).T + np.array(im["t_world_to_cam"])
        u = cams["fx"] * xc[..., 0] / xc[..., 2] + cams["cx"]
        v = cams["fy"] * xc[..., 1] / xc[..., 2] + cams["cy"]
        r, c = np.nonzero(flat & (u > 1) & (u < cams["width"] - 1) & (v > 1) & (v < cams["height"] - 1))
        # visible: the line of sight stays above the DSM up to the highest surface
        p, cam = ground[r, c], np.array(im["center"])
        reach = (dsm.max() - p[:, 2]) / (cam[2] - p[:, 2])
        along = p[None] + (np.linspace(0, 1, 160)[1:, None] * reach)[..., None] * (cam - p)[None]
        pr = ((along[..., 1] - grid.f) / grid.e).astype(int).clip(0, last[0])
        pc = ((along[..., 0] - grid.c) / grid.a).astype(int).clip(0, last[1])
        seen = ~(dsm[pr, pc] > along[..., 2] + 0.05).any(0)
        r, c = r[seen], c[seen]
        assert r.size > 40_000
        with Image.open(out / "images" / im["name"]) as pim:
            photo = np.asarray(pim, float)
        uv = [v[r, c] - 0.5, u[r, c] - 0.5]                # pixel centres at +0.5
        seen_rgb = np.stack([ndi.map_coordinates(photo[..., k], uv, order=1) for k in range(3)], -1)
        err = np.abs(seen_rgb - ortho[r, c]).mean()
        misplaced = np.abs(seen_rgb - ortho[(r + 2).clip(0, last[0]), c]).mean()
        # measured 2.6-2.8 grey levels (JPEG and the 0.23 m photo vs 0.25 m cell resampling);
        # half a metre of misregistration already gives 8.7-9.6
        assert err < 5.0, (im["name"], err)
        assert err < 0.5 * misplaced, (im["name"], err, misplaced)


def test_ortho_roofs_on_footprints(small: tuple[Path, dict]) -> None:
    """No lean: the orthophoto departs from the bare ground's colour where, and only where, roofs stand.

    A perspective view would shift each roof away from its footprint and show facades
    on the ground; here the cells whose colour is not the bare ground's (the renderer's
    ground texture at the cell) must coincide with DSM - DTM > 2 m (trees left out).
    """
    out, _ = small
    dsm, dtm, ortho, east, north, _ = _truth_grids(out)
    origin = json.loads((out / "truth" / "origin.json").read_text())
    recipe = samplescene.load_recipe(RECIPE, SMALL)
    sc = samplescene.build_scene(recipe, samplescene.plan_flight(recipe))
    x = (east - origin["easting"]).astype(np.float32).ravel()
    y = (north - origin["northing"]).astype(np.float32).ravel()
    bare = 255 * sc.ground.sample(x, y, np.full(x.size, 0.25, np.float32)).reshape(ortho.shape)
    canopy = (samplescene._soft_height(sc, x, y) - samplescene._terrain_height(sc, x, y)).reshape(dsm.shape)
    trees = ndi.binary_dilation(canopy > 0.03, iterations=4)
    roofs = (dsm - dtm > 2.0) & ~trees
    # 20 grey levels: open ground off by more (4 ray samples vs one texture lookup, GCP targets)
    # covers 1,278 of 1,048,576 cells
    covered = (np.abs(ortho - bare).max(-1) > 20) & ~trees
    assert roofs.sum() > 20_000
    iou = (roofs & covered).sum() / (roofs | covered).sum()
    assert iou > 0.9, iou                               # measured 0.958


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
    with pytest.raises(InputError, match="truth.ortho_supersample must be >= 1"):
        samplescene.load_recipe(RECIPE, {"truth": {"ortho_supersample": 0}})
    with pytest.raises(InputError, match="half_size_m"):
        samplescene.generate(RECIPE, tmp_path / "o", overrides={
            "scene": {"half_size_m": 64, "texture_cell_m": 0.5}, "camera": {"width": 40, "height": 30,
                                                                            "fx": 33.125, "fy": 33.125}})


def test_recipe_base(tmp_path: Path) -> None:
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "base.yaml").write_text(RECIPE.read_text())
    child = tmp_path / "scenes" / "child.yaml"
    child.write_text("base: base.yaml\ncamera:\n  fx: 500.0\n")
    recipe = samplescene.load_recipe(child)
    assert "base" not in recipe
    assert recipe["camera"]["fx"] == 500.0 and recipe["camera"]["fy"] == 530.0   # deep merge
    assert recipe["seed"] == 20240615 and recipe["trees"]["count"] == 110
    assert samplescene.load_recipe(child, {"camera": {"fx": 400.0}})["camera"]["fx"] == 400.0
    # the shipped survey recipe builds on the sample scene
    survey = samplescene.load_recipe(SURVEY_RECIPE)
    assert survey["location"] == samplescene.load_recipe(RECIPE)["location"]
    assert (survey["camera"]["make"], survey["obliques"]["count"]) == ("DJI", 0)
    # a missing base names the missing file; a cycle is refused
    child.write_text("base: nowhere/missing.yaml\n")
    with pytest.raises(InputError, match="base recipe not found") as err:
        samplescene.load_recipe(child)
    assert err.value.path == str(tmp_path / "scenes" / "nowhere" / "missing.yaml")
    (tmp_path / "scenes" / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "scenes" / "b.yaml").write_text("base: a.yaml\nseed: 2\n")
    child.write_text("base: a.yaml\n")
    with pytest.raises(InputError, match="cycle") as err:
        samplescene.load_recipe(child)
    assert "b.yaml" in str(err.value)
    # an optional section, once present, must be complete
    with pytest.raises(InputError, match="camera.distortion.k3"):
        samplescene.load_recipe(RECIPE, {"camera": {"distortion": {"k1": 0.1, "k2": 0, "p1": 0, "p2": 0}}})


def test_distortion_round_trip() -> None:
    k = samplescene._distortion(samplescene.load_recipe(SURVEY_RECIPE))
    assert k == (-0.045, 0.021, 0.0004, -0.0003, 0.0)
    # normalized points over the whole survey image and a little beyond its corners
    x, y = np.meshgrid(np.linspace(-0.8, 0.8, 41), np.linspace(-0.6, 0.6, 31))
    xd, yd = samplescene._distort(x, y, k)
    xu, yu = samplescene._undistort(xd, yd, k)
    assert np.abs(xu - x).max() < 1e-9 and np.abs(yu - y).max() < 1e-9
    assert np.hypot(xd - x, yd - y).max() > 0.02                      # ~9 px at fx 444: not a no-op
    # COLMAP's OPENCV model projects the same pixels
    cam = pycolmap.Camera(model="OPENCV", width=640, height=480,
                          params=[444.4, 444.4, 322.7, 238.1, *k[:4]])
    uv = cam.img_from_cam(np.stack([x.ravel(), y.ravel(), np.ones(x.size)], -1))
    assert np.abs(uv - np.stack([444.4 * xd.ravel() + 322.7, 444.4 * yd.ravel() + 238.1], -1)).max() < 1e-6
    # a distortion that folds over inside the image is refused, not rendered wrongly
    with pytest.raises(InputError, match="cannot be inverted"):
        samplescene._undistort(np.array([0.9]), np.array([0.6]), (-0.8, 0.0, 0.0, 0.0, 0.0))


def _tiny_distorted() -> tuple[dict, list, samplescene.Scene]:
    """The survey scene at 96x72 px with a strong lens (up to 20 px of warp) and exact GCP pixels."""
    recipe = samplescene.load_recipe(SURVEY_RECIPE, {
        **SURVEY_TINY,
        "camera": {"width": 96, "height": 72, "fx": 66.66, "fy": 66.66, "principal_offset_px": [0.4, -0.3],
                   "distortion": {"k1": -0.25, "k2": 0.05, "p1": 0.002, "p2": -0.001, "k3": 0.0}},
        "noise": {"gcp_pixel_sigma_px": 0.0}, "gcps": {"margin_px": 0},
    })
    shots = samplescene.plan_flight(recipe)
    return recipe, shots, samplescene.build_scene(recipe, shots)


def test_distorted_photo_is_the_warped_pinhole_photo() -> None:
    recipe, shots, sc = _tiny_distorted()
    w, h, fx, fy, cx, cy = samplescene._camera_matrix(recipe)
    k = samplescene._distortion(recipe)
    samplescene._check_coverage(sc, shots, w, h, fx, fy, cx, cy, k)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)          # pixel centres
    for shot in shots[:2]:
        dist = samplescene.render(sc, shot, w, h, fx, fy, cx, cy, 1, k).astype(float)
        pin = samplescene.render(sc, shot, w, h, fx, fy, cx, cy, 1).astype(float)

        def resample(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The pinhole photo at normalized (x, y), bilinear; and where that lies inside it."""
            pu, pv = fx * x + cx - 0.5, fy * y + cy - 0.5                # array index coordinates
            img = np.stack([ndi.map_coordinates(pin[..., c], [pv, pu], order=1) for c in range(3)], -1)
            return img, (pu >= 0) & (pu <= w - 1) & (pv >= 0) & (pv <= h - 1)

        xn, yn = (u - cx) / fx, (v - cy) / fy
        xu, yu = samplescene._undistort(xn, yn, k)
        warped, inside = resample(xu, yu)
        wrong_way, _ = resample(*samplescene._distort(xn, yn, k))
        m = inside & (np.hypot(fx * (xu - xn), fy * (yu - yn)) > 2.0)    # where the lens moves pixels
        assert m.sum() > 1000
        err = np.abs(dist - warped)[m].mean()
        assert err < 4.0                                                # resampling error only
        assert err < 0.25 * np.abs(dist - pin)[m].mean()
        assert err < 0.25 * np.abs(dist - wrong_way)[m].mean()


def test_gcp_observations_follow_the_lens() -> None:
    recipe, shots, sc = _tiny_distorted()
    pinhole = samplescene._deep_merge(recipe, {"camera": {"distortion": None}})
    obs_d = samplescene._gcp_observations(sc, shots, recipe, np.random.default_rng(0))
    obs_p = samplescene._gcp_observations(sc, shots, pinhole, np.random.default_rng(0))
    w, h, fx, fy, cx, cy = samplescene._camera_matrix(recipe)
    colmap = {"OPENCV": [fx, fy, cx, cy, -0.25, 0.05, 0.002, -0.001], "PINHOLE": [fx, fy, cx, cy]}
    moved = 0.0
    for model, obs in (("OPENCV", obs_d), ("PINHOLE", obs_p)):
        assert len(obs) >= 4
        cam = pycolmap.Camera(model=model, width=w, height=h, params=colmap[model])
        for si, gi, u, v in obs:
            xc = shots[si].R @ (sc.gcps[gi] - shots[si].center)
            assert np.allclose(cam.img_from_cam(xc[None])[0], [u, v], atol=1e-6)
            if model == "OPENCV":
                xp, yp = samplescene._project(xc[None], fx, fy, cx, cy, None)
                moved = max(moved, float(np.hypot(u - xp[0], v - yp[0])))
    assert moved > 2.0                                                  # the lens did move targets


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene_survey")
    samplescene.generate(SURVEY_RECIPE, out, overrides=SURVEY_TINY)
    return out


def test_survey_tags(survey: Path) -> None:
    recipe = samplescene.load_recipe(SURVEY_RECIPE)
    cams = _cameras(survey)
    assert cams["model"] == "OPENCV"
    assert cams["params"] == [44.44, 44.44, 32.27, 23.81, -0.045, 0.021, 0.0004, -0.0003]
    assert cams["f35_true_mm"] == pytest.approx(25.0, abs=0.01) and cams["f35_written_mm"] == 23
    assert cams["survey"] == recipe["survey"]
    for im in cams["images"]:
        with Image.open(survey / "images" / im["name"]) as pim:
            desc = pim.getxmp()["xmpmeta"]["RDF"]["Description"]
            exif = piexif.load(pim.info["exif"])["Exif"]
        assert desc["CalibratedFocalLength"] == "44.440000"
        assert (desc["CalibratedOpticalCenterX"], desc["CalibratedOpticalCenterY"]) == ("32.270000", "23.810000")
        date, values = desc["DewarpData"].split(";")
        assert date == "2024-05-20"
        assert [float(x) for x in values.split(",")] == pytest.approx(
            [44.44, 44.44, 0.27, -0.19, -0.045, 0.021, 0.0004, -0.0003, 0.0], abs=1e-12)
        assert values.split(",")[4] == "-0.045000000000"
        assert (desc["DewarpFlag"], desc["RtkFlag"]) == ("0", "50")
        assert (desc["RtkStdLon"], desc["RtkStdLat"], desc["RtkStdHgt"]) == ("0.02000", "0.02000", "0.03000")
        assert float(desc["GimbalPitchDegree"]) == -90.0
        assert exif[piexif.ExifIFD.FocalLengthIn35mmFilm] == 23          # 8 % short of the true 25 mm
        assert exif[piexif.ExifIFD.FocalLength] == (91657, 10000)        # 44.44 px * 13.2 mm / 64 px
        for tag in (piexif.ExifIFD.FocalPlaneXResolution, piexif.ExifIFD.FocalPlaneYResolution,
                    piexif.ExifIFD.FocalPlaneResolutionUnit):
            assert tag not in exif
        # RTK: the written position is within a few centimetres of the truth
        assert np.abs(np.subtract(im["gps"], im["center"])).max() < 0.15


def test_survey_recipe_fits_the_scene() -> None:
    """The shipped survey flight: 24 nadir photos at 45 m whose widened (barrel) view stays in the scene."""
    recipe = samplescene.load_recipe(SURVEY_RECIPE, {"scene": {"texture_cell_m": 0.2}})
    shots = samplescene.plan_flight(recipe)
    assert len(shots) == 24 and not any(s.oblique for s in shots)
    assert {s.center[2] for s in shots} == {45.0}
    w, h, fx, fy, cx, cy = samplescene._camera_matrix(recipe)
    assert (w, h, fx, cx, cy) == (640, 480, 444.4, 322.7, 238.1)
    assert samplescene._focal_35mm(recipe) == (pytest.approx(25.0, abs=0.01), 23)
    sc = samplescene.build_scene(recipe, shots)
    samplescene._check_coverage(sc, shots, w, h, fx, fy, cx, cy, samplescene._distortion(recipe))


def _segments(data: bytes) -> tuple[list[bytes], bytes]:
    """JPEG marker segments before the scan, and the rest (SOS segment, scan, EOI)."""
    pos, out = 2, []
    while data[pos + 1] != 0xDA:
        n = int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append(data[pos:pos + 2 + n])
        pos += 2 + n
    return out, data[pos:]


def test_strip_xmp_attributes(survey: Path, tmp_path: Path) -> None:
    src = survey / "images" / "IMG_0001.jpg"
    dst = tmp_path / "IMG_0001.jpg"
    samplescene.strip_xmp_attributes(src, dst, CALIBRATION_TAGS)
    with Image.open(src) as a, Image.open(dst) as b:
        before = a.getxmp()["xmpmeta"]["RDF"]["Description"]
        after = b.getxmp()["xmpmeta"]["RDF"]["Description"]
        assert a.info["exif"] == b.info["exif"]
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert set(before) - set(after) == set(CALIBRATION_TAGS)
    assert after == {key: val for key, val in before.items() if key not in CALIBRATION_TAGS}
    # only the XMP segment changed; EXIF and the entropy-coded data are the same bytes
    (seg_old, scan_old), (seg_new, scan_new) = _segments(src.read_bytes()), _segments(dst.read_bytes())
    changed = [i for i, (p, q) in enumerate(zip(seg_old, seg_new)) if p != q]
    assert len(seg_old) == len(seg_new) and len(changed) == 1 and scan_old == scan_new
    assert seg_new[changed[0]][4:].startswith(b"http://ns.adobe.com/xap/1.0/\x00")
    # refusals: a name that is not there, a file that is not a JPEG, a JPEG without XMP
    with pytest.raises(InputError, match="DewarpData found 0 times"):
        samplescene.strip_xmp_attributes(dst, tmp_path / "again.jpg", ["DewarpData"])
    png = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(png)
    with pytest.raises(InputError, match="not a JPEG"):
        samplescene.strip_xmp_attributes(png, tmp_path / "y.jpg", ["RtkFlag"])
    bare = tmp_path / "bare.jpg"
    Image.new("RGB", (16, 16)).save(bare, exif=Image.open(src).info["exif"])
    with pytest.raises(InputError, match="no XMP"):
        samplescene.strip_xmp_attributes(bare, tmp_path / "z.jpg", ["RtkFlag"])


def test_pinhole_outputs_unchanged(small: tuple[Path, dict], tmp_path: Path) -> None:
    """The new intrinsics and survey keys, absent or zero, change nothing: same files, same truth JSON."""
    out, _ = small
    samplescene.generate(RECIPE, tmp_path, overrides={
        **SMALL, "camera": {**SMALL["camera"], "principal_offset_px": [0, 0],
                            "distortion": {"k1": 0, "k2": 0, "p1": 0, "p2": 0, "k3": 0}}})
    assert _digests(out) == _digests(tmp_path)
    cams = _cameras(out)
    assert list(cams) == ["epsg", "width", "height", "fx", "fy", "cx", "cy", "model", "conventions", "images"]
    assert cams["model"] == "PINHOLE"
    with Image.open(out / "images" / "IMG_0001.jpg") as pim:
        desc = pim.getxmp()["xmpmeta"]["RDF"]["Description"]
        exif = piexif.load(pim.info["exif"])["Exif"]
    assert not {"CalibratedFocalLength", "DewarpData", "RtkFlag"} & set(desc)
    assert exif[piexif.ExifIFD.FocalPlaneResolutionUnit] == 3


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
