"""Dense depth per training view by plane-sweep stereo: the geometric prior of sparse-view training.

Why: with 15-300 nadir photos a splatting loop can explain every training photo with Gaussians at
the wrong height (the anchors: 32 dB on training views, 16 dB in between). A few thousand SfM points
do not pin 2 M Gaussians down; a depth for most pixels of every training view does. The photos
themselves give it: for each view, sweep fronto-parallel planes through its depth range, warp its
best-overlapping neighbours onto each plane and score the match with windowed normalised cross-
correlation (robust to exposure), keep the best plane per pixel (sub-plane refined), then keep only
depths that neighbouring views' depth maps confirm (geometric consistency, as COLMAP's fusion does).
Water, sky and textureless roofs fail the checks and stay unsupervised.

Everything is torch (CPU or CUDA), at a capped resolution, in the local frame. Outputs feed the
trainer: a masked depth map per training view (depth loss) and a fused, coloured point cloud
(dense initialisation).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class MVSConfig:
    # Longest image side the sweep runs at (depths are resampled to the training resolution).
    max_size: int = 480
    num_planes: int = 96
    neighbours: int = 4
    # Mean of the best `top_k` neighbours' matching costs: a pixel occluded in the others still matches.
    top_k: int = 2
    window: int = 7
    # A depth is kept when its best NCC reaches this and `min_consistent` neighbours confirm it.
    min_ncc: float = 0.3
    min_consistent: int = 2
    max_reproj_px: float = 1.0
    max_rel_depth: float = 0.01


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114)


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


def pixel_rays(K: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Camera-frame rays with z = 1 through every pixel centre: [3, H*W]."""
    v, u = torch.meshgrid(torch.arange(h, dtype=K.dtype, device=K.device) + 0.5,
                          torch.arange(w, dtype=K.dtype, device=K.device) + 0.5, indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], 0)
    return torch.linalg.inv(K) @ pix


def _project(X: torch.Tensor, K: torch.Tensor):
    """Camera-frame points [3, M] -> pixel coordinates u, v and depth z."""
    z = X[2]
    zs = z.clamp_min(1e-6)
    return K[0, 0] * X[0] / zs + K[0, 2], K[1, 1] * X[1] / zs + K[1, 2], z


def _sample(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor, mode: str = "bilinear"):
    """Sample [C, H, W] at pixel coordinates (corner convention) [M]; outside -> NaN-free zeros."""
    h, w = img.shape[-2:]
    grid = torch.stack([2 * u / w - 1, 2 * v / h - 1], -1).reshape(1, 1, -1, 2)
    return F.grid_sample(img[None], grid, mode=mode, padding_mode="zeros",
                         align_corners=False)[0, :, 0]


def choose_neighbours(centers: np.ndarray, axes: np.ndarray, covis: np.ndarray, n: int) -> list[list[int]]:
    """For each view, the `n` others that see most of its SfM points from a useful angle.

    covis[i, j]: SfM points inside both views. Views nearly on the same spot (baseline angle under
    ~1 degree at the scene) give no depth; they are ranked last."""
    out = []
    for i in range(len(centers)):
        score = covis[i].astype(float).copy()
        score[i] = -1
        base = np.linalg.norm(centers - centers[i], axis=1)
        score[base < 1e-3 * max(base.max(), 1e-9)] *= 0.01
        score[(axes @ axes[i]) < 0.5] *= 0.1  # more than 60 degrees apart: hard to match
        out.append([int(j) for j in np.argsort(-score)[:n] if score[j] > 0])
    return out


def covisibility(points: np.ndarray, Ks: list[np.ndarray], w2cs: list[np.ndarray],
                 sizes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Points-in-both-views counts [V, V] and, per view, the 2nd/98th percentile depth [V, 2]."""
    hom = np.concatenate([points, np.ones((len(points), 1))], 1)
    vis, ranges = [], []
    for K, w2c, (w, h) in zip(Ks, w2cs, sizes):
        pc = hom @ w2c[:3].T
        z = pc[:, 2]
        uv = pc[:, :2] @ K[:2, :2].T / np.maximum(z, 1e-9)[:, None] + K[:2, 2]
        inside = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        vis.append(inside)
        zs = z[inside]
        ranges.append(np.percentile(zs, [2, 98]) if len(zs) >= 10 else [np.nan, np.nan])
    vis = np.stack(vis).astype(np.int32)
    return vis @ vis.T, np.asarray(ranges, float)


def sweep(ref: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, srcs: list[torch.Tensor],
          src_Ks: list[torch.Tensor], src_w2cs: list[torch.Tensor], near: float, far: float,
          cfg: MVSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Best depth [H, W] and its NCC [H, W] for the grey image `ref` against the grey `srcs`."""
    h, w = ref.shape
    k = cfg.window
    r = ref[None, None]
    mu_r = _box(r, k)
    sd_r = (_box(r * r, k) - mu_r ** 2).clamp_min(1e-6).sqrt()
    rays = pixel_rays(K, w, h)
    R, t = w2c[:3, :3], w2c[:3, 3]
    # Planes uniform in inverse depth (equal steps of disparity).
    inv = torch.linspace(1.0 / near, 1.0 / far, cfg.num_planes, dtype=ref.dtype, device=ref.device)
    depths = 1.0 / inv
    costs = torch.empty((cfg.num_planes, h, w), dtype=ref.dtype, device=ref.device)
    rel = []
    for Ks, ws in zip(src_Ks, src_w2cs):
        Rr = ws[:3, :3] @ R.T
        rel.append((Ks, Rr @ rays, (ws[:3, 3] - Rr @ t)[:, None]))
    for p, d in enumerate(depths):
        per_src = []
        for img, (Ks, A, tr) in zip(srcs, rel):
            u, v, z = _project(d * A + tr, Ks)
            warped = _sample(img[None], u, v).reshape(1, 1, h, w)
            valid = ((z > 0) & (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0]))
            mu_w = _box(warped, k)
            sd_w = (_box(warped * warped, k) - mu_w ** 2).clamp_min(1e-6).sqrt()
            ncc = (_box(r * warped, k) - mu_r * mu_w) / (sd_r * sd_w)
            cost = (1 - ncc[0, 0]).clamp(0, 2)
            cost = torch.where(valid.reshape(h, w), cost, torch.full_like(cost, 2.0))
            per_src.append(cost)
        stack = torch.stack(per_src)
        kk = min(cfg.top_k, stack.shape[0])
        costs[p] = stack.topk(kk, dim=0, largest=False).values.mean(0)
    best = costs.argmin(0)
    c0 = costs.gather(0, best[None])[0]
    # Sub-plane refinement: a parabola through the best plane and its two neighbours (in inverse depth).
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(cfg.num_planes - 1)
    cl, ch = costs.gather(0, lo[None])[0], costs.gather(0, hi[None])[0]
    denom = cl - 2 * c0 + ch
    offset = torch.where((denom > 1e-6) & (lo != best) & (hi != best),
                         0.5 * (cl - ch) / denom, torch.zeros_like(c0)).clamp(-0.5, 0.5)
    step = inv[1] - inv[0] if cfg.num_planes > 1 else inv[0] * 0
    inv_best = inv[best] + offset * step
    return 1.0 / inv_best, 1 - c0


def consistency(depths: list[torch.Tensor], Ks: list[torch.Tensor], w2cs: list[torch.Tensor],
                neighbours: list[list[int]], cfg: MVSConfig) -> list[torch.Tensor]:
    """Per view, how many neighbours' depth maps confirm each pixel's depth (forward-backward
    reprojection within `max_reproj_px` and relative depth within `max_rel_depth`)."""
    counts = []
    for i, d in enumerate(depths):
        h, w = d.shape
        rays = pixel_rays(Ks[i], w, h)
        Xc = rays * d.reshape(1, -1)
        R, t = w2cs[i][:3, :3], w2cs[i][:3, 3]
        Xw = R.T @ (Xc - t[:, None])
        count = torch.zeros(h * w, dtype=torch.int32, device=d.device)
        u0 = rays[0] * Ks[i][0, 0] + Ks[i][0, 2]
        v0 = rays[1] * Ks[i][1, 1] + Ks[i][1, 2]
        for j in neighbours[i]:
            Rj, tj = w2cs[j][:3, :3], w2cs[j][:3, 3]
            u, v, z = _project(Rj @ Xw + tj[:, None], Ks[j])
            dj = _sample(depths[j][None], u, v, mode="nearest")[0]
            ok = (z > 0) & (dj > 0) & (u >= 0) & (u < depths[j].shape[1]) & (v >= 0) \
                & (v < depths[j].shape[0])
            # Back from view j at its own depth, into view i.
            rays_j = torch.linalg.inv(Ks[j]) @ torch.stack([u, v, torch.ones_like(u)], 0)
            Xj = Rj.T @ (rays_j * dj - tj[:, None])
            ub, vb, zb = _project(R @ Xj + t[:, None], Ks[i])
            reproj = torch.sqrt((ub - u0) ** 2 + (vb - v0) ** 2)
            relerr = (zb - d.reshape(-1)).abs() / d.reshape(-1).clamp_min(1e-6)
            count += (ok & (reproj < cfg.max_reproj_px) & (relerr < cfg.max_rel_depth)).int()
        counts.append(count.reshape(h, w))
    return counts


@dataclass
class DepthPrior:
    """Per training view: depth [H, W] at `Ks[i]`'s resolution (0 where unconfirmed)."""

    depths: list[torch.Tensor]
    Ks: list[np.ndarray]
    seconds: float

    def valid_share(self) -> float:
        return float(np.mean([(d > 0).float().mean().item() for d in self.depths]))

    def at(self, i: int, w: int, h: int) -> torch.Tensor:
        """View i's depth at size (w, h): the median of the valid values in each block
        (nearest when upsampling), 0 where none is valid."""
        d = self.depths[i]
        H, W = d.shape
        if (W, H) == (w, h):
            return d
        if W >= w and H >= h and W % w == 0 and H % h == 0:
            f = W // w
            blocks = d.reshape(h, f, w, f).permute(0, 2, 1, 3).reshape(h, w, f * f)
            vals = torch.where(blocks > 0, blocks, torch.full_like(blocks, float("nan")))
            med = vals.nanmedian(-1).values
            return torch.nan_to_num(med, nan=0.0)
        return F.interpolate(d[None, None], size=(h, w), mode="nearest")[0, 0]

    def filled(self, i: int) -> torch.Tensor:
        """View i's depth with every unconfirmed pixel given its nearest confirmed pixel's depth:
        a guess for water, foliage and view edges, good enough to seed Gaussians there (never
        used as supervision)."""
        from scipy import ndimage

        d = self.depths[i].numpy()
        valid = d > 0
        if not valid.any():
            return self.depths[i]
        _, (r, c) = ndimage.distance_transform_edt(~valid, return_indices=True)
        return torch.from_numpy(d[r, c])

    def fill_only(self) -> "DepthPrior":
        """The filled depth (see `filled`) where the prior is unconfirmed, 0 where it is confirmed:
        the weaker target for what fewer than three photos see."""
        return DepthPrior([torch.where(d > 0, torch.zeros_like(d), self.filled(i))
                           for i, d in enumerate(self.depths)], self.Ks, 0.0)

    def points(self, images: list[torch.Tensor], w2cs: list[np.ndarray], stride: int | None = 1,
               fill_stride: int = 0):
        """Confirmed pixels (every `stride`-th) back-projected to the local frame with their photo
        colours: xyz, rgb (stride None: none of them). With `fill_stride`, also every
        `fill_stride`-th unconfirmed pixel at its filled depth (see `filled`), so no part of a
        photo is left without a seed."""
        xyz, rgb = [], []
        for i, (d, K, img, w2c) in enumerate(zip(self.depths, self.Ks, images, w2cs)):
            h, w = d.shape
            fill = torch.zeros(h, w, dtype=torch.bool)
            if fill_stride:
                fill[::fill_stride, ::fill_stride] = True
                fill &= d <= 0
                d = torch.where(fill, self.filled(i), d)
            Kt = torch.as_tensor(K, dtype=torch.float32)
            rays = pixel_rays(Kt, w, h)
            sel = torch.zeros(h, w, dtype=torch.bool)
            if stride:
                sel[::stride, ::stride] = True
            sel = ((sel | fill) & (d > 0)).reshape(-1)
            Xc = rays[:, sel] * d.reshape(-1)[sel]
            R = torch.as_tensor(w2c[:3, :3], dtype=torch.float32)
            t = torch.as_tensor(w2c[:3, 3], dtype=torch.float32)
            xyz.append((R.T @ (Xc - t[:, None])).T)
            col = F.interpolate(img.permute(2, 0, 1)[None], size=(h, w), mode="area")[0]
            rgb.append(col.reshape(3, -1)[:, sel].T)
        return torch.cat(xyz).numpy(), (torch.cat(rgb).clamp(0, 1) * 255).numpy()


def voxel_downsample(xyz: np.ndarray, rgb: np.ndarray, voxel: float,
                     origin: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel: the mean position and colour of the points in it. The voxels
    start at `origin` (default: the points' minimum; a fixed origin puts every subset on one lattice)."""
    if len(xyz) == 0:
        return xyz, rgb
    keys = np.floor((xyz - (xyz.min(0) if origin is None else origin)) / voxel).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    out_xyz = np.zeros((len(counts), 3))
    out_rgb = np.zeros((len(counts), 3))
    np.add.at(out_xyz, inv, xyz)
    np.add.at(out_rgb, inv, rgb)
    return out_xyz / counts[:, None], out_rgb / counts[:, None]


def compute_depth_prior(images: list[torch.Tensor], Ks: list[np.ndarray], w2cs: list[np.ndarray],
                        sfm_points: np.ndarray, cfg: MVSConfig | None = None,
                        device: torch.device | str = "cpu") -> DepthPrior:
    """Plane-sweep depth for every view of `images` ([H, W, 3] in [0, 1], with their K at that
    size and world-to-camera), confirmed across views. SfM points give the neighbours and the
    depth range of each view."""
    cfg = cfg or MVSConfig()
    t0 = time.time()
    h0, w0 = images[0].shape[:2]
    f = min(1.0, cfg.max_size / max(h0, w0))
    # An integer reduction, so depths map back onto the training grid block by block.
    div = max(1, math.ceil(1.0 / f))
    grays, Kt, w2ct, sizes, Ks_small = [], [], [], [], []
    for img, K, w2c in zip(images, Ks, w2cs):
        h, w = img.shape[0] // div, img.shape[1] // div
        g = F.interpolate(_gray(img)[None, None], size=(h, w), mode="area")[0, 0]
        Kd = K.copy()
        Kd[0] *= w / img.shape[1]
        Kd[1] *= h / img.shape[0]
        grays.append(g.to(device))
        Kt.append(torch.as_tensor(Kd, dtype=torch.float32, device=device))
        w2ct.append(torch.as_tensor(w2c, dtype=torch.float32, device=device))
        sizes.append((w, h))
        Ks_small.append(Kd)
    covis, ranges = covisibility(sfm_points, Ks_small, w2cs, sizes)
    centers = np.array([-w[:3, :3].T @ w[:3, 3] for w in w2cs])
    axes = np.array([w[2, :3] for w in w2cs])
    neigh = choose_neighbours(centers, axes, covis, cfg.neighbours)
    depths, nccs = [], []
    for i in range(len(grays)):
        near, far = ranges[i]
        if not np.isfinite(near) or not neigh[i]:
            depths.append(torch.zeros_like(grays[i]))
            nccs.append(torch.zeros_like(grays[i]))
            continue
        span = far - near
        near, far = max(near - 0.15 * span, 1e-2), far + 0.15 * span
        d, ncc = sweep(grays[i], Kt[i], w2ct[i], [grays[j] for j in neigh[i]],
                       [Kt[j] for j in neigh[i]], [w2ct[j] for j in neigh[i]], near, far, cfg)
        depths.append(d)
        nccs.append(ncc)
    counts = consistency(depths, Kt, w2ct, neigh, cfg)
    out = []
    for d, ncc, c, g in zip(depths, nccs, counts, grays):
        need = min(cfg.min_consistent, max(1, len(neigh[0])))
        ok = (ncc >= cfg.min_ncc) & (c >= need) & (d > 0)
        out.append(torch.where(ok, d, torch.zeros_like(d)).cpu())
    prior = DepthPrior(out, Ks_small, time.time() - t0)
    log.info("depth prior: %d views at %dx%d, %.0f%% of pixels confirmed, %.1f s", len(out),
             sizes[0][0], sizes[0][1], 100 * prior.valid_share(), prior.seconds)
    return prior
