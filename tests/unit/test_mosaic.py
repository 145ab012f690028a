"""The mosaic pastes cells' tiles on one grid and copes with what a scene may lack (no ground, an
empty cell), writing every product it can and saying why one is missing."""

import json

import laspy
import numpy as np
import pytest
import rasterio

from aerosplat import gisio, mosaic, products
from aerosplat.products import NODATA, ProductOptions
from aerosplat.rasterize import Grid

ORIGIN = np.array([465892.0, 5249293.0, 500.0])
GRID = Grid(465800.0, 5249400.0, 1.0, 40, 20)


def _cell(root, pid, col0, cols, height, ground=True, points=True):
    out = root / pid
    out.mkdir(parents=True)
    cell = products.sub_grid(GRID, (0, col0, GRID.height, cols))
    dsm = np.full((cell.height, cell.width), height, np.float32)
    dtm = np.full_like(dsm, height - 0.5 if ground else NODATA)
    views = np.full_like(dsm, 3)
    bands = np.stack([dsm, dsm + 0.1, dtm, views, np.full_like(dsm, NODATA)])
    products.write_tile(out / "elevation.tif", bands, cell.transform, 32632, NODATA, products.ELEVATION_BANDS)
    rgba = np.full((4, cell.height, cell.width), 200, np.uint8)
    products.write_tile(out / "ortho.tif", rgba, cell.transform, 32632, None, ("r", "g", "b", "a"))
    n = 500 if points else 0
    xs, ys = cell.centres()
    xyz = np.column_stack([np.random.default_rng(0).choice(xs, n), np.random.default_rng(1).choice(ys, n),
                           np.full(n, height)])
    gisio.write_laz(out / "points.laz", xyz, None, 32632,
                    classification=np.full(n, 2 if ground else 1, np.uint8))
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]) + [xs[0] - ORIGIN[0], ys[-1] - ORIGIN[1], height - ORIGIN[2]]
    np.savez(out / "mesh.npz", vertices=verts if points else np.zeros((0, 3)),
             faces=np.array([[0, 1, 2]]) if points else np.zeros((0, 3), np.int64),
             colors=np.full((3 if points else 0, 3), 128, np.uint8))
    report = {"pid": pid, "grid": {"west": GRID.west, "north": GRID.north, "cell": GRID.cell,
                                   "width": GRID.width, "height": GRID.height},
              "window": {"row": 0, "col": col0, "rows": GRID.height, "cols": cols}, "epsg": 32632,
              "origin": ORIGIN.tolist(), "gsd_m": 1.0, "resolution_m": 1.0, "point_spacing_m": 1.0,
              "views": 3, "gaussians": 10 if points else 0, "points": n, "ground_points": n if ground else 0,
              "ground_filter": "csf", "fusion": {}, "mesh": {}, "seconds": 0.0,
              "warnings": [] if points else [f"cell {pid} holds no Gaussians: its tiles are empty"]}
    (out / "cell.json").write_text(json.dumps(report))
    return out


def test_cells_are_pasted_into_one_cog_per_product(tmp_path):
    cells = {"p00": _cell(tmp_path / "products", "p00", 0, 25, 510.0),
             "p01": _cell(tmp_path / "products", "p01", 25, 15, 520.0)}
    m = mosaic.mosaic(None, cells, tmp_path / "products", ProductOptions(mesh_faces=100))
    with rasterio.open(tmp_path / "products/dsm.tif") as src:
        dsm = src.read(1)
        assert src.crs.to_epsg() == 32632 and src.transform == GRID.transform
    assert (dsm[:, :25] == 510).all() and (dsm[:, 25:] == 520).all()
    assert (tmp_path / "products/dtm.tif").exists()
    assert m["completeness"] == 1.0 and m["points"]["count"] == 1000 and not m["warnings"]
    assert laspy.read(tmp_path / "products/points.laz").header.point_count == 1000


def test_no_ground_skips_the_dtm_with_a_warning_and_an_empty_cell_is_no_failure(tmp_path):
    cells = {"p00": _cell(tmp_path / "products", "p00", 0, 25, 510.0, ground=False),
             "p01": _cell(tmp_path / "products", "p01", 25, 15, 520.0, ground=False, points=False)}
    (tmp_path / "products/dtm.tif").write_bytes(b"stale")  # from an earlier run: must not survive
    m = mosaic.mosaic(None, cells, tmp_path / "products", ProductOptions(mesh_faces=100))
    assert not (tmp_path / "products/dtm.tif").exists()
    assert any("dtm.tif not written" in w for w in m["warnings"])
    assert any("p01 holds no Gaussians" in w for w in m["warnings"])
    assert (tmp_path / "products/dsm.tif").exists() and m["points"]["count"] == 500
    assert "dtm.tif" not in m["files"] and "dsm.tif" in m["files"]


def test_pdal_pipelines_beside_the_rasters_make_them_on_the_same_grid(tmp_path):
    cells = {"p00": _cell(tmp_path / "products", "p00", 0, 25, 510.0),
             "p01": _cell(tmp_path / "products", "p01", 25, 15, 520.0)}
    m = mosaic.mosaic(None, cells, tmp_path / "products", ProductOptions(mesh_faces=100))
    dsm = json.loads((tmp_path / "products/pdal_dsm.json").read_text())["pipeline"]
    writer = dsm[-1]
    assert dsm[0]["filename"] == "points.laz" and writer["output_type"] == "max"
    assert writer["resolution"] == GRID.cell and writer["override_srs"] == "EPSG:32632"
    assert writer["bounds"] == f"([{GRID.west}, {GRID.west + 40.0}], [{GRID.north - 20.0}, {GRID.north}])"
    dtm = json.loads((tmp_path / "products/pdal_dtm.json").read_text())["pipeline"]
    assert dtm[1] == {"type": "filters.range", "limits": "Classification[2:2]"}
    if not m["pdal"]["ran"]:
        pytest.skip(f"the pipelines were written but not run: {m['pdal']['why']}")
    with rasterio.open(tmp_path / "products/pdal_dsm.tif") as a, rasterio.open(tmp_path / "products/dsm.tif") as b:
        assert a.transform == b.transform
        both = (a.read(1) != NODATA) & (b.read(1) != NODATA)
        assert np.median(np.abs(a.read(1)[both] - b.read(1)[both])) < 0.2
