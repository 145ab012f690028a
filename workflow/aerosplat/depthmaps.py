"""Depth per view from a splat model, written as float32 TIFF, and scored against independent truth.

Why: every geometric product (point cloud, DSM, orthophoto) inherits the depth the splats put behind
each pixel, so depth is scored on its own, not only colour. Two depths per view:

- expected depth: the opacity-weighted mean depth (gsplat's "ED"); blurs across depth jumps;
- median depth: where the accumulated opacity along the ray crosses 0.5, the first surface that is
  really there. gsplat has no such mode; it is rendered through the ordinary rasterizer call (so it
  runs on gsplat CUDA and on our CPU rasterizer alike) with one colour channel per depth bin holding
  the Gaussian's weight and one its weight x depth: the channels' running sum is the accumulated
  opacity, and inside the bin where it crosses 0.5 the weighted mean depth is the median's estimate.

Truth: a DSM heightfield ray-cast into the view (the synthetic sample), or a reference point cloud
z-buffered into it (brighton_beach's `reference/model.laz`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fileio import atomic_path
from .splats import render_view

DEPTH_BINS = 48


def render_depths(splats: dict, K, w2c, width: int, height: int, rasterizer=None,
                  bins: int = DEPTH_BINS, camera_model: str = "pinhole") -> dict[str, np.ndarray]:
    """Expected and median z-depth [H, W] (NaN where the model is transparent) and alpha [H, W].
    `camera_model="ortho"` renders along parallel rays (the orthophoto's and the DSM's camera)."""
    with torch.no_grad():
        out, alpha, meta = render_view(splats, K, w2c, width, height, render_mode="ED", sh_degree=0,
                                       rasterizer=rasterizer, camera_model=camera_model)
        expected = out[..., 0]
        alpha = alpha[..., 0]
        device = splats["means"].device
        w2c_t = torch.as_tensor(np.asarray(w2c)[:3], dtype=torch.float32, device=device)
        z = splats["means"] @ w2c_t[:, :3].T[:, 2] + w2c_t[2, 3]
        seen = alpha > 0.5
        ed = expected[seen]
        if ed.numel() == 0:
            nan = np.full((height, width), np.nan, np.float32)
            return {"expected": nan, "median": nan.copy(), "alpha": alpha.cpu().numpy()}
        lo, hi = torch.quantile(ed.float(), torch.tensor([0.0, 1.0], device=device))
        span = float(hi - lo) or 1.0
        lo, hi = float(lo) - 0.25 * span, float(hi) + 0.25 * span
        edges = torch.linspace(lo, hi, bins + 1, device=device)
        idx = torch.bucketize(z, edges).clamp(0, bins + 1)  # 0: in front, bins + 1: behind
        onehot = torch.zeros((z.shape[0], bins + 2), device=device)
        onehot[torch.arange(z.shape[0], device=device), idx] = 1.0
        colors = torch.cat([onehot, onehot * z[:, None]], 1)
        weights = render_view(splats, K, w2c, width, height, rasterizer=rasterizer, colors=colors,
                              camera_model=camera_model)[0]
        w_bin, wz_bin = weights[..., :bins + 2], weights[..., bins + 2:]
        cum = w_bin.cumsum(-1)
        crossing = (cum >= 0.5).float().argmax(-1)
        has = cum[..., -1] >= 0.5
        wb = w_bin.gather(-1, crossing[..., None])[..., 0]
        zb = wz_bin.gather(-1, crossing[..., None])[..., 0] / wb.clamp_min(1e-12)
        median = torch.where(has, zb, torch.full_like(zb, float("nan")))
        expected = torch.where(seen, expected, torch.full_like(expected, float("nan")))
    return {"expected": expected.cpu().numpy().astype(np.float32),
            "median": median.cpu().numpy().astype(np.float32),
            "alpha": alpha.cpu().numpy().astype(np.float32)}


def write_depth_tiff(path, depth: np.ndarray, description: dict) -> None:
    """Float32 single-band TIFF in metres (NaN = no surface); `description` as JSON in the
    ImageDescription tag (camera, units, kind), readable by GDAL, QGIS and tifffile."""
    img = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32), mode="F")
    with atomic_path(path) as tmp:
        img.save(tmp, format="TIFF", description=json.dumps(description))


def read_depth_tiff(path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        desc = im.tag_v2.get(270, "{}")
        return np.asarray(im, np.float32).copy(), json.loads(desc)


def pixel_rays_world(K, w2c, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre [3] and per-pixel world directions with camera-z = 1: [H, W, 3]."""
    v, u = np.mgrid[0:height, 0:width] + 0.5
    pix = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    R, t = w2c[:3, :3], w2c[:3, 3]
    return -R.T @ t, pix @ R


def heightfield_depth(K, w2c, width: int, height: int, dsm: np.ndarray, x0: float, y0: float,
                      cell: float, z_min: float, z_max: float, step: float | None = None) -> np.ndarray:
    """True z-depth [H, W] of a north-up heightfield (row 0 at northing y0, column 0 at easting x0,
    square `cell`, local frame): first crossing of each pixel ray below the surface, refined
    linearly between march samples. NaN where the ray leaves the grid without hitting it."""
    centre, dirs = pixel_rays_world(np.asarray(K, float), np.asarray(w2c, float), width, height)
    dirs = dirs.reshape(-1, 3)
    step = step or cell * 0.5
    # March in camera-z from where the ray is at z_max to where it is at z_min (nadir-ish rays).
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.clip((z_max - centre[2]) / dirs[:, 2], 0, None)
        t1 = (z_min - centre[2]) / dirs[:, 2]
    out = np.full(len(dirs), np.nan)
    rows, cols = dsm.shape
    horiz = np.linalg.norm(dirs[:, :2], axis=1) + np.abs(dirs[:, 2])

    def surface(p):
        c = (p[:, 0] - x0) / cell - 0.5
        r = (y0 - p[:, 1]) / cell - 0.5
        inside = (c >= 0) & (c <= cols - 1) & (r >= 0) & (r <= rows - 1)
        ci = np.clip(np.floor(c).astype(int), 0, cols - 2)
        ri = np.clip(np.floor(r).astype(int), 0, rows - 2)
        fc, fr = np.clip(c - ci, 0, 1), np.clip(r - ri, 0, 1)
        z = (dsm[ri, ci] * (1 - fc) * (1 - fr) + dsm[ri, ci + 1] * fc * (1 - fr)
             + dsm[ri + 1, ci] * (1 - fc) * fr + dsm[ri + 1, ci + 1] * fc * fr)
        return np.where(inside, z, np.nan)

    ok = np.isfinite(t1) & (t1 > t0)
    idx = np.nonzero(ok)[0]
    t = t0[idx].copy()
    dt = step / horiz[idx]
    prev_t = t.copy()
    prev_gap = centre[2] + t * dirs[idx, 2] - surface(centre + t[:, None] * dirs[idx])
    active = np.ones(len(idx), bool)
    while active.any():
        a = np.nonzero(active)[0]
        t[a] = prev_t[a] + dt[a]
        p = centre + t[a, None] * dirs[idx[a]]
        gap = p[:, 2] - surface(p)
        hit = (gap <= 0) & np.isfinite(prev_gap[a])
        done = hit | (t[a] > t1[idx[a]]) | ~np.isfinite(gap) & (t[a] > t0[idx[a]] + 1e3)
        frac = prev_gap[a][hit] / (prev_gap[a][hit] - gap[hit])
        out[idx[a][hit]] = prev_t[a][hit] + frac * dt[a][hit]
        prev_t[a], prev_gap[a] = t[a], gap
        active[a[done]] = False
    return out.reshape(height, width).astype(np.float32)


def points_depth(K, w2c, width: int, height: int, xyz: np.ndarray) -> np.ndarray:
    """Z-buffer of a point cloud (local frame) in a view: the nearest point's z-depth per pixel,
    NaN where no point falls."""
    pc = xyz @ np.asarray(w2c)[:3, :3].T + np.asarray(w2c)[:3, 3]
    z = pc[:, 2]
    front = z > 1e-3
    pc, z = pc[front], z[front]
    u = np.floor(K[0, 0] * pc[:, 0] / z + K[0, 2]).astype(np.int64)
    v = np.floor(K[1, 1] * pc[:, 1] / z + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    flat = v[inside] * width + u[inside]
    buf = np.full(width * height, np.inf)
    np.minimum.at(buf, flat, z[inside])
    buf[~np.isfinite(buf)] = np.nan
    return buf.reshape(height, width).astype(np.float32)


def align_translation(src: np.ndarray, ref: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Translation that moves `src` onto `ref` (point-to-point ICP, translation only, median of the
    nearest-neighbour offsets so outliers and missing parts do not pull it)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(ref)
    shift = np.median(ref, 0) - np.median(src, 0)
    for _ in range(iterations):
        d, j = tree.query(src + shift)
        near = d <= np.percentile(d, 80)
        step = np.median(ref[j[near]] - (src[near] + shift), 0)
        shift = shift + step
        if np.linalg.norm(step) < 1e-3:
            break
    return shift


def depth_errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Median and mean absolute error (m) where both are known, and that share of the pixels."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    if not ok.any():
        return {"median_abs_error_m": None, "mean_abs_error_m": None, "valid_share": 0.0}
    err = np.abs(pred[ok] - truth[ok])
    return {"median_abs_error_m": round(float(np.median(err)), 4),
            "mean_abs_error_m": round(float(err.mean()), 4),
            "valid_share": round(float(ok.mean()), 4)}


def write_view_depths(out_dir: Path, name: str, depths: dict, K, w2c, frame: str = "local") -> list[Path]:
    """`<stem>_expected.tif` and `<stem>_median.tif` (float32 metres, z along the camera axis)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    paths = []
    for kind in ("expected", "median"):
        p = out_dir / f"{stem}_{kind}.tif"
        write_depth_tiff(p, depths[kind], {
            "image": name, "kind": f"{kind} depth", "units": "metre",
            "definition": "distance along the camera z axis (COLMAP/OpenCV camera), NaN: no surface",
            "K": np.asarray(K).round(6).tolist(), "w2c": np.asarray(w2c)[:3].round(9).tolist(),
            "frame": frame})
        paths.append(p)
    return paths


class DepthTruth:
    """Independent depth for any view of a scene, in the local frame: a DSM heightfield ray-cast
    (synthetic scenes: `truth/dsm.tif`) or a reference point cloud z-buffered into the view (a LAS/LAZ
    from another tool, first moved onto our SfM points by a translation, since both are georeferenced
    by consumer GPS and disagree by metres)."""

    def __init__(self, kind: str, note: str, **data):
        self.kind, self.note = kind, note
        self.__dict__.update(data)

    @classmethod
    def from_dsm(cls, dsm_path, origin) -> "DepthTruth":
        import rasterio

        with rasterio.open(dsm_path) as ds:
            dsm = ds.read(1, masked=True).filled(np.nan).astype(np.float64) - origin[2]
            tr = ds.transform
        if abs(tr.a + tr.e) > 1e-9 or tr.b or tr.d:
            raise ValueError(f"{dsm_path}: only north-up square-cell DSMs are supported")
        return cls("dsm", f"{Path(dsm_path).name} ray-cast into each view", dsm=dsm,
                   x0=tr.c - origin[0], y0=tr.f - origin[1], cell=tr.a)

    @classmethod
    def from_cloud(cls, laz_path, origin, sfm_points: np.ndarray) -> "DepthTruth":
        import laspy

        cloud = laspy.read(laz_path)
        xyz = np.stack([cloud.x, cloud.y, cloud.z], 1) - origin
        shift = align_translation(xyz[:: max(1, len(xyz) // 200_000)], sfm_points)
        return cls("reference_cloud", f"{Path(laz_path).name} z-buffered into each view after a "
                   f"translation of {np.round(shift, 3).tolist()} m onto our SfM points",
                   xyz=xyz + shift, shift=shift)

    def depth(self, K, w2c, width: int, height: int) -> np.ndarray:
        if self.kind == "dsm":
            return heightfield_depth(K, w2c, width, height, self.dsm, self.x0, self.y0, self.cell,
                                     float(np.nanmin(self.dsm)) - 1, float(np.nanmax(self.dsm)) + 1)
        return points_depth(K, w2c, width, height, self.xyz)
