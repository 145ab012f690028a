"""GIS products of the merged splat model, one partition cell at a time, then one mosaic.

Why per cell: a city survey's rasters and clouds do not fit one job's memory, and a failed cell
should cost one cell. Every cell job renders and fuses only the Gaussians and photos of its own
cell (plus a margin) onto its window of ONE scene grid (north-up, delivery CRS, snapped to the
resolution), so the mosaic only pastes windows and concatenates points: no resampling, no seams
of interpolation.

What a cell makes:
- a dense coloured point cloud: each training view's median depth (rendered by `evaluate` from the
  merged model) back-projected with the photo's own colours, kept only where at least
  `min_agreeing_views` other views see the same surface (multi-view depth consistency: a floater
  in front of one view is behind the surface in the others, so it never reaches the product),
  thinned to one point per `point_spacing_m` voxel and ground-classified by a maintained filter;
- two DSMs: an orthographic median-depth render of the splats straight down, and the highest
  fused point per cell; the scene config picks the default (`products.dsm_source`), the other is
  kept for the report;
- the DTM: ground points interpolated, gaps filled only within `dtm_fill_radius_m`;
- a true orthophoto: the splats rendered straight down (RGB + alpha);
- a view count per grid cell (how many training photos see it): the flight's footprint, for
  completeness;
- a TSDF mesh of the cell's RGB-D views, cropped to the cell.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from pyproj import CRS

from . import depthmaps, gisio, layout, rasterize
from .errors import InputError
from .evaluate import backproject
from .mvs import voxel_downsample
from .fileio import atomic_path, write_json
from .manifest import find_partition, load_manifest
from .rasterize import Grid
from .splats import read_ply, render_view
from .train import load_cameras, load_image

log = logging.getLogger(__name__)

NODATA = -9999.0
"""Nodata of the elevation rasters (QGIS and GDAL show it as a hole)."""

ELEVATION_BANDS = ("dsm_ortho", "dsm_cloud", "dtm", "views", "dsm_mvs")
"""Bands of a cell's `elevation.tif`: both DSMs, the DTM, the number of photos seeing each cell, and
the photogrammetry-only reference DSM (plane-sweep depth, no splats; nodata unless asked for)."""

DSM_SOURCES = ("ortho", "cloud")

FOOTPRINT_VIEWS = 2
"""A grid cell is in the flight's footprint when at least this many training photos see it."""


@dataclass(frozen=True)
class ProductOptions:
    """`products:` of the scene YAML (config/schema.yaml documents each key)."""

    resolution_m: float | None = None
    dsm_source: str = "ortho"
    min_agreeing_views: int = 2
    depth_tolerance_px: float = 1.5
    depth_tolerance_rel: float = 0.005
    point_spacing_m: float | None = None
    dsm_fill_radius_m: float = 4.0
    dsm_agreement_m: float = 1.0
    dtm_fill_radius_m: float = 30.0
    cell_margin_m: float = 10.0
    max_tile_pixels: int = 160_000
    memory_budget_mb: int = 8000
    mesh_faces: int = 200_000
    mesh_voxel_gsd: float = 1.5
    mesh_min_component_faces: int = 200
    mvs_reference: bool = False

    @classmethod
    def from_config(cls, cfg: dict | None) -> "ProductOptions":
        known = {f.name for f in fields(cls)}
        opts = cls(**{k: v for k, v in (cfg or {}).items() if k in known})
        if opts.dsm_source not in DSM_SOURCES:
            raise InputError(f"products.dsm_source must be one of {DSM_SOURCES}, got {opts.dsm_source!r}")
        return opts


@dataclass
class View:
    """One training photo at training size: its median depth, colours and camera."""

    name: str
    depth: np.ndarray  # [H, W] float32, NaN: no surface
    rgb: np.ndarray  # [H, W, 3] uint8
    K: np.ndarray
    w2c: np.ndarray  # [4, 4]

    @property
    def centre(self) -> np.ndarray:
        return -self.w2c[:3, :3].T @ self.w2c[:3, 3]


# --------------------------------------------------------------------------------------------
# The scene grid


def delivery_crs(manifest: dict) -> CRS:
    """The manifest's delivery CRS; rasters need one in metres."""
    crs = CRS.from_epsg(int(manifest["frame"]["epsg"]))
    if not crs.is_projected:
        raise InputError(f"rasters need a projected CRS in metres, but the scene is in {crs.name} "
                         f"(EPSG:{manifest['frame']['epsg']})",
                         hint="set `crs` in the scene YAML to a projected CRS (or `auto` for the UTM zone) "
                              "and re-run from georef")
    return crs


def view_gsd(view: View) -> float | None:
    """Ground sample distance of a view: its median depth over its focal length (metres/pixel)."""
    d = view.depth[np.isfinite(view.depth)]
    return float(np.median(d) / view.K[0, 0]) if d.size else None


def training_gsd(views: list[View], nadir_within_deg: float = 20.0) -> float:
    """The training GSD: the median over the near-nadir training views (all views if none is)."""
    down = np.array([0.0, 0.0, -1.0])
    nadir = [v for v in views if float(v.w2c[2, :3] @ down) >= math.cos(math.radians(nadir_within_deg))]
    gsds = [g for g in map(view_gsd, nadir or views) if g]
    if not gsds:
        raise InputError("no training view has a rendered depth: the merged model is empty",
                         hint="check merged/merge.json and the training logs")
    return float(np.median(gsds))


def scene_grid(manifest: dict, resolution: float, budget_mb: float) -> Grid:
    """The one grid every cell writes into: the partition extent, snapped to the resolution."""
    origin = np.asarray(manifest["frame"]["origin"], float)
    ext = np.asarray(manifest["extent"], float)
    grid = Grid.covering(ext[:2] + origin[:2], ext[2:] + origin[:2], resolution)
    # The mosaic holds 4 float32 elevation bands and 4 uint8 orthophoto bands per cell at once.
    need_mb = grid.width * grid.height * (4 * 4 + 4) / 2**20
    if need_mb > budget_mb:
        raise InputError(
            f"a {resolution:.3f} m grid over {ext[2] - ext[0]:.0f} m x {ext[3] - ext[1]:.0f} m is "
            f"{grid.width} x {grid.height} cells, {need_mb:,.0f} MB for the mosaic, over "
            f"products.memory_budget_mb = {budget_mb:,.0f}",
            hint="coarsen products.resolution_m (or leave it unset for the training GSD), or raise "
                 "products.memory_budget_mb")
    return grid


def cell_window(grid: Grid, manifest: dict, pid: str) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of the grid cells whose centre lies in the partition cell; cells on the
    grid's outer edge extend to it, so the windows of all cells tile the grid exactly once."""
    origin = np.asarray(manifest["frame"]["origin"], float)
    ext = manifest["extent"]
    cb = find_partition(manifest, pid)["cell_bounds"]
    eps = 1e-6

    def col_of(x, edge_lo, edge_hi):
        if x <= edge_lo + eps:
            return 0
        if x >= edge_hi - eps:
            return grid.width
        return int(math.ceil((x + origin[0] - grid.west) / grid.cell - 0.5))

    def row_of(y, edge_lo, edge_hi):  # rows count southwards from the north edge
        if y >= edge_hi - eps:
            return 0
        if y <= edge_lo + eps:
            return grid.height
        return int(math.ceil((grid.north - (y + origin[1])) / grid.cell - 0.5))

    c0, c1 = col_of(cb[0], ext[0], ext[2]), col_of(cb[2], ext[0], ext[2])
    r0, r1 = row_of(cb[3], ext[1], ext[3]), row_of(cb[1], ext[1], ext[3])
    return r0, c0, max(0, r1 - r0), max(0, c1 - c0)


def sub_grid(grid: Grid, window: tuple[int, int, int, int]) -> Grid:
    r0, c0, rows, cols = window
    return Grid(grid.west + c0 * grid.cell, grid.north - r0 * grid.cell, grid.cell, cols, rows)


# --------------------------------------------------------------------------------------------
# Dense point cloud from the rendered depth


def load_views(manifest: dict, names: list[str], depth_dir: Path, image_dir: Path) -> list[View]:
    """Training views with the median depth `evaluate` rendered and the photo at the same size."""
    views = []
    for cam in load_cameras(manifest, names):
        path = Path(depth_dir) / f"{Path(cam.name).stem}_median.tif"
        if not path.exists():
            raise InputError(f"no rendered depth for {cam.name}", path=str(path),
                             hint="re-run the evaluate stage: snakemake --cores N <results>/merged/metrics.json")
        depth, desc = depthmaps.read_depth_tiff(path)
        K = np.asarray(desc["K"], float)
        h, w = depth.shape
        rgb = (load_image(image_dir / cam.name, w, h).numpy() * 255 + 0.5).astype(np.uint8)
        views.append(View(cam.name, depth, rgb, K, cam.w2c))
    return views


def _project(view: View, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel column, row (integers) and camera z of world points; z <= 0 behind the camera."""
    cam = xyz @ view.w2c[:3, :3].T + view.w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = view.K[0, 0] * cam[:, 0] / z + view.K[0, 2]
        v = view.K[1, 1] * cam[:, 1] / z + view.K[1, 2]
    return np.floor(u).astype(np.int64, copy=False), np.floor(v).astype(np.int64, copy=False), z


def agreeing_views(xyz: np.ndarray, views: list[View], skip: int | None,
                   tol_px: float, tol_rel: float) -> np.ndarray:
    """How many views (other than `skip`) see a surface at each point's depth, within
    tol_px ground pixels plus tol_rel of the depth."""
    count = np.zeros(len(xyz), np.int32)
    for j, other in enumerate(views):
        if j == skip:
            continue
        h, w = other.depth.shape
        u, v, z = _project(other, xyz)
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = np.full(len(xyz), np.nan, np.float32)
        d[inside] = other.depth[v[inside], u[inside]]
        tol = tol_px * z / other.K[0, 0] + tol_rel * z
        with np.errstate(invalid="ignore"):
            count += (np.abs(z - d) <= tol).astype(np.int32)
    return count


def backproject_view(view: View) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] and their photo colours [N, 3] of every pixel with a depth."""
    seen = view.depth > 0  # NaN (no surface) compares False
    return backproject(view.depth, view.K, view.w2c, step=1), view.rgb[seen]


def fuse_views(views: list[View], opts: ProductOptions, keep_xy: tuple[float, float, float, float]
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Depth-consistent points of all views inside `keep_xy` (local xmin, ymin, xmax, ymax)."""
    pts, cols, total, agreed = [], [], 0, 0
    for i, view in enumerate(views):
        xyz, rgb = backproject_view(view)
        inside = ((xyz[:, 0] >= keep_xy[0]) & (xyz[:, 0] < keep_xy[2])
                  & (xyz[:, 1] >= keep_xy[1]) & (xyz[:, 1] < keep_xy[3]))
        xyz, rgb = xyz[inside], rgb[inside]
        total += len(xyz)
        ok = agreeing_views(xyz, views, i, opts.depth_tolerance_px, opts.depth_tolerance_rel) \
            >= opts.min_agreeing_views
        agreed += int(ok.sum())
        pts.append(xyz[ok])
        cols.append(rgb[ok])
    xyz = np.concatenate(pts) if pts else np.zeros((0, 3))
    rgb = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    stats = {"depth_pixels": total, "consistent_pixels": agreed,
             "consistent_share": round(agreed / total, 4) if total else None}
    return xyz, rgb, stats


def thin(xyz: np.ndarray, rgb: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per `spacing` voxel of the (scene-wide) local frame: the mean of its points, so
    neighbouring cells thin onto the same lattice."""
    if len(xyz) == 0:
        return xyz, rgb
    out_xyz, out_rgb = voxel_downsample(xyz, rgb.astype(np.float64), spacing, origin=0.0)
    return out_xyz, np.round(out_rgb).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Orthographic renders: the true orthophoto and the splat DSM


def ortho_camera(west: float, north: float, top: float, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """K and w2c of an orthographic camera looking straight down from height `top` (local frame),
    whose pixel (0, 0) covers the grid cell at the north-west corner (west, north)."""
    R = np.diag([1.0, -1.0, -1.0])  # x east, y south, z down: a right-handed OpenCV camera
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ np.array([west, north, top])
    K = np.array([[1.0 / cell, 0.0, 0.0], [0.0, 1.0 / cell, 0.0], [0.0, 0.0, 1.0]])
    return K, w2c


def render_ortho(splats: dict, grid: Grid, origin: np.ndarray, max_tile_pixels: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB [H, W, 3] uint8, alpha [H, W] float and surface height [H, W] (delivery CRS, NaN where the
    model is transparent) of the splats seen straight down, rendered in tiles of bounded size."""
    rgb = np.zeros((grid.height, grid.width, 3), np.uint8)
    alpha = np.zeros((grid.height, grid.width), np.float32)
    height = np.full((grid.height, grid.width), np.nan, np.float32)
    if len(splats["means"]) == 0 or grid.width == 0 or grid.height == 0:
        return rgb, alpha, height
    top = float(splats["means"][:, 2].max()) + 10.0
    side = max(16, int(math.sqrt(max_tile_pixels)))
    for r0 in range(0, grid.height, side):
        for c0 in range(0, grid.width, side):
            h, w = min(side, grid.height - r0), min(side, grid.width - c0)
            west = grid.west + c0 * grid.cell - origin[0]
            north = grid.north - r0 * grid.cell - origin[1]
            K, w2c = ortho_camera(west, north, top, grid.cell)
            with torch.no_grad():
                img, a, _ = render_view(splats, K, w2c, w, h, sh_degree=0, camera_model="ortho")
            depth = depthmaps.render_depths(splats, K, w2c, w, h, camera_model="ortho")["median"]
            rgb[r0:r0 + h, c0:c0 + w] = (img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            alpha[r0:r0 + h, c0:c0 + w] = a[..., 0].cpu().numpy()
            height[r0:r0 + h, c0:c0 + w] = top - depth + origin[2]
    return rgb, alpha, height


def checked_by_cloud(dsm_ortho: np.ndarray, dsm_cloud: np.ndarray, agreement_m: float) -> np.ndarray:
    """The splats' straight-down surface where the multi-view-consistent cloud confirms it (within
    `agreement_m`), the cloud's where they disagree, nothing where the cloud has no support: a
    render straight down also sees what no photo checked (the model's underside through a thin
    surface, Gaussians beyond the flight's edge)."""
    agree = np.isfinite(dsm_ortho) & (np.abs(dsm_ortho - dsm_cloud) <= agreement_m)
    return np.where(agree, dsm_ortho, dsm_cloud).astype(np.float32)


def crop_splats(splats: dict, xy: tuple[float, float, float, float]) -> dict:
    """The Gaussians centred in the local-frame rectangle (xmin, ymin, xmax, ymax)."""
    m = splats["means"]
    keep = (m[:, 0] >= xy[0]) & (m[:, 0] < xy[2]) & (m[:, 1] >= xy[1]) & (m[:, 1] < xy[3])
    return {k: v[keep] for k, v in splats.items()}


def view_counts(grid: Grid, heights: np.ndarray, origin: np.ndarray, views: list[View]) -> np.ndarray:
    """Number of training photos whose frame holds each grid cell's surface (uint16 [H, W])."""
    xs, ys = grid.centres()
    X, Y = np.meshgrid(xs - origin[0], ys - origin[1])
    Z = np.where(np.isfinite(heights), heights - origin[2], np.nanmedian(heights) - origin[2]
                 if np.isfinite(heights).any() else 0.0)
    xyz = np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)
    count = np.zeros(len(xyz), np.uint16)
    for view in views:
        h, w = view.depth.shape
        u, v, z = _project(view, xyz)
        count += ((z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)).astype(np.uint16)
    return count.reshape(grid.height, grid.width)


# --------------------------------------------------------------------------------------------
# One cell


def cell_outputs(out_dir: Path) -> dict[str, Path]:
    return {key: Path(p) for key, p in layout.cell_outputs(str(out_dir)).items()}


def cell_products(pid: str, merged_ply, manifest_path, depth_dir, opts: ProductOptions, out_dir) -> dict:
    """Rule `products`: the tiles of partition cell `pid` (see the module docstring)."""
    t0 = time.time()
    merged_ply, manifest_path, depth_dir = Path(merged_ply), Path(manifest_path), Path(depth_dir)
    for path, stage in ((merged_ply, "merge"), (manifest_path, "partition"), (depth_dir, "evaluate")):
        if not path.exists():
            raise InputError(f"{path.name} is missing: the {stage} stage has not run (or its output was removed)",
                             path=str(path), hint=f"run `snakemake --cores N {path}` first (or the whole workflow)")
    manifest = load_manifest(manifest_path)
    crs = delivery_crs(manifest)
    origin = np.asarray(manifest["frame"]["origin"], float)
    image_dir = manifest_path.parent / manifest["images_dir"]
    part = find_partition(manifest, pid)
    train = set(manifest["train"])
    all_views = load_views(manifest, sorted(train), depth_dir, image_dir)
    gsd = training_gsd(all_views)
    resolution = float(opts.resolution_m or gsd)
    spacing = float(opts.point_spacing_m or gsd)
    grid = scene_grid(manifest, resolution, opts.memory_budget_mb)
    window = cell_window(grid, manifest, pid)
    cell = sub_grid(grid, window)
    by_name = {v.name: v for v in all_views}
    views = [by_name[n] for n in part["images"] if n in by_name]
    warnings: list[str] = []
    log.info("cell %s: window rows %d..%d, cols %d..%d of a %d x %d grid at %.3f m (training GSD %.3f m), "
             "%d views", pid, window[0], window[0] + window[2], window[1], window[1] + window[3],
             grid.width, grid.height, resolution, gsd, len(views))

    # Local-frame rectangles: the cell's window, and the window plus the margin the renders and the
    # ground filter see (Gaussians and ground just outside shape the cell's border).
    own = (cell.west - origin[0], cell.north - cell.height * cell.cell - origin[1],
           cell.west + cell.width * cell.cell - origin[0], cell.north - origin[1])
    m = opts.cell_margin_m
    around = (own[0] - m, own[1] - m, own[2] + m, own[3] + m)

    # gsplat's CUDA rasterizer where a GPU is (the SLURM profile gives this job one), ours otherwise.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    splats = crop_splats({k: v.float().to(device) for k, v in read_ply(merged_ply).items()}, around)
    if len(splats["means"]) == 0:
        warnings.append(f"cell {pid} holds no Gaussians: its tiles are empty")
        log.warning(warnings[-1])
    t = time.time()
    rgb, alpha, dsm_ortho = render_ortho(splats, cell, origin, opts.max_tile_pixels)
    seen = alpha >= 0.5
    dsm_ortho[~seen] = np.nan
    log.info("cell %s: orthographic render %d x %d px in %.1f s (%d Gaussians)", pid, cell.width,
             cell.height, time.time() - t, len(splats["means"]))

    t = time.time()
    xyz, colours, fusion = fuse_views(views, opts, around)
    xyz, colours = thin(xyz, colours, spacing)
    log.info("cell %s: %d fused points after thinning to %.3f m (%.0f %% of depth pixels consistent) in %.1f s",
             pid, len(xyz), spacing, 100 * (fusion["consistent_share"] or 0), time.time() - t)

    from .ground import classify_ground, ground_filter_name
    ground = classify_ground(xyz, spacing) if len(xyz) else np.zeros(0, bool)
    xyz_del = xyz + origin
    dsm_cloud = rasterize.fill_gaps(rasterize.highest_per_cell(cell, xyz_del), opts.dsm_fill_radius_m / resolution)
    dsm_ortho = checked_by_cloud(dsm_ortho, dsm_cloud, opts.dsm_agreement_m)
    dtm = rasterize.interpolate_ground(cell, xyz_del[ground], opts.dtm_fill_radius_m / resolution)
    if not np.isfinite(dtm).any():
        warnings.append(f"cell {pid}: no ground points among {len(xyz)} (water, one roof?): its DTM tile is empty")
        log.warning(warnings[-1])
    dsm_mvs = np.full_like(dsm_cloud, np.nan)
    if opts.mvs_reference and views:
        t = time.time()
        prior = trainer_depth_prior(manifest_path.parent / pid / "ckpt", views)
        dsm_mvs = mvs_reference_dsm(views, manifest_path.parent / manifest["points"], cell, origin, spacing,
                                    opts, around, prior)
        log.info("cell %s: reference DSM from plane-sweep depth alone in %.1f s", pid, time.time() - t)
    surface = np.where(np.isfinite(dsm_ortho), dsm_ortho, dsm_cloud)
    counts = view_counts(cell, surface, origin, views)

    row, col, inside = cell.cells_of(xyz_del[:, :2])
    mine = inside
    outs = cell_outputs(out_dir)
    classes = np.where(ground, gisio.GROUND_CLASS, 1).astype(np.uint8)
    gisio.write_laz(outs["points"], xyz_del[mine], colours[mine], crs, classification=classes[mine])
    bands = np.stack([dsm_ortho, dsm_cloud, dtm, counts.astype(np.float32), dsm_mvs])
    bands = np.where(np.isfinite(bands), bands, NODATA).astype(np.float32)
    write_tile(outs["elevation"], bands, cell.transform, crs, NODATA, ELEVATION_BANDS)
    ortho = np.concatenate([rgb, np.where(seen & (counts >= 1), 255, 0).astype(np.uint8)[..., None]], -1)
    write_tile(outs["ortho"], np.moveaxis(ortho, -1, 0), cell.transform, crs, None, ("red", "green", "blue", "alpha"))

    t = time.time()
    mesh_info = cell_mesh(views, own, gsd, opts, outs["mesh"])
    log.info("cell %s: TSDF mesh %s faces in %.1f s", pid, mesh_info["faces"], time.time() - t)

    report = {
        "pid": pid, "grid": {"west": grid.west, "north": grid.north, "cell": grid.cell,
                             "width": grid.width, "height": grid.height},
        "window": dict(zip(("row", "col", "rows", "cols"), window)),
        "epsg": int(manifest["frame"]["epsg"]), "origin": origin.tolist(),
        "gsd_m": round(gsd, 4), "resolution_m": round(resolution, 4), "point_spacing_m": round(spacing, 4),
        "views": len(views), "gaussians": int(len(splats["means"])),
        "points": int(mine.sum()), "ground_points": int((ground & mine).sum()),
        "ground_filter": ground_filter_name(), "fusion": fusion, "mesh": mesh_info,
        "options": asdict(opts), "warnings": warnings, "seconds": round(time.time() - t0, 1),
    }
    write_json(outs["report"], report)
    return report


def trainer_depth_prior(cache_dir: Path, views: list[View]):
    """The plane-sweep depth the trainer computed for exactly these photos (its cache beside the
    partition's checkpoint), or None: sweeping again costs minutes per cell on a CPU."""
    from .mvs import DepthPrior
    names = [v.name for v in views]
    for path in sorted(Path(cache_dir).glob("depth_prior_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            state = torch.load(path, weights_only=False)
        except Exception:  # an unreadable cache is only a lost shortcut
            continue
        if state.get("names") == names:
            log.info("plane-sweep depth: the trainer's, %s", path)
            return DepthPrior(state["depths"], state["Ks"], state["seconds"])
    return None


def mvs_reference_dsm(views: list[View], points_file: Path, grid: Grid, origin: np.ndarray, spacing: float,
                      opts: ProductOptions, around: tuple, prior=None) -> np.ndarray:
    """The photogrammetry route without splats, for comparison: plane-sweep depth of the same photos
    (the trainer's depth prior, swept again when the trainer left none), fused and rasterized exactly
    like the splats' depth."""
    from .mvs import MVSConfig, compute_depth_prior
    if prior is None:
        with np.load(points_file) as pts:
            sfm_xyz = pts["xyz"]
        images = [torch.from_numpy(v.rgb.astype(np.float32) / 255.0) for v in views]
        prior = compute_depth_prior(images, [v.K for v in views], [v.w2c for v in views], sfm_xyz,
                                    MVSConfig(max_size=max(views[0].depth.shape)))
    mvs_views = []
    for i, v in enumerate(views):
        d = prior.at(i, v.depth.shape[1], v.depth.shape[0]).numpy().astype(np.float32)
        mvs_views.append(View(v.name, np.where(d > 0, d, np.nan).astype(np.float32), v.rgb, v.K, v.w2c))
    xyz, _, _ = fuse_views(mvs_views, opts, around)
    xyz, _ = thin(xyz, np.zeros((len(xyz), 3), np.uint8), spacing)
    return rasterize.fill_gaps(rasterize.highest_per_cell(grid, xyz + origin), opts.dsm_fill_radius_m / grid.cell)


def write_tile(path, bands: np.ndarray, transform: Affine, crs, nodata, names) -> None:
    """A cell's GeoTIFF tile (tiled, deflate; opens in QGIS as it is), bands named."""
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
                           count=bands.shape[0], dtype=bands.dtype.name, crs=crs, transform=transform,
                           nodata=nodata, compress="deflate", tiled=bands.shape[1] >= 16 and bands.shape[2] >= 16,
                           ) as dst:
            dst.write(bands)
            for i, name in enumerate(names, 1):
                dst.set_band_description(i, name)


def cell_mesh(views: list[View], own: tuple, gsd: float, opts: ProductOptions, out: Path) -> dict:
    """TSDF mesh of the cell's RGB-D views, cropped to the cell (faces by centroid); local frame."""
    from .mesh import tsdf_mesh
    voxel = opts.mesh_voxel_gsd * gsd
    depth_max = max((float(np.nanmax(v.depth)) for v in views if np.isfinite(v.depth).any()), default=0.0)
    if depth_max > 0:
        mesh = tsdf_mesh([(v.rgb, v.depth, v.K, v.w2c) for v in views], voxel_m=voxel, trunc_m=4 * voxel,
                         depth_max_m=depth_max * 1.01, min_component_faces=opts.mesh_min_component_faces,
                         max_faces=opts.mesh_faces)
        verts, faces = mesh.vertices, mesh.faces
        cols = mesh.colors if mesh.colors is not None else np.full((len(verts), 3), 200, np.uint8)
        cen = verts[faces].mean(1)
        keep = (cen[:, 0] >= own[0]) & (cen[:, 0] < own[2]) & (cen[:, 1] >= own[1]) & (cen[:, 1] < own[3])
        faces = faces[keep]
    else:
        verts, faces, cols = np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8)
    used = np.unique(faces)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, vertices=verts[used], faces=remap[faces], colors=cols[used])
    return {"faces": int(len(faces)), "vertices": int(len(used)), "voxel_m": round(voxel, 4)}
