"""The EPT writer: every point in exactly one node at 1 mm, the hierarchy matching the node files, the
octree's geometry, atomic output, and QGIS's EPT provider opening and decoding every node."""

from __future__ import annotations

import json
import os
import subprocess

import laspy
import numpy as np
import pytest

from aerosplat import ept as eptmod
from aerosplat.ept import ept_from_laz, read_ept, write_ept
from aerosplat.errors import InputError
from aerosplat.gisio import write_laz
from aerosplat.qgisproject import qgis_python, qgis_python_problem

ORIGIN = np.array([465_800.0, 5_249_200.0, 0.0])


def _cloud(n: int, seed: int = 0):
    """A terrain with a building: unique points (no two the same at 1 mm), colours, two classes."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 150, (n, 2))
    z = 450 + 3 * np.sin(xy[:, 0] / 25) + rng.normal(0, 0.05, n)
    roof = (np.abs(xy[:, 0] - 75) < 15) & (np.abs(xy[:, 1] - 75) < 10)
    z[roof] += 12
    xyz = np.round((np.column_stack([xy, z]) + ORIGIN) * 1000) / 1000
    xyz = np.unique(xyz, axis=0)
    rng.shuffle(xyz)
    rgb = rng.integers(0, 256, (len(xyz), 3), dtype=np.uint8)
    cls = np.where(xyz[:, 2] < 460, 2, 1).astype(np.uint8)
    return xyz, rgb, cls


def _mm(xyz):
    return np.round(np.asarray(xyz) * 1000).astype(np.int64)


def _sorted_rows(keys, *columns):
    order = np.lexsort(keys.T[::-1])
    return (keys[order],) + tuple(c[order] for c in columns)


def _node_box(meta, key):
    d, x, y, z = map(int, key.split("-"))
    lo, hi = np.array(meta["bounds"][:3]), np.array(meta["bounds"][3:])
    size = (hi - lo) / 2**d
    return lo + size * [x, y, z], lo + size * [x + 1, y + 1, z + 1]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    xyz, rgb, cls = _cloud(60_000)
    out = tmp_path_factory.mktemp("ept") / "ept"
    summary = write_ept(out, xyz, rgb, cls, "EPSG:32632", max_node_points=4000)
    return out, summary, xyz, rgb, cls


def test_every_point_in_exactly_one_node_at_1_mm(written):
    out, summary, xyz, rgb, cls = written
    back = read_ept(out / "ept.json")
    assert len(back["xyz"]) == len(xyz) == summary["points"]
    a = _sorted_rows(_mm(xyz), rgb.astype(np.uint16) * 257, cls)
    b = _sorted_rows(_mm(back["xyz"]), back["rgb"].astype(np.uint16), back["classification"])
    assert np.array_equal(a[0], b[0])  # the same multiset of points: none lost, none twice
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])  # colour and class travel with them
    assert summary["depth"] >= 2 and summary["max_node_points"] <= 4000


def test_hierarchy_matches_the_node_files_and_the_octree(written):
    out, summary, xyz, *_ = written
    meta = json.loads((out / "ept.json").read_text())
    hierarchy = json.loads((out / "ept-hierarchy" / "0-0-0-0.json").read_text())
    files = {p.stem for p in (out / "ept-data").glob("*.laz")}
    assert set(hierarchy) == files and "0-0-0-0" in files
    assert sum(hierarchy.values()) == meta["points"] == len(xyz)
    x_schema = next(s for s in meta["schema"] if s["name"] == "X")
    for key, count in hierarchy.items():
        las = laspy.read(out / "ept-data" / f"{key}.laz")
        assert las.header.point_count == count > 0
        assert las.header.point_format.id == 3  # what QGIS 3.22's EPT decoder reads
        assert las.header.scales[0] == x_schema["scale"] and las.header.offsets[0] == x_schema["offset"]
        d, x, y, z = map(int, key.split("-"))
        if d:  # every node's parent exists
            assert f"{d - 1}-{x // 2}-{y // 2}-{z // 2}" in hierarchy
        lo, hi = _node_box(meta, key)
        pts = np.column_stack([las.x, las.y, las.z])
        assert (pts >= lo - 1e-6).all() and (pts <= hi + 1e-6).all(), key
    # The root keeps at most one point per cell of its span^3 grid.
    root = laspy.read(out / "ept-data" / "0-0-0-0.laz")
    lo, hi = np.array(meta["bounds"][:3]), np.array(meta["bounds"][3:])
    cells = np.floor((np.column_stack([root.x, root.y, root.z]) - lo) / (hi - lo) * meta["span"]).astype(int)
    assert len(np.unique(cells, axis=0)) == len(cells)


def test_metadata_bounds_srs_and_schema(written):
    out, summary, xyz, *_ = written
    meta = json.loads((out / "ept.json").read_text())
    assert meta["dataType"] == "laszip" and meta["hierarchyType"] == "json" and meta["version"].startswith("1.")
    lo, hi = np.array(meta["bounds"][:3]), np.array(meta["bounds"][3:])
    assert np.allclose(hi - lo, (hi - lo)[0])  # a cube
    assert (xyz >= lo).all() and (xyz <= hi).all()
    c = np.array(meta["boundsConforming"])
    assert np.allclose(c[:3], xyz.min(axis=0), atol=5e-4) and np.allclose(c[3:], xyz.max(axis=0), atol=5e-4)
    assert meta["srs"]["authority"] == "EPSG" and meta["srs"]["horizontal"] == "32632" and meta["srs"]["wkt"]
    names = [s["name"] for s in meta["schema"]]
    assert names[:3] == ["X", "Y", "Z"] and {"Classification", "Red", "Green", "Blue", "Intensity"} <= set(names)
    assert all(s["type"] == "signed" and s["size"] == 4 and s["scale"] == 0.001 for s in meta["schema"][:3])
    classes = next(s for s in meta["schema"] if s["name"] == "Classification")["counts"]
    assert {c["value"] for c in classes} == {1, 2}
    assert summary["nodes"] == len(json.loads((out / "ept-hierarchy" / "0-0-0-0.json").read_text()))


def test_identical_points_and_tiny_clouds_terminate(tmp_path):
    xyz = np.vstack([np.tile([465_900.0, 5_249_300.0, 450.0], (250, 1)), [[465_901.0, 5_249_300.0, 451.0]]])
    s = write_ept(tmp_path / "dup", xyz, None, None, 32632, max_node_points=100)
    assert s["points"] == 251 and len(read_ept(tmp_path / "dup" / "ept.json")["xyz"]) == 251
    s = write_ept(tmp_path / "one", xyz[:1], None, None, 32632)
    assert s["nodes"] == 1 and s["depth"] == 0


def test_output_is_atomic_and_replaces_an_old_one(tmp_path, monkeypatch):
    xyz, rgb, cls = _cloud(5000, seed=1)
    out = tmp_path / "ept"
    write_ept(out, xyz, rgb, cls, 32632, max_node_points=500)
    before = (out / "ept.json").read_text()
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk full")
        return original(*args)

    original = eptmod._write_node
    monkeypatch.setattr(eptmod, "_write_node", failing)
    with pytest.raises(OSError):
        write_ept(out, xyz[:4000], rgb[:4000], cls[:4000], 32632, max_node_points=500)
    assert (out / "ept.json").read_text() == before  # the finished one untouched
    assert not [p for p in tmp_path.iterdir() if p.name != "ept"]  # no half-written folder left
    monkeypatch.undo()
    write_ept(out, xyz[:4000], rgb[:4000], cls[:4000], 32632, max_node_points=500)
    assert json.loads((out / "ept.json").read_text())["points"] == 4000


def test_from_laz_keeps_16_bit_colour_classes_and_crs(tmp_path):
    xyz, rgb, cls = _cloud(3000, seed=2)
    write_laz(tmp_path / "points.laz", xyz, rgb, "EPSG:32632", classification=cls)
    s = ept_from_laz(tmp_path / "points.laz", tmp_path / "ept")
    assert s["epsg"] == 32632 and s["points"] == len(xyz)
    back = read_ept(tmp_path / "ept" / "ept.json")
    a = _sorted_rows(_mm(xyz), rgb.astype(np.uint16) * 257, cls)
    b = _sorted_rows(_mm(back["xyz"]), back["rgb"], back["classification"])
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="projected CRS"):
        write_ept(tmp_path / "e", np.zeros((3, 3)), None, None, "EPSG:4326")
    with pytest.raises(InputError, match="no points"):
        write_ept(tmp_path / "e", np.zeros((0, 3)), None, None, 32632)
    with pytest.raises(InputError, match="non-finite"):
        write_ept(tmp_path / "e", np.array([[1.0, 2.0, np.nan]]), None, None, 32632)
    assert not list(tmp_path.iterdir())


QGIS_PROBLEM = qgis_python_problem(qgis_python())

QGIS_CHECK = r"""
import json, sys
from qgis.core import QgsApplication, QgsDoubleRange, QgsGeometry, QgsPointCloudLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsPointCloudLayer(sys.argv[1], "cloud", "ept")
e = layer.extent()
out = {"valid": layer.isValid(), "crs": layer.crs().authid(), "count": layer.pointCount(),
       "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]}
if layer.isValid():
    pts = layer.dataProvider().identify(1e-9, QgsGeometry.fromRect(e.buffered(1.0)), QgsDoubleRange(), 10**8)
    out["decoded"] = [[p["X"], p["Y"], p["Z"], p["Classification"], p["Red"]] for p in pts]
print("RESULT" + json.dumps(out))
"""


@pytest.mark.skipif(QGIS_PROBLEM is not None, reason=f"QGIS not available: {QGIS_PROBLEM}")
def test_qgis_opens_the_ept_and_decodes_every_node(written):
    out, summary, xyz, rgb, cls = written
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([qgis_python(), "-c", QGIS_CHECK, str(out / "ept.json")], capture_output=True,
                          text=True, timeout=120, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(line[len("RESULT"):])
    assert res["valid"] and res["crs"] == "EPSG:32632" and res["count"] == len(xyz)
    assert np.allclose(res["extent"], [xyz[:, 0].min(), xyz[:, 1].min(), xyz[:, 0].max(), xyz[:, 1].max()],
                       atol=1e-3)
    decoded = np.array(res["decoded"])
    assert len(decoded) == len(xyz)  # QGIS reads every node's LAZ
    a = _sorted_rows(_mm(xyz), cls, rgb[:, 0].astype(np.int64) * 257)
    b = _sorted_rows(_mm(decoded[:, :3]), decoded[:, 3].astype(np.uint8), decoded[:, 4].astype(np.int64))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
