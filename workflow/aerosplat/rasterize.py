"""Point clouds to elevation rasters: the DSM (highest surface per cell) and the DTM (ground
points interpolated), on a north-up grid in the delivery CRS.

Gaps are filled only within a configurable radius and left as nodata beyond it: a DSM that
invents a surface where no photo saw one is a silent wrong result, and QGIS shows nodata
honestly as a hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import QhullError


@dataclass(frozen=True)
class Grid:
    """A north-up grid: its west and north edges (delivery CRS metres), cell size and shape.

    Row 0 is the northern row; the cell (row, col) covers x in [west + col*cell, west + (col+1)*cell).
    """

    west: float
    north: float
    cell: float
    width: int
    height: int

    @staticmethod
    def covering(xy_min: np.ndarray, xy_max: np.ndarray, cell: float) -> "Grid":
        """The smallest grid with edges on multiples of `cell` that holds the box [xy_min, xy_max]."""
        if not cell > 0:
            raise ValueError(f"the cell size must be positive, got {cell}")
        west, south = (math.floor(v / cell) * cell for v in xy_min[:2])
        east, north = (math.floor(v / cell) * cell + cell for v in xy_max[:2])
        return Grid(float(west), float(north), float(cell), int(round((east - west) / cell)),
                    int(round((north - south) / cell)))

    @property
    def transform(self) -> Affine:
        return Affine(self.cell, 0.0, self.west, 0.0, -self.cell, self.north)

    def cells_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, inside) of points [N, 2]; row/col are only meaningful where inside."""
        col = np.floor((xy[:, 0] - self.west) / self.cell).astype(np.int64)
        row = np.floor((self.north - xy[:, 1]) / self.cell).astype(np.int64)
        inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        return row, col, inside

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x [W] and y [H] of the cell centres."""
        return (self.west + (np.arange(self.width) + 0.5) * self.cell,
                self.north - (np.arange(self.height) + 0.5) * self.cell)


def highest_per_cell(grid: Grid, xyz: np.ndarray) -> np.ndarray:
    """float32 [H, W]: the highest z of the points in each cell, NaN where none fell."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    row, col, inside = grid.cells_of(xyz[:, :2])
    out = np.full(grid.height * grid.width, -np.inf)
    np.maximum.at(out, row[inside] * grid.width + col[inside], xyz[inside, 2])
    out[np.isneginf(out)] = np.nan
    return out.reshape(grid.height, grid.width).astype(np.float32)


def fill_gaps(values: np.ndarray, max_radius_cells: float) -> np.ndarray:
    """NaN cells within `max_radius_cells` of data take the nearest cell's value; the rest stay NaN."""
    empty = np.isnan(values)
    if not empty.any() or empty.all():
        return values.copy()
    distance, (rows, cols) = ndimage.distance_transform_edt(empty, return_indices=True)
    out = values[rows, cols]
    out[distance > max_radius_cells] = np.nan
    return out.astype(values.dtype)


def median_per_cell(grid: Grid, xyz: np.ndarray) -> np.ndarray:
    """float32 [H, W]: the median z of the points in each cell, NaN where none fell."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    row, col, inside = grid.cells_of(xyz[:, :2])
    out = np.full(grid.height * grid.width, np.nan)
    if inside.any():
        key = row[inside] * grid.width + col[inside]
        z = xyz[inside, 2]
        order = np.lexsort((z, key))
        key, z = key[order], z[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        counts = np.diff(np.r_[starts, len(key)])
        lo = z[starts + (counts - 1) // 2]
        hi = z[starts + counts // 2]
        out[key[starts]] = 0.5 * (lo + hi)
    return out.reshape(grid.height, grid.width).astype(np.float32)


def interpolate_ground(grid: Grid, ground_xyz: np.ndarray, max_radius_cells: float) -> np.ndarray:
    """float32 [H, W] DTM: the median ground height of each cell holding ground points, and linear
    (Delaunay) interpolation between those cells within `max_radius_cells` of one; NaN beyond (no
    ground seen). The per-cell median keeps the ground filter's noise out of the terrain."""
    cells = median_per_cell(grid, ground_xyz)
    seen = ~np.isnan(cells)
    if not seen.any():
        return np.full((grid.height, grid.width), np.nan, np.float32)
    near = ndimage.distance_transform_edt(~seen) <= max_radius_cells
    xs, ys = grid.centres()
    X, Y = np.meshgrid(xs, ys)
    out = np.full(X.shape, np.nan)
    try:
        interp = LinearNDInterpolator(np.stack([X[seen], Y[seen]], 1), cells[seen].astype(np.float64))
        out[near] = interp(X[near], Y[near])
    except QhullError:  # collinear or too few ground cells: no surface to interpolate
        pass
    out[seen] = cells[seen]
    # Cells near ground but outside the cells' hull take the nearest interpolated value; no cell
    # beyond the radius gets one.
    filled = fill_gaps(out.astype(np.float32), max(grid.width, grid.height))
    return np.where(near, filled, np.nan).astype(np.float32)
