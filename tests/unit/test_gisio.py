"""GIS writers: the LAZ and the COG read back with their CRS, precision and structure."""

from __future__ import annotations

import laspy
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import ColorInterp

from aerosplat.errors import InputError
from aerosplat.gisio import GROUND_CLASS, read_copc_summary, write_cog, write_copc, write_laz


def test_laz_is_las14_format7_with_crs_millimetres_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    xyz = np.array([465_812.0, 5_249_610.0, 450.0]) + rng.uniform(0, 100, (1000, 3))  # UTM 32N metres
    rgb = rng.uniform(0, 1, (1000, 3))
    cls = np.where(xyz[:, 2] < 500, GROUND_CLASS, 1)
    write_laz(tmp_path / "cloud.laz", xyz, rgb, "EPSG:32632", classification=cls)
    las = laspy.read(tmp_path / "cloud.laz")
    assert (las.header.version.major, las.header.version.minor, las.header.point_format.id) == (1, 4, 7)
    assert las.header.parse_crs().to_epsg() == 32632
    back = np.column_stack([las.x, las.y, las.z])
    assert np.abs(back - xyz).max() <= 0.0005 + 1e-9  # 1 mm integers, offsets hold the magnitude
    assert np.array_equal(np.asarray(las.classification), cls)
    assert np.abs(np.asarray(las.red) / 65535 - rgb[:, 0]).max() < 1e-4
    assert not list(tmp_path.glob(".*partial"))


def test_cog_reads_back_as_a_cog_with_its_crs_nodata_and_overviews(tmp_path):
    dsm = np.full((600, 700), 452.5, np.float32)
    dsm[:10] = -9999.0
    transform = Affine(0.25, 0, 465_800.0, 0, -0.25, 5_249_700.0)
    write_cog(tmp_path / "dsm.tif", dsm, transform, CRS.from_epsg(32632), nodata=-9999.0)
    with rasterio.open(tmp_path / "dsm.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform == transform and ds.nodata == -9999.0
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
        assert np.array_equal(ds.read(1), dsm)
    rgba = np.zeros((4, 300, 300), np.uint8)
    rgba[3, 50:] = 255
    write_cog(tmp_path / "ortho.tif", rgba, transform, "EPSG:32632")
    with rasterio.open(tmp_path / "ortho.tif") as ds:
        assert ds.count == 4 and ds.colorinterp[3] == ColorInterp.alpha


def test_rasters_and_clouds_refuse_a_geographic_crs(tmp_path):
    with pytest.raises(InputError, match="needs a projected CRS"):
        write_cog(tmp_path / "x.tif", np.zeros((4, 4), np.float32), Affine.identity(), "EPSG:4326")
    with pytest.raises(InputError, match="needs a projected CRS"):
        write_laz(tmp_path / "x.laz", np.zeros((3, 3)), None, "EPSG:4326")
    assert not list(tmp_path.iterdir())


def _copc_points(path):
    """Every point of a COPC file, gathered node by node with copclib: xyz [N, 3], classes, red, keys."""
    import copclib

    reader = copclib.FileReader(str(path))
    xyz, cls, red, counts = [], [], [], []
    for node in reader.GetAllNodes():
        pts = reader.GetPoints(node)
        xyz.append(np.column_stack([pts.x, pts.y, pts.z]))
        cls.append(np.asarray(pts.classification))
        red.append(np.asarray(pts.red))
        counts.append(node.point_count)
    reader.Close()
    return np.concatenate(xyz), np.concatenate(cls), np.concatenate(red), counts


def test_copc_round_trips_every_point_with_crs_classes_and_a_bounded_octree(tmp_path):
    rng = np.random.default_rng(1)
    n = 200_000
    # A gently rolling 400 m x 300 m surface with 20 m high blocks on it, in UTM 32N metres.
    xy = rng.uniform(0, [400, 300], (n, 2))
    z = 3 * np.sin(xy[:, 0] / 60) + np.where((xy[:, 0] % 50 < 20) & (xy[:, 1] % 40 < 15), 20.0, 0.0)
    xyz = np.array([465_812.0, 5_249_610.0, 450.0]) + np.column_stack([xy, z + rng.normal(0, 0.05, n)])
    cls = np.where(z < 10, GROUND_CLASS, 6).astype(np.uint8)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    out = tmp_path / "points.copc.laz"
    written = write_copc(out, xyz, rgb, "EPSG:32632", classification=cls, max_node_points=50_000)
    assert not list(tmp_path.glob(".*partial"))

    summary = read_copc_summary(out)
    assert summary["points"] == summary["node_points"] == n and summary["point_format"] == 7
    assert summary["nodes"] == written["nodes"] > 1 and summary["max_node_points"] <= 50_000
    assert summary["epsg"] == 32632 and CRS.from_wkt(summary["wkt"]) == CRS.from_epsg(32632)
    assert np.allclose(summary["bounds"][:3], xyz.min(axis=0), atol=1e-3)
    assert np.allclose(summary["bounds"][3:], xyz.max(axis=0), atol=1e-3)
    # Every point lies in the cube (COPC's center +- halfsize), and the spacing halves per level.
    lo = np.asarray(summary["center"]) - summary["halfsize"]
    hi = np.asarray(summary["center"]) + summary["halfsize"]
    assert np.all(xyz.min(axis=0) >= lo - 5e-4) and np.all(xyz.max(axis=0) <= hi + 5e-4)  # 1 mm rounding
    assert summary["spacing"] == pytest.approx(2 * summary["halfsize"] / 128)

    back, back_cls, back_red, counts = _copc_points(out)
    assert len(back) == n and max(counts) <= 50_000
    # Match points by their millimetre integers: every input point comes back once, within 1 mm.
    order_in = np.lexsort(np.round(xyz * 1000).T[::-1])
    order_back = np.lexsort(np.round(back * 1000).T[::-1])
    assert np.abs(back[order_back] - xyz[order_in]).max() <= 0.0005 + 1e-6
    assert np.array_equal(back_cls[order_back], cls[order_in])
    assert np.array_equal(back_red[order_back], rgb[order_in, 0].astype(np.uint16) * 257)

    # COPC is LAZ 1.4: a plain LAZ reader opens it whole.
    las = laspy.read(out)
    assert las.header.point_count == n and (las.header.version.minor, las.header.point_format.id) == (4, 7)
    assert las.header.parse_crs().to_epsg() == 32632
    assert np.bincount(np.asarray(las.classification), minlength=7)[[2, 6]].tolist() == \
        np.bincount(cls, minlength=7)[[2, 6]].tolist()
    # A second COPC reader (laspy's) walks the hierarchy by the cube and finds a box's points.
    lo_q, hi_q = xyz.min(axis=0) + [100.0004, 50.0004, -1], xyz.min(axis=0) + [180.0004, 120.0004, 100]
    with laspy.CopcReader.open(out) as reader:
        box = reader.query(bounds=laspy.copc.Bounds(mins=lo_q, maxs=hi_q))
    inside = np.all((back[:, :2] >= lo_q[:2]) & (back[:, :2] <= hi_q[:2]), axis=1)  # stored (mm) coordinates
    assert len(box) == inside.sum() > 0


def test_copc_refuses_empty_or_mismatched_input(tmp_path):
    with pytest.raises(InputError, match="no points"):
        write_copc(tmp_path / "x.copc.laz", np.zeros((0, 3)), None, "EPSG:32632")
    with pytest.raises(InputError, match="differ in length"):
        write_copc(tmp_path / "x.copc.laz", np.zeros((5, 3)), None, "EPSG:32632", classification=np.ones(4))
    with pytest.raises(InputError, match="needs a projected CRS"):
        write_copc(tmp_path / "x.copc.laz", np.zeros((5, 3)), None, "EPSG:4326")
    assert not list(tmp_path.iterdir())


def test_copc_of_a_few_points_is_one_root_node(tmp_path):
    xyz = np.array([[500_000.0, 4_000_000.0, 10.0], [500_001.0, 4_000_000.5, 10.2], [500_000.5, 4_000_002.0, 9.9]])
    written = write_copc(tmp_path / "few.copc.laz", xyz, np.ones((3, 3)), 32633)
    summary = read_copc_summary(tmp_path / "few.copc.laz")
    assert written["nodes"] == summary["nodes"] == 1 and summary["points"] == 3 and summary["depth"] == 0
