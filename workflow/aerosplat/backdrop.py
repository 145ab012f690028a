"""Seed points for the ground the SfM points leave empty: water, shadows, the edges of the flight.

Why: a Gaussian splat model only has Gaussians where it was seeded or densified. SfM finds no points
on water, in deep shadow or near the edges of a flight, and the optimiser cannot grow Gaussians
into empty space, so a view that sees more of such ground than the training photos did renders
black there. The backdrop is a grid of points on the ground surface (a height field interpolated
from the SfM points) covering every training photo's footprint and a margin around it, wherever
no SfM point is near. Each takes the colour of the training photo that sees it most directly, or
of its nearest SfM point where none does. They train like any other Gaussian.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def ground_height(xy: np.ndarray, points: np.ndarray, k: int = 16) -> np.ndarray:
    """Height of the ground under `xy` [M, 2]: a low quantile (25 %) of the k nearest SfM points'
    heights, so trees and roofs pull it up less than the median would."""
    tree = cKDTree(points[:, :2])
    k = min(k, len(points))
    _, idx = tree.query(xy, k=k)
    idx = np.asarray(idx).reshape(len(xy), -1)
    return np.quantile(points[idx, 2], 0.25, axis=1)


def footprint_bounds(cameras, ground_z: float, margin: float) -> np.ndarray:
    """[xmin, ymin, xmax, ymax] of the photos' corner rays on the plane z = ground_z, grown by
    `margin` (a fraction of the size). Rays that miss the plane (obliques above the horizon) are
    left out."""
    corners = []
    for cam in cameras:
        R, t = cam.w2c[:3, :3], cam.w2c[:3, 3]
        centre = -R.T @ t
        Kinv = np.linalg.inv(cam.K)
        for u, v in ((0, 0), (cam.width, 0), (0, cam.height), (cam.width, cam.height)):
            ray = R.T @ (Kinv @ np.array([u, v, 1.0]))
            if ray[2] >= -1e-6:
                continue
            s = (ground_z - centre[2]) / ray[2]
            corners.append(centre + s * ray)
        corners.append(centre)
    c = np.array(corners)[:, :2]
    lo, hi = c.min(0), c.max(0)
    grow = margin * (hi - lo)
    return np.concatenate([lo - grow, hi + grow])


def photo_colours(xyz: np.ndarray, cameras, images) -> tuple[np.ndarray, np.ndarray]:
    """Colour [M, 3] (0-255) of each point in the training photo that sees it closest to its centre,
    and whether any photo sees it [M]."""
    best = np.full(len(xyz), np.inf)
    rgb = np.zeros((len(xyz), 3))
    hom = np.concatenate([xyz, np.ones((len(xyz), 1))], 1)
    for cam, img in zip(cameras, images):
        arr = np.asarray(img)
        h, w = arr.shape[:2]
        pc = hom @ cam.w2c[:3].T
        z = pc[:, 2]
        uv = pc[:, :2] @ cam.K[:2, :2].T / np.maximum(z, 1e-9)[:, None] + cam.K[:2, 2]
        u = uv[:, 0] * w / cam.width
        v = uv[:, 1] * h / cam.height
        inside = (z > 0.01) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        off = np.hypot(u / w - 0.5, v / h - 0.5)
        better = inside & (off < best)
        best[better] = off[better]
        rgb[better] = arr[v[better].astype(int), u[better].astype(int), :3] * 255.0
    return rgb, np.isfinite(best)


def backdrop_points(xyz: np.ndarray, rgb: np.ndarray, cameras, images, spacing: float,
                    margin: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Grid points (spacing in metres) on the ground height field over the training photos'
    footprints grown by `margin`, only where no seed point lies within one spacing in plan view.
    `images` are the training photos as [H, W, 3] arrays in [0, 1] (any resolution)."""
    if len(xyz) < 4 or spacing <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    ground = float(np.median(xyz[:, 2]))
    b = footprint_bounds(cameras, ground, margin)
    gx = np.arange(b[0], b[2] + spacing, spacing)
    gy = np.arange(b[1], b[3] + spacing, spacing)
    grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    dist, nearest = cKDTree(xyz[:, :2]).query(grid)
    grid = grid[dist > spacing]
    nearest = nearest[dist > spacing]
    if len(grid) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    pts = np.concatenate([grid, ground_height(grid, xyz)[:, None]], 1)
    colours, seen = photo_colours(pts, cameras, images)
    colours[~seen] = rgb[nearest[~seen]]
    return pts.astype(np.float32), colours.astype(np.float32)
