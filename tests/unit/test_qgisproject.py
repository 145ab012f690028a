"""The QGIS project: built by the real client from synthetic products laid out as the products stage
lays them out, then re-opened in a fresh QGIS process: every layer valid, in the delivery CRS, where
the products are, with relative paths; a missing DTM leaves its layers out with the reason. The pure
helpers (COLMAP reader, footprints, cells, GCP list) are checked against pycolmap and geometry."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path


import numpy as np
import pycolmap
import pytest
import rasterio
from affine import Affine
from pyproj import CRS, Transformer

from aerosplat import qgisproject as qp
from aerosplat.gisio import write_cog, write_laz
from clients import reopen_project

from conftest import ROOT

EPSG = 32632
ORIGIN = np.array([465_892.0, 5_249_293.0, 500.0])
GROUND_LOCAL = -50.0  # ground 450 m, cameras 60 m above it
GSD = 0.5
GRID = (-60.0, -40.0, 60.0, 40.0)  # local xmin, ymin, xmax, ymax of the rasters
NADIR = [(x, y) for y in (-20.0, 20.0) for x in (-40.0, 0.0, 40.0)]
FOCAL, W, H, K1 = 530.0, 640, 480, -0.05


def _nadir_pose(cx, cy, cz):
    R = np.diag([1.0, -1.0, -1.0])  # camera x east, y south, z down
    return R, -R @ np.array([cx, cy, cz])


def _oblique_pose(cx, cy, cz, tilt_deg):
    """Looking north, the optical axis `tilt_deg` from straight down."""
    a = np.radians(tilt_deg)
    z = np.array([0.0, np.sin(a), -np.cos(a)])  # forward
    x = np.array([1.0, 0.0, 0.0])
    y = np.cross(z, x)
    R = np.vstack([x, y, z])
    return R, -R @ np.array([cx, cy, cz])


def _sparse(path: Path) -> list[str]:
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=W, height=H, params=[FOCAL, W / 2, H / 2, K1], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    poses = [_nadir_pose(x, y, 10.0) for x, y in NADIR] + [_oblique_pose(0.0, -45.0, 10.0, 80.0)]
    names = []
    for i, (R, t) in enumerate(poses, start=1):
        name = f"IMG_{i:04d}.jpg"
        im = pycolmap.Image(name=name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        names.append(name)
    path.mkdir(parents=True)
    rec.write(str(path))
    return names


def make_scene(results: Path, scene: str = "demo", *, dtm: bool = True) -> Path:
    """results/<scene>/ with products, georef, partitions and ingest files as the stages write them."""
    root = results / scene
    crs = CRS.from_epsg(EPSG)
    names = _sparse(root / "georef" / "sparse")
    rng = np.random.default_rng(0)
    # Rasters: a slope with a 10 m building; the DTM is the slope.
    cols, rows = int((GRID[2] - GRID[0]) / GSD), int((GRID[3] - GRID[1]) / GSD)
    transform = Affine(GSD, 0, ORIGIN[0] + GRID[0], 0, -GSD, ORIGIN[1] + GRID[3])
    yy, xx = np.mgrid[0:rows, 0:cols]
    ground = (450.0 + 0.02 * xx * GSD).astype(np.float32)
    dsm = ground.copy()
    building = (np.abs(xx - cols / 2) < 20) & (np.abs(yy - rows / 2) < 12)
    dsm[building] += 10.0
    dsm[:3, :3] = -9999.0
    products = root / "products"
    write_cog(products / "dsm.tif", dsm, transform, crs, nodata=-9999.0)
    if dtm:
        write_cog(products / "dtm.tif", ground, transform, crs, nodata=-9999.0)
    rgba = np.stack([(xx * 2) % 256, (yy * 3) % 256, np.where(building, 200, 60), np.full_like(xx, 255)])
    rgba = rgba.astype(np.uint8)
    rgba[3, :4, :] = 0
    write_cog(products / "ortho.tif", rgba, transform, crs)
    n = 20_000
    px = rng.uniform(0, cols, n)
    py = rng.uniform(0, rows, n)
    z = dsm[py.astype(int), px.astype(int)]
    ok = z > 0
    xyz = np.column_stack([transform.c + px * GSD, transform.f - py * GSD, z])[ok]
    cls = np.where(building[py.astype(int), px.astype(int)], 1, 2)[ok]
    write_laz(products / "points.laz", xyz, rng.uniform(0, 1, (len(xyz), 3)), crs, classification=cls)
    (products / "metrics.json").write_text(json.dumps({"gsd_m": GSD}))
    # frame.json as georef writes it (the keys the project reads).
    per_image = [{"image": nm, "source": "exif", "dx": 0.3 * i, "dy": -0.4, "dz": 1.2,
                  "horizontal_m": float(np.hypot(0.3 * i, 0.4)), "sigma_m": [2.0, 2.0, 3.0],
                  "accuracy_source": "default", "inlier": i != 3} for i, nm in enumerate(names)]
    gcps = [{"gcp": f"GCP0{i}", "dx": 0.01 * i, "dy": -0.02, "dz": 0.015, "observations": 6, "used": 6,
             "reproj_px": 0.5, "inlier": True} for i in (1, 2, 3)]
    frame = {"epsg": EPSG, "crs_name": crs.name, "crs_wkt": crs.to_wkt(), "origin": ORIGIN.tolist(),
             "frame": "local = delivery CRS - origin; Z up; metres", "method": "gcp+gps", "per_image": per_image,
             "gcps": gcps, "rmse_gcp_m": {"horizontal": 0.03, "vertical": 0.015}, "checks": {"model_agl_m": 60.0}}
    (root / "georef" / "frame.json").write_text(json.dumps(frame, indent=1))
    # The partition manifest (local frame).
    parts = [{"id": f"p0{i}", "cell_bounds": [x0, -40.0, x1, 40.0], "expanded_bounds": [x0 - 12, -52.0, x1 + 12, 52.0],
              "z_range": [-51.0, -38.0], "images": names[:5], "num_points": 1000}
             for i, (x0, x1) in enumerate([(-60.0, 0.0), (0.0, 60.0)])]
    manifest = {"version": 1, "frame": {"epsg": EPSG, "origin": ORIGIN.tolist()}, "heldout": [names[0]],
                "train": names[1:], "grid": [1, 2], "extent": list(GRID), "partitions": parts}
    (root / "partitions").mkdir(parents=True)
    (root / "partitions" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # exif.csv: the registered photos, one that did not register and one without a position.
    to_wgs = Transformer.from_crs(EPSG, 4326, always_xy=True)
    (root / "ingest").mkdir(parents=True)
    with open(root / "ingest" / "exif.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "lat", "lon", "alt", "position_source"])
        for nm, (x, y) in zip(names + ["IMG_0099.jpg"], NADIR + [(0.0, -45.0), (0.0, 60.0)]):
            lon, lat = to_wgs.transform(ORIGIN[0] + x, ORIGIN[1] + y)
            w.writerow([nm, lat, lon, 510.0, "exif"])
        w.writerow(["IMG_0100.jpg", "", "", "", "none"])
    # The GCP file: three GCPs georef used and one it did not.
    gcp_xy = {"GCP01": (-30.0, -30.0), "GCP02": (30.0, -30.0), "GCP03": (0.0, 30.0), "GCP04": (50.0, 35.0)}
    lines = [f"EPSG:{EPSG}"]
    for name, (x, y) in gcp_xy.items():
        for img in names[:2]:
            lines.append(f"{ORIGIN[0] + x:.4f} {ORIGIN[1] + y:.4f} 450.0 100 100 {img} {name}")
    (root / "gcp_list.txt").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- pure helpers


def test_colmap_reader_matches_pycolmap(tmp_path):
    _sparse(tmp_path / "sparse")
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    cams = qp.read_colmap_cameras(tmp_path / "sparse")
    images = qp.read_colmap_images(tmp_path / "sparse")
    assert len(images) == rec.num_reg_images() == 7
    for im in images:
        ref = next(i for i in rec.images.values() if i.name == im["name"])
        assert np.allclose(-im["R"].T @ im["t"], ref.projection_center(), atol=1e-9)
    cam = cams[1]
    assert cam["model"] == "SIMPLE_RADIAL" and (cam["width"], cam["height"]) == (W, H)
    pix = qp.image_border(W, H)
    ref_rays = rec.cameras[1].cam_from_img(pix)
    assert np.allclose(qp.pixel_rays(cam, pix)[:, :2], ref_rays, atol=1e-7)  # distortion removed as COLMAP does


@pytest.mark.parametrize("model,params", [
    ("OPENCV", [600, 610, 320, 240, -0.1, 0.02, 0.001, -0.002]),
    ("FULL_OPENCV", [600, 610, 320, 240, -0.1, 0.02, 0.001, -0.002, 0.01, 0.0, 0.0, 0.0]),
    ("RADIAL", [600, 320, 240, -0.1, 0.03]),
    ("PINHOLE", [600, 610, 320, 240])])
def test_pixel_rays_undistort_like_colmap(model, params):
    cam = pycolmap.Camera(model=model, width=640, height=480, params=params)
    pix = qp.image_border(640, 480)
    mine = qp.pixel_rays({"model": model, "params": np.array(params)}, pix)
    assert np.allclose(mine[:, :2], cam.cam_from_img(pix), atol=1e-6)


def test_nadir_footprint_is_the_ground_rectangle_and_obliques_are_cut():
    cam = {"model": "PINHOLE", "params": np.array([FOCAL, FOCAL, W / 2, H / 2]), "width": W, "height": H}
    R, t = _nadir_pose(10.0, -20.0, 10.0)
    ring, clipped = qp.camera_footprint(R, t, cam, GROUND_LOCAL)
    half = 60.0 * np.array([W / 2, H / 2]) / FOCAL
    assert not clipped
    assert np.allclose(ring.min(axis=0), [10.0 - half[0], -20.0 - half[1]], atol=1e-9)
    assert np.allclose(ring.max(axis=0), [10.0 + half[0], -20.0 + half[1]], atol=1e-9)
    R, t = _oblique_pose(0.0, 0.0, 10.0, 80.0)  # the top edge looks above the horizon
    ring, clipped = qp.camera_footprint(R, t, cam, GROUND_LOCAL)
    assert clipped and np.linalg.norm(ring, axis=1).max() <= qp.FOOTPRINT_MAX_RANGE * 60.0 + 1e-6
    assert qp.camera_footprint(R, t, cam, 20.0) is None  # camera below the ground


def test_cells_gcps_and_crs_headers(tmp_path):
    root = make_scene(tmp_path / "results")
    manifest = json.loads((root / "partitions" / "manifest.json").read_text())
    cells = qp.partition_cells(manifest, ORIGIN)
    assert [c["id"] for c in cells] == ["p00", "p01"]
    assert np.allclose(cells[0]["ring"].min(axis=0), ORIGIN[:2] + [-60.0, -40.0])
    assert cells[0]["z_min"] == pytest.approx(449.0)
    header, pts = qp.read_gcp_list(root / "gcp_list.txt")
    assert header == "EPSG:32632" and set(pts) == {"GCP01", "GCP02", "GCP03", "GCP04"}
    unnamed = tmp_path / "unnamed.txt"
    unnamed.write_text("WGS84 UTM 32N\n1 2 3 10 10 a.jpg\n1 2 3 20 20 b.jpg\n4 5 6 10 10 a.jpg gcp01\n")
    _, pts = qp.read_gcp_list(unnamed)
    assert pts == {"gcp02": (1.0, 2.0, 3.0), "gcp01": (4.0, 5.0, 6.0)}  # as odm_formats names them
    assert qp.crs_user_input("WGS84 UTM 32N") == "EPSG:32632" and qp.crs_user_input("WGS84 UTM 5S") == "EPSG:32705"
    rows = qp.gcp_rows(json.loads((root / "georef" / "frame.json").read_text()))
    assert [r["role"] for r in rows] == ["gcp"] * 3
    assert rows[0]["residual_m"] == pytest.approx(np.linalg.norm([0.01, -0.02, 0.015]))


# ----------------------------------------------------------------------------- the real client

QGIS_PROBLEM = qp.qgis_python_problem(qp.qgis_python())
needs_qgis = pytest.mark.skipif(QGIS_PROBLEM is not None, reason=f"QGIS not available: {QGIS_PROBLEM}")

def _build(results: Path, scene: str, extra=()):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = results / scene / "report" / f"{scene}.qgz"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "qgis_project.py"), str(results), scene, str(out),
                           "--gcp-list", str(results / scene / "gcp_list.txt"), *extra],
                          capture_output=True, text=True, timeout=180, env=env, cwd=results)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, json.loads((out.parent / qp.SUMMARY_NAME).read_text()), proc


def _by_name(layer: dict, key: str = "name") -> dict[str, dict]:
    rows = [dict(zip(layer["fields"], a)) for a in layer["attributes"]]
    return {r[key]: r for r in rows}


def _project_xml(qgz: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(qgz) as z:
        names = z.namelist()
        return names, z.read(next(n for n in names if n.endswith(".qgs"))).decode()


@needs_qgis
def test_project_opens_every_product_in_the_delivery_crs_with_relative_paths(tmp_path):
    results = tmp_path / "results"
    make_scene(results)
    qgz, summary, _ = _build(results, "demo")
    assert summary["left_out"] == {}, summary["left_out"]
    assert summary["cameras"] == {"registered": 7, "not_registered": 2, "without_position": 1, "footprints": 7,
                                  "footprints_clipped": 1}
    assert summary["ground_z"]["source"] == "mean of dtm.tif"
    assert summary["ept"]["points"] == summary["point_cloud"]["points"] > 15_000

    # Moved elsewhere (relative paths), then opened by a fresh QGIS.
    moved = tmp_path / "copied" / "results"
    moved.parent.mkdir()
    (results).rename(moved)
    qgz = moved / "demo" / "report" / "demo.qgz"
    res = reopen_project(qgz)
    assert res["read"] and res["crs"] == f"EPSG:{EPSG}"
    by_name = {layer["name"]: layer for layer in res["layers"]}
    expected = {"Orthophoto", "DSM", "DSM hillshade", "DTM", "Heights above ground (DSM − DTM)", "Point cloud (EPT)",
                "Cameras", "Image footprints", "Partition cells", "GCPs and check points"}
    assert set(by_name) == expected
    for layer in res["layers"]:
        assert layer["valid"], layer
        assert layer["crs"] == f"EPSG:{EPSG}", layer
        assert str(moved) in layer["source"]  # resolved against the project's new place
    grid = [ORIGIN[0] + GRID[0], ORIGIN[1] + GRID[1], ORIGIN[0] + GRID[2], ORIGIN[1] + GRID[3]]
    for name in ("Orthophoto", "DSM", "DTM", "Heights above ground (DSM − DTM)"):
        assert np.allclose(by_name[name]["extent"], grid, atol=1e-6), name
    assert by_name["DSM"]["renderer"] == "singlebandpseudocolor" and by_name["DSM hillshade"]["renderer"] == "hillshade"
    heights = by_name["Heights above ground (DSM − DTM)"]
    assert heights["centre_value"] == pytest.approx(10.0, abs=1e-4)  # the building
    assert heights["corner_value"] == pytest.approx(0.0, abs=1e-4)
    cloud = by_name["Point cloud (EPT)"]
    assert cloud["points"] == summary["ept"]["points"] and cloud["provider"] == "ept"
    pc_ext = np.array(cloud["extent"])
    assert (pc_ext[:2] >= np.array(grid[:2]) - 1e-3).all() and (pc_ext[2:] <= np.array(grid[2:]) + 1e-3).all()
    cams = by_name["Cameras"]
    assert cams["features"] == 8
    rows = _by_name(cams)
    assert rows["IMG_0002.jpg"]["registered"] and not rows["IMG_0099.jpg"]["registered"]
    assert rows["IMG_0002.jpg"]["residual_m"] == pytest.approx(np.linalg.norm([0.3, -0.4, 1.2]))
    assert rows["IMG_0001.jpg"]["role"] == "heldout"
    assert rows["IMG_0002.jpg"]["x"] == pytest.approx(ORIGIN[0] + 0.0)
    assert rows["IMG_0002.jpg"]["z"] == pytest.approx(510.0)
    assert rows["IMG_0099.jpg"]["y"] == pytest.approx(ORIGIN[1] + 60.0, abs=0.01)
    assert by_name["Image footprints"]["features"] == 7
    cells = by_name["Partition cells"]
    assert sorted(_by_name(cells, "id")) == ["p00", "p01"]
    assert np.allclose(cells["extent"], [ORIGIN[0] - 60, ORIGIN[1] - 40, ORIGIN[0] + 60, ORIGIN[1] + 40])
    gcps = _by_name(by_name["GCPs and check points"])
    assert set(gcps) == {"GCP01", "GCP02", "GCP03", "GCP04"}
    assert gcps["GCP01"]["residual_m"] > 0 and gcps["GCP04"]["used_observations"] == 0
    # What the project shows at first: the survey over the orthophoto; the rest a click away.
    assert {"Orthophoto", "Cameras", "Partition cells"} <= set(res["checked"])
    assert "DSM" not in res["checked"] and "Point cloud (EPT)" not in res["checked"]
    assert res["order"][-1] == "Orthophoto"
    w, h, colours = res["map"]
    assert w == qp.MAP_WIDTH_PX and h > 0 and colours > 50  # drawn, not blank

    with rasterio.open(qgz.parent / "heights.tif") as ds:
        assert ds.crs.to_epsg() == EPSG and ds.profile["tiled"] and ds.compression.name == "deflate"

    names, xml = _project_xml(qgz)
    assert "demo.qgs" in names
    assert str(tmp_path) not in xml
    sources = [s for s in re.findall(r"<datasource>([^<]*)</datasource>", xml) if s]
    assert len(sources) == len(expected)
    assert all(s.startswith("./") or s.startswith("../") for s in sources), sources
    assert re.search(r'<Absolute type="bool">false</Absolute>', xml)
    assert not [p.name for p in qgz.parent.iterdir() if "partial" in p.name]


@needs_qgis
def test_without_a_dtm_the_project_is_written_and_says_why_layers_are_missing(tmp_path):
    results = tmp_path / "results"
    root = make_scene(results, "water", dtm=False)
    (root / "report").mkdir()
    (root / "report" / "heights.tif").write_bytes(b"stale")  # from an earlier run with a DTM
    qgz, summary, proc = _build(results, "water")
    assert set(summary["left_out"]) == {"DTM", "Heights above ground"}
    assert "products/dtm.tif absent" in summary["left_out"]["DTM"]
    assert "no DTM" in summary["left_out"]["Heights above ground"]
    assert "products/dtm.tif absent" in proc.stderr  # logged as well
    assert summary["ground_z"]["source"] == "mean of dsm.tif"
    assert not (root / "report" / "heights.tif").exists()
    res = reopen_project(qgz)
    names = {layer["name"] for layer in res["layers"]}
    assert "DTM" not in names and not any("Heights" in n for n in names)
    assert {"DSM", "Orthophoto", "Cameras", "Point cloud (EPT)"} <= names
    assert all(layer["valid"] for layer in res["layers"])


def test_without_qgis_the_message_says_what_to_install(tmp_path, monkeypatch):
    results = tmp_path / "results"
    root = results / "s"
    (root / "georef").mkdir(parents=True)
    (root / "georef" / "frame.json").write_text(json.dumps({"epsg": EPSG, "origin": ORIGIN.tolist()}))
    monkeypatch.setattr(qp, "qgis_in_process", lambda: False)
    with pytest.raises(qp.QgisUnavailable, match="apt-get install python3-qgis qgis-providers") as err:
        qp.run(results, "s", root / "report" / "s.qgz", qgis_python_path=str(tmp_path / "no-such-python"))
    assert "envs/qgis.yaml" in str(err.value) and "no-such-python does not exist" in str(err.value)
