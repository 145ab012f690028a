"""Point clouds to DSM/DTM grids: highest surface per cell, honest gaps, ground under buildings."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from aerosplat.gisio import write_cog
from aerosplat.rasterize import Grid, fill_gaps, highest_per_cell, interpolate_ground, median_per_cell


def _scene(rng):
    """A sloping ground (1 %) with a 10 m x 10 m, 8 m high box on it; points every ~0.4 m."""
    xy = rng.uniform(0, 40, (10_000, 2)) + [465_800.0, 5_249_600.0]
    ground = 450.0 + 0.01 * (xy[:, 0] - 465_800.0)
    roof = (np.abs(xy[:, 0] - 465_820.0) < 5) & (np.abs(xy[:, 1] - 5_249_620.0) < 5)
    z = np.where(roof, ground + 8.0, ground)
    return np.column_stack([xy, z]), roof


def test_grid_snaps_to_the_cell_and_writes_where_the_points_are(tmp_path):
    grid = Grid.covering(np.array([465_800.13, 5_249_600.4]), np.array([465_839.9, 5_249_639.95]), 0.5)
    assert (grid.west, grid.north, grid.width, grid.height) == (465_800.0, 5_249_640.0, 80, 80)
    xyz = np.array([[465_810.26, 5_249_630.74, 455.0]])
    dsm = highest_per_cell(grid, xyz)
    write_cog(tmp_path / "dsm.tif", np.nan_to_num(dsm, nan=-9999.0), grid.transform, "EPSG:32632", nodata=-9999.0)
    with rasterio.open(tmp_path / "dsm.tif") as ds:  # the cell a GIS samples at the point holds it
        assert next(ds.sample([(465_810.26, 5_249_630.74)]))[0] == 455.0
        assert int((ds.read(1) != -9999.0).sum()) == 1


def test_dsm_keeps_the_roof_and_the_dtm_finds_the_ground_under_it():
    rng = np.random.default_rng(1)
    xyz, roof = _scene(rng)
    grid = Grid.covering(xyz.min(axis=0), xyz.max(axis=0), 1.0)
    dsm = highest_per_cell(grid, xyz)
    xs, ys = grid.centres()
    X, Y = np.meshgrid(xs, ys)
    true_ground = 450.0 + 0.01 * (X - 465_800.0)
    inside_roof = (np.abs(X - 465_820.0) < 4) & (np.abs(Y - 5_249_620.0) < 4)
    ok = ~np.isnan(dsm)
    assert ok.mean() > 0.95
    assert np.nanmax(np.abs(dsm[ok & inside_roof] - (true_ground[ok & inside_roof] + 8.0))) < 0.01
    dtm = interpolate_ground(grid, xyz[~roof], max_radius_cells=15)
    assert not np.isnan(dtm).any()
    assert np.abs(dtm - true_ground).max() < 0.02  # under the roof too: interpolated across it
    # Without enough radius, the building's footprint stays a hole (no invented ground).
    holes = np.isnan(interpolate_ground(grid, xyz[~roof], max_radius_cells=2))
    assert holes[inside_roof].mean() > 0.3 and not holes[~inside_roof & (np.abs(X - 465_820.0) > 8)].any()


def test_gaps_fill_only_within_the_radius():
    values = np.full((20, 20), np.nan, np.float32)
    values[10, 10] = 5.0
    filled = fill_gaps(values, 3)
    assert filled[10, 13] == 5.0 and filled[12, 12] == 5.0  # within 3 cells (2.8)
    assert np.isnan(filled[10, 14]) and np.isnan(filled[0, 0])
    assert np.isnan(interpolate_ground(Grid(0, 10, 1, 10, 10), np.empty((0, 3)), 5)).all()


def test_a_non_positive_cell_is_refused():
    with pytest.raises(ValueError, match="cell size must be positive"):
        Grid.covering(np.zeros(2), np.ones(2), 0)


def test_dtm_takes_the_median_ground_height_so_filter_noise_stays_out():
    # Flat ground at z = 5 with symmetric noise and 10 % outliers 3 m below (a see-through render):
    # the per-cell median keeps the DTM on the ground, a plain interpolation of the points would not.
    rng = np.random.default_rng(3)
    grid = Grid(0, 20, 1.0, 20, 20)
    xy = rng.uniform(0, 20, (40000, 2))
    z = 5 + rng.normal(0, 0.1, len(xy))
    z[rng.random(len(xy)) < 0.1] -= 3
    dtm = interpolate_ground(grid, np.column_stack([xy, z]), max_radius_cells=3)
    assert np.nanmax(np.abs(dtm - 5)) < 0.15
    assert np.isfinite(dtm).all()
    assert abs(np.nanmedian(median_per_cell(grid, np.column_stack([xy, z]))) - 5) < 0.05
