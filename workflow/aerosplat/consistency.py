"""Multi-view photometric consistency of the rendered depth: a training loss for sparse views.

Why: a splatting loop only checks each Gaussian against the photos it is rendered into, one at a
time, so a tree drawn at the wrong height still reproduces every training photo - each from its own
Gaussians - and falls apart in between. The photos themselves say where the surface is: if the
rendered depth of view i is right, the neighbouring photo j, warped into i through that depth,
looks like photo i. Comparing them with windowed NCC (exposure-invariant, as the plane sweep) and
back-propagating through the warp moves the depth - and so the Gaussians - to where the photos
agree, everywhere the rendering is opaque, not only where the plane sweep confirmed a depth (trees,
low texture at coarse levels). Per pixel, the better of the neighbours counts (an occluded pixel
matches in another neighbour), as in self-supervised monocular depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mvs import _box, _gray, _project, pixel_rays


def warp_from(src: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
              src_K: torch.Tensor, src_w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image `src` [H', W', C] seen through view (K, w2c) whose depth along the camera axis is
    `depth` [H, W]: returns the warped image [H, W, C] and where it is defined [H, W] (in front of
    the source camera and inside its image). Differentiable in `depth`."""
    h, w = depth.shape
    rays = pixel_rays(K, w, h)  # [3, HW], z = 1
    X = rays * depth.reshape(1, -1)
    c2w = torch.linalg.inv(w2c)
    Xw = c2w[:3, :3] @ X + c2w[:3, 3:]
    Xs = src_w2c[:3, :3] @ Xw + src_w2c[:3, 3:]
    u, v, z = _project(Xs, src_K)
    sh, sw = src.shape[:2]
    valid = (z > 1e-3) & (u >= 0) & (u <= sw) & (v >= 0) & (v <= sh)
    grid = torch.stack([2 * u / sw - 1, 2 * v / sh - 1], -1).reshape(1, h, w, 2)
    warped = F.grid_sample(src.permute(2, 0, 1)[None], grid, mode="bilinear",
                           padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
    return warped, valid.reshape(h, w)


def ncc_map(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Windowed normalised cross-correlation of two grey images [H, W] -> [H, W] in [-1, 1]."""
    a, b = a[None, None], b[None, None]
    mu_a, mu_b = _box(a, window), _box(b, window)
    var_a = (_box(a * a, window) - mu_a ** 2).clamp_min(1e-6)
    var_b = (_box(b * b, window) - mu_b ** 2).clamp_min(1e-6)
    cov = _box(a * b, window) - mu_a * mu_b
    return (cov / (var_a * var_b).sqrt())[0, 0].clamp(-1, 1)


def multiview_loss(depth: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor, K, w2c,
                   neighbours: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   window: int = 7, min_alpha: float = 0.5, min_texture: float = 0.01
                   ) -> torch.Tensor:
    """Mean (1 - NCC) / 2 between photo `image` [H, W, 3] and each of its `neighbours` (photo, K,
    w2c) warped into it through the rendered `depth` [H, W], taking per pixel the best neighbour.
    Only pixels the rendering covers (`alpha` [H, W] >= min_alpha), that some neighbour sees, and
    whose window has texture (grey-level std >= `min_texture`: NCC is noise on flat patches) count."""
    ref = _gray(image)
    mu = _box(ref[None, None], window)[0, 0]
    textured = (_box(ref[None, None] ** 2, window)[0, 0] - mu ** 2).clamp_min(0).sqrt() >= min_texture
    costs = []
    for src, src_K, src_w2c in neighbours:
        warped, valid = warp_from(src, depth, K, w2c, src_K, src_w2c)
        cost = (1 - ncc_map(ref, _gray(warped), window)) / 2
        costs.append(torch.where(valid, cost, torch.full_like(cost, float("inf"))))
    if not costs:
        return depth.sum() * 0
    best = torch.stack(costs).min(0).values
    mask = torch.isfinite(best) & (alpha >= min_alpha) & textured
    if not bool(mask.any()):
        return depth.sum() * 0
    return best[mask].mean()
