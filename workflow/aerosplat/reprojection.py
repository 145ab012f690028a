"""What the training photos themselves predict of a new view: the photo ceiling of sparse views.

Why: on a sparse aerial flight a held-out photo can only be predicted from what the training photos
show of the same ground. Re-projecting their pixels into the new view through a depth map (plain
image-based rendering) measures how far that goes: where the splat model scores near the re-projected
photos, it has learned what the photos can tell about that view, and what is left is ground no
training photo shows, exposure, foliage and water that change between shots, and parallax that the
depth misses. `bench/photo_ceiling.py` reports it per held-out view beside the model's own score.

A pixel's surface point (its depth) is looked up in every training photo that sees it: inside the
frame, in front of the camera and, given that photo's own depth map, not hidden behind something
nearer to it. Bilinear colours; no blending weights, no exposure change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .depthmaps import pixel_rays_world


@dataclass
class SourcePhoto:
    """A training photo at the evaluation resolution: pixels [H, W, 3] in [0, 1], intrinsics,
    world-to-camera [4, 4] (or [3, 4]) and, for the occlusion test, its z-depth [H, W] (NaN unknown)."""

    image: np.ndarray
    K: np.ndarray
    w2c: np.ndarray
    depth: np.ndarray | None = None


@dataclass
class Reprojection:
    nearest: np.ndarray  # [H, W, 3] colour from the first source that sees the pixel; NaN: none does
    mean: np.ndarray  # [H, W, 3] mean colour over every source that sees it; NaN: none does
    count: np.ndarray  # [H, W] how many sources see it


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`image` [H, W, C] at pixel-centre coordinates (x, y) (already inside the frame)."""
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1)
    y = np.clip(y - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(int), w - 2) if w > 1 else np.zeros_like(x, int)
    y0 = np.minimum(np.floor(y).astype(int), h - 2) if h > 1 else np.zeros_like(y, int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    return (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
            + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy)


def reproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray, sources: list[SourcePhoto],
              occlusion_tolerance: float = 0.02) -> Reprojection:
    """Colour of each pixel of a view (its `depth`, K, w2c) as the `sources` saw it, in their order
    (nearest first, for `nearest`). A source sees the point when it projects inside its frame, in
    front of it and, if the source has a depth map, within `occlusion_tolerance` (relative) of it."""
    h, w = depth.shape
    centre, rays = pixel_rays_world(np.asarray(K, float), np.asarray(w2c, float), w, h)
    X = (centre + rays * depth[..., None]).reshape(-1, 3)  # NaN depth: NaN point
    known = np.isfinite(X).all(1)
    nearest = np.full((h * w, 3), np.nan)
    total = np.zeros((h * w, 3))
    count = np.zeros(h * w, int)
    for src in sources:
        sh, sw = src.image.shape[:2]
        pc = X[known] @ np.asarray(src.w2c)[:3, :3].T + np.asarray(src.w2c)[:3, 3]
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = src.K[0, 0] * pc[:, 0] / z + src.K[0, 2]
            y = src.K[1, 1] * pc[:, 1] / z + src.K[1, 2]
        seen = (z > 1e-6) & (x >= 0) & (x < sw) & (y >= 0) & (y < sh)
        if src.depth is not None:
            xi = np.clip(np.nan_to_num(x, nan=0).astype(int), 0, sw - 1)
            yi = np.clip(np.nan_to_num(y, nan=0).astype(int), 0, sh - 1)
            zs = src.depth[yi, xi]
            seen &= ~(np.isfinite(zs) & (z > zs * (1 + occlusion_tolerance)))
        idx = np.flatnonzero(known)[seen]
        colour = bilinear(src.image, x[seen], y[seen])
        first = count[idx] == 0
        nearest[idx[first]] = colour[first]
        total[idx] += colour
        count[idx] += 1
    with np.errstate(invalid="ignore"):
        mean = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], np.nan)
    return Reprojection(nearest.reshape(h, w, 3), mean.reshape(h, w, 3), count.reshape(h, w))


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR (dB) of two equally shaped arrays in [0, 1]; None when empty."""
    if a.size == 0:
        return None
    mse = float(np.mean((np.clip(a, 0, 1) - b) ** 2))
    return round(10 * math.log10(1.0 / max(mse, 1e-12)), 4)


def fit_gain_offset(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel least-squares gain and offset mapping colours `src` [N, 3] onto `dst` [N, 3]."""
    gain, offset = np.ones(3), np.zeros(3)
    for c in range(src.shape[1]):
        A = np.stack([src[:, c], np.ones(len(src))], 1)
        gain[c], offset[c] = np.linalg.lstsq(A, dst[:, c], rcond=None)[0]
    return gain, offset


def ceiling_scores(render: np.ndarray, photo: np.ndarray, rep: Reprojection) -> dict:
    """A held-out view's render and the re-projected training photos against the photo itself:
    PSNR over the whole view, over the pixels some training photo sees (`covered`) and over the
    rest, the share of the render's squared error that falls on the rest, and the re-projected
    photos' PSNR on the covered pixels raw and after a per-channel gain/offset fitted to the photo
    (an oracle exposure: what the best possible exposure model could add)."""
    covered = rep.count > 0
    err = ((np.clip(render, 0, 1) - photo) ** 2).sum(-1)
    near, ph = rep.nearest[covered], photo[covered]
    fitted = None
    if covered.sum() >= 2:
        gain, offset = fit_gain_offset(near, ph)
        fitted = psnr(near * gain + offset, ph)
    return {
        "covered_share": round(float(covered.mean()), 4),
        "covered_by_two_share": round(float((rep.count >= 2).mean()), 4),
        "render_psnr": psnr(render, photo),
        "render_psnr_covered": psnr(render[covered], ph),
        "render_psnr_uncovered": psnr(render[~covered], photo[~covered]),
        "uncovered_error_share": round(float(err[~covered].sum() / max(err.sum(), 1e-12)), 4),
        "nearest_photo_psnr_covered": psnr(near, ph),
        "mean_photos_psnr_covered": psnr(rep.mean[covered], ph),
        "nearest_photo_exposure_fit_psnr_covered": fitted,
    }
