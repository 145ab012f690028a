"""Spatial partitioning: a ground-plane grid over the local frame, cameras assigned by what they see.

Why: a city-scale survey cannot train as one model on one GPU. Each grid cell, grown by an overlap
margin, becomes one training job (VastGaussian-style). A camera joins a cell when

- it stands inside the expanded cell, or
- its view frustum covers at least `min_coverage` of its image with the cell's ground-to-roof box
  (rays through a grid of pixels hitting the box), or
- it observes at least `min_point_share` of the SfM points inside the expanded cell,

so oblique photos taken from outside a cell, which often see it best, still train it. Every
`heldout_every`-th registered image (sorted by name, index 0 first, as gsplat's parser does) is held
out of every partition for evaluation.

The stage also undistorts the photos to pinhole cameras (the rasterizer is pinhole) and writes all
training inputs in the local frame, so that training needs neither pycolmap nor the COLMAP model:

- `manifest.json`: cameras (K, world-to-camera 3x4, size, undistorted image name), held-out names,
  partitions `[{id, cell_bounds, expanded_bounds, z_range, images, num_points}]`, and the optional
  one-partition (monolithic) reference;
- `points.npz`: SfM points (xyz local frame, rgb, reprojection error, track length);
- `images/`: the undistorted photos.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, StageFailure
from .fileio import atomic_path, read_json, write_json
from .manifest import MANIFEST_VERSION

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PartitionOptions:
    # [rows, cols] of the ground grid; None = smallest grid with at most max_images_per_partition.
    grid: tuple[int, int] | None = None
    # Upper bound on training images per partition when the grid is chosen automatically.
    max_images_per_partition: int = 300
    # Margin added to each side of a cell, as a fraction of the cell's size.
    overlap: float = 0.2
    # A camera whose image is at least this much covered by the cell's box is assigned to it.
    min_coverage: float = 0.25
    # A camera that observes at least this share of the cell's SfM points is assigned to it.
    min_point_share: float = 0.05
    # Every n-th image (sorted by name, starting with the first) is held out of training.
    heldout_every: int = 8
    # Cells with fewer training images or SfM points are merged into a neighbour or dropped.
    min_images: int = 3
    min_points: int = 100
    # Also describe a one-partition run over the whole scene (quality reference).
    monolithic: bool = False

    @classmethod
    def from_config(cls, section: dict, monolithic: bool = False) -> "PartitionOptions":
        grid = section.get("grid")
        return cls(
            grid=tuple(grid) if grid else None,
            max_images_per_partition=section.get("max_images_per_partition", 300),
            overlap=section.get("overlap", 0.2),
            min_coverage=section.get("min_coverage", 0.25),
            min_point_share=section.get("min_point_share", 0.05),
            heldout_every=section.get("heldout_every", 8),
            min_images=section.get("min_images", 3),
            min_points=section.get("min_points", 100),
            monolithic=monolithic,
        )


@dataclass
class View:
    """One undistorted pinhole camera in the local frame."""

    name: str
    K: np.ndarray  # [3, 3]
    w2c: np.ndarray  # [3, 4] world (local frame) to camera, OpenCV axes
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:  # [3]
        R, t = self.w2c[:, :3], self.w2c[:, 3]
        return -R.T @ t

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height,
                "K": self.K.round(9).tolist(), "w2c": self.w2c.round(12).tolist()}

    @classmethod
    def from_json(cls, name: str, d: dict) -> "View":
        return cls(name, np.asarray(d["K"], float), np.asarray(d["w2c"], float),
                   int(d["width"]), int(d["height"]))


@dataclass
class Cell:
    """One grid cell (rectangle on the ground, x/y in the local frame) and what it trains on."""

    bounds: list[float]  # [xmin, ymin, xmax, ymax]
    expanded: list[float] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    point_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    z_range: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- geometry


def points_in_rect(xy: np.ndarray, rect) -> np.ndarray:
    """Boolean mask of 2D points inside [xmin, ymin, xmax, ymax] (closed)."""
    return ((xy[:, 0] >= rect[0]) & (xy[:, 0] <= rect[2])
            & (xy[:, 1] >= rect[1]) & (xy[:, 1] <= rect[3]))


def expand_rect(rect, overlap: float) -> list[float]:
    dx = (rect[2] - rect[0]) * overlap
    dy = (rect[3] - rect[1]) * overlap
    return [rect[0] - dx, rect[1] - dy, rect[2] + dx, rect[3] + dy]


def box_coverage(view: View, box_min: np.ndarray, box_max: np.ndarray, samples: int = 32) -> float:
    """Share of the image whose pixel rays hit the axis-aligned box (slab test on a pixel grid)."""
    us = (np.arange(samples) + 0.5) / samples * view.width
    vs = (np.arange(samples) + 0.5) / samples * view.height
    uu, vv = np.meshgrid(us, vs)
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], 0)  # [3, S]
    dirs_cam = np.linalg.inv(view.K) @ pix
    R = view.w2c[:, :3]
    dirs = (R.T @ dirs_cam).T  # [S, 3] world
    origin = view.center
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t0 = (box_min - origin) * inv
        t1 = (box_max - origin) * inv
    tmin = np.nanmax(np.minimum(t0, t1), axis=1)
    tmax = np.nanmin(np.maximum(t0, t1), axis=1)
    hit = (tmax >= np.maximum(tmin, 0.0))
    return float(hit.mean())


def choose_grid(extent, n_for_grid, max_images: int, max_cells: int = 1024) -> tuple[int, int]:
    """Smallest grid (by cell count, cells as square as the extent allows) whose busiest cell
    trains at most `max_images` images. `n_for_grid(rows, cols)` returns the busiest cell's count."""
    w = max(extent[2] - extent[0], 1e-6)
    h = max(extent[3] - extent[1], 1e-6)
    for cells in range(1, max_cells + 1):
        # Of the grids with this many cells, the one with the squarest cells.
        shapes = [(r, cells // r) for r in range(1, cells + 1) if cells % r == 0]
        rows, cols = min(shapes, key=lambda rc: abs(math.log((w / rc[1]) / (h / rc[0]))))
        if n_for_grid(rows, cols) <= max_images:
            return rows, cols
    raise StageFailure(
        f"no grid up to {max_cells} cells keeps partitions at or below {max_images} images; "
        "raise partition.max_images_per_partition")


def grid_cells(extent, rows: int, cols: int) -> list[Cell]:
    xs = np.linspace(extent[0], extent[2], cols + 1)
    ys = np.linspace(extent[1], extent[3], rows + 1)
    return [Cell([float(xs[c]), float(ys[r]), float(xs[c + 1]), float(ys[r + 1])])
            for r in range(rows) for c in range(cols)]


# ----------------------------------------------------------------------------- assignment


@dataclass
class SceneGeometry:
    """What assignment needs: train views, SfM points and which views observe each point."""

    views: dict[str, View]
    train: list[str]
    xyz: np.ndarray  # [P, 3] local frame
    observers: list[np.ndarray]  # per point: indices into `train` of the train views observing it
    ground_z: tuple[float, float]  # robust z range of the scene (ground to roofs)


def assign_cell(cell: Cell, geo: SceneGeometry, opts: PartitionOptions) -> None:
    """Fill the cell's expanded bounds, z range, training images and initial points."""
    cell.expanded = expand_rect(cell.bounds, opts.overlap)
    inside = points_in_rect(geo.xyz[:, :2], cell.expanded)
    inside &= (geo.xyz[:, 2] >= geo.ground_z[0]) & (geo.xyz[:, 2] <= geo.ground_z[1])
    cell.point_ids = np.flatnonzero(inside)
    if cell.point_ids.size:
        z = geo.xyz[cell.point_ids, 2]
        zlo, zhi = np.percentile(z, [1, 99])
    else:
        zlo, zhi = geo.ground_z
    cell.z_range = [float(zlo), float(zhi)]
    counts = np.zeros(len(geo.train))
    for pid in cell.point_ids:
        counts[geo.observers[pid]] += 1
    share = counts / max(cell.point_ids.size, 1)
    box_min = np.array([cell.expanded[0], cell.expanded[1], zlo])
    box_max = np.array([cell.expanded[2], cell.expanded[3], zhi])
    images = []
    for i, name in enumerate(geo.train):
        view = geo.views[name]
        stands_inside = bool(points_in_rect(view.center[None, :2], cell.expanded)[0])
        if (stands_inside or share[i] >= opts.min_point_share
                or box_coverage(view, box_min, box_max) >= opts.min_coverage):
            images.append(name)
    cell.images = images


def _adjacent(a: Cell, b: Cell, tol: float = 1e-6) -> bool:
    """True when two rectangles share one full edge (their union is a rectangle)."""
    ax0, ay0, ax1, ay1 = a.bounds
    bx0, by0, bx1, by1 = b.bounds
    same_rows = abs(ay0 - by0) < tol and abs(ay1 - by1) < tol
    same_cols = abs(ax0 - bx0) < tol and abs(ax1 - bx1) < tol
    return ((same_rows and (abs(ax1 - bx0) < tol or abs(bx1 - ax0) < tol))
            or (same_cols and (abs(ay1 - by0) < tol or abs(by1 - ay0) < tol)))


def merge_sparse_cells(cells: list[Cell], geo: SceneGeometry, opts: PartitionOptions
                       ) -> tuple[list[Cell], list[str]]:
    """Merge each too-sparse cell into an edge neighbour (the one with fewest images), or drop it.

    Returns the surviving cells and one warning per merged or dropped cell.
    """
    warnings = []
    cells = list(cells)
    while True:
        sparse = [c for c in cells
                  if len(c.images) < opts.min_images or c.point_ids.size < opts.min_points]
        if not sparse or len(cells) == 1:
            break
        cell = min(sparse, key=lambda c: (c.point_ids.size, len(c.images)))
        neighbours = [c for c in cells if c is not cell and _adjacent(c, cell)]
        cells.remove(cell)
        desc = (f"cell {[round(v, 1) for v in cell.bounds]} has {len(cell.images)} images and "
                f"{cell.point_ids.size} SfM points")
        if neighbours:
            other = min(neighbours, key=lambda c: len(c.images))
            other.bounds = [min(other.bounds[0], cell.bounds[0]), min(other.bounds[1], cell.bounds[1]),
                            max(other.bounds[2], cell.bounds[2]), max(other.bounds[3], cell.bounds[3])]
            assign_cell(other, geo, opts)
            warnings.append(f"{desc}: merged into its neighbour")
        else:
            warnings.append(f"{desc} and no neighbour to merge into: dropped")
    return cells, warnings


# ----------------------------------------------------------------------------- I/O


def heldout_names(names: list[str], every: int) -> list[str]:
    """Every `every`-th name in sorted order, starting with the first (0 disables)."""
    if every <= 0:
        return []
    return [n for i, n in enumerate(sorted(names)) if i % every == 0]


def undistort(sparse_dir: str | Path, image_dir: str | Path, work: Path) -> Path:
    """COLMAP undistortion to PINHOLE cameras; returns the folder with `images/` and `sparse/`."""
    import pycolmap

    out = work / "undistorted"
    pycolmap.undistort_images(str(out), str(sparse_dir), str(image_dir))
    return out


def read_geometry(sparse_dir: Path, heldout_every: int) -> tuple[SceneGeometry, list[str], dict]:
    """Views, points and observers of an (undistorted) model in the local frame."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(sparse_dir))
    views = {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        cam = rec.cameras[im.camera_id]
        views[im.name] = View(im.name, np.asarray(cam.calibration_matrix(), float),
                              np.asarray(im.cam_from_world().matrix(), float),
                              int(cam.width), int(cam.height))
    names = sorted(views)
    heldout = heldout_names(names, heldout_every)
    train = [n for n in names if n not in set(heldout)]
    train_index = {name: i for i, name in enumerate(train)}
    image_name = {im.image_id: im.name for im in rec.images.values()}
    ids = sorted(rec.points3D)
    xyz = np.array([rec.points3D[i].xyz for i in ids], float).reshape(-1, 3)
    rgb = np.array([rec.points3D[i].color for i in ids], np.uint8).reshape(-1, 3)
    err = np.array([rec.points3D[i].error for i in ids], float)
    observers, track = [], []
    for i in ids:
        els = rec.points3D[i].track.elements
        track.append(len(els))
        obs = {train_index[image_name[e.image_id]] for e in els
               if image_name.get(e.image_id) in train_index}
        observers.append(np.array(sorted(obs), int))
    if xyz.shape[0] == 0:
        raise StageFailure(f"{sparse_dir}: the model has no 3D points to partition")
    zlo, zhi = np.percentile(xyz[:, 2], [0.5, 99.5])
    margin = 0.1 * max(zhi - zlo, 1.0)
    geo = SceneGeometry(views, train, xyz, observers, (float(zlo - margin), float(zhi + margin)))
    points = {"xyz": xyz, "rgb": rgb, "error": err, "track": np.array(track, int)}
    return geo, heldout, points


def scene_extent(geo: SceneGeometry) -> list[float]:
    """Ground rectangle covering the bulk (0.5-99.5 %) of the SfM points: what is reconstructed.

    Cameras standing outside it (obliques) join cells by what they see; points beyond it belong to
    the outer cells (their outer edges are open at merge)."""
    inlier = (geo.xyz[:, 2] >= geo.ground_z[0]) & (geo.xyz[:, 2] <= geo.ground_z[1])
    lo, hi = np.percentile(geo.xyz[inlier, :2], [0.5, 99.5], axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def build_partitions(geo: SceneGeometry, opts: PartitionOptions) -> tuple[dict, list[str]]:
    """Grid, assignment and sparse-cell merging; returns the manifest's partition part."""
    extent = scene_extent(geo)

    def cells_for(rows, cols):
        cells = grid_cells(extent, rows, cols)
        for c in cells:
            assign_cell(c, geo, opts)
        return merge_sparse_cells(cells, geo, opts)

    if opts.grid:
        rows, cols = opts.grid
    else:
        rows, cols = choose_grid(
            extent, lambda r, c: max(len(x.images) for x in cells_for(r, c)[0]),
            opts.max_images_per_partition)
    cells, warnings = cells_for(rows, cols)
    for w in warnings:
        log.warning("partition: %s", w)
    if not cells or all(len(c.images) == 0 for c in cells):
        raise StageFailure("partition: no cell has any training image")
    cells.sort(key=lambda c: (c.bounds[1], c.bounds[0]))
    partitions = [
        {"id": f"p{i:02d}", "cell_bounds": [round(v, 6) for v in c.bounds],
         "expanded_bounds": [round(v, 6) for v in c.expanded],
         "z_range": [round(v, 6) for v in c.z_range],
         "images": c.images, "num_points": int(c.point_ids.size)}
        for i, c in enumerate(cells)
    ]
    part = {"grid": [rows, cols], "extent": [round(v, 6) for v in extent],
            "overlap": opts.overlap, "partitions": partitions}
    if opts.monolithic:
        big = 1e9  # every point of the scene, not only the bulk inside the extent
        whole = Cell([-big, -big, big, big])
        assign_cell(whole, geo, PartitionOptions(overlap=0.0))
        whole.images = list(geo.train)
        part["monolithic"] = {"id": "monolithic", "cell_bounds": part["extent"],
                              "expanded_bounds": part["extent"],
                              "z_range": [round(v, 6) for v in whole.z_range],
                              "images": whole.images, "num_points": int(whole.point_ids.size)}
    return part, warnings


def run(sparse_dir, image_dir, frame_json, manifest_out, points_out, images_out,
        options: PartitionOptions) -> dict:
    """Rule `partition`: undistort, grid, assign, and write the manifest, points and images."""
    frame = read_json(frame_json)
    with tempfile.TemporaryDirectory(prefix="aerosplat-undistort-") as tmp:
        log.info("undistorting %s to pinhole cameras", sparse_dir)
        und = undistort(sparse_dir, image_dir, Path(tmp))
        geo, heldout, points = read_geometry(und / "sparse", options.heldout_every)
        if len(geo.train) < 2:
            raise InputError(f"only {len(geo.train)} registered training images after holding out "
                             f"every {options.heldout_every}th", path=str(sparse_dir),
                             hint="raise partition.heldout_every or add photos")
        part, warnings = build_partitions(geo, options)
        for p in part["partitions"]:
            log.info("%s: %d training images, %d SfM points, cell %s", p["id"], len(p["images"]),
                     p["num_points"], p["cell_bounds"])
        with atomic_path(images_out) as tmp_images:
            shutil.copytree(und / "images", tmp_images)
    with atomic_path(points_out) as tmp_points:
        with open(tmp_points, "wb") as fh:
            np.savez(fh, **points)
    manifest = {
        "version": MANIFEST_VERSION,
        "frame": {"epsg": frame["epsg"], "origin": frame["origin"],
                  "note": "all coordinates in the local frame (delivery CRS minus origin), Z up"},
        "images_dir": Path(images_out).name,
        "points": Path(points_out).name,
        "heldout_every": options.heldout_every,
        "heldout": heldout,
        "train": geo.train,
        "cameras": {n: geo.views[n].to_json() for n in sorted(geo.views)},
        **part,
        "warnings": warnings,
    }
    write_json(manifest_out, manifest)
    return manifest
