"""Backdrop seeds: ground points where SfM found none, on the ground, coloured from the photos."""

import numpy as np

from aerosplat.backdrop import backdrop_points, footprint_bounds, ground_height
from aerosplat.train import Camera

W, H, F = 80, 60, 60.0


def nadir(x, y, z):
    R = np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1.0]])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ np.array([x, y, z])
    return Camera(f"c{x}_{y}", np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]]), w2c, W, H)


def sloped_ground_points(rng, hole):
    """SfM-like points on the ground z = 0.1 x over [-20, 20]^2, none inside `hole` (water)."""
    xy = rng.uniform(-20, 20, (4000, 2))
    inside = (np.abs(xy[:, 0] - hole[0]) < hole[2]) & (np.abs(xy[:, 1] - hole[1]) < hole[2])
    xy = xy[~inside]
    return np.concatenate([xy, 0.1 * xy[:, :1]], 1)


def test_ground_height_follows_the_slope_and_ignores_a_tree():
    rng = np.random.default_rng(0)
    pts = sloped_ground_points(rng, (100, 100, 1))
    tree = np.array([[0.0, 0.0, 12.0], [0.3, 0.2, 11.0], [-0.2, 0.1, 12.5]])
    pts = np.concatenate([pts, tree])
    z = ground_height(np.array([[0.0, 0.0], [10.0, 5.0], [-15.0, -3.0]]), pts)
    assert np.allclose(z, [0.0, 1.0, -1.5], atol=0.25), z


def test_footprint_covers_what_the_cameras_see():
    cams = [nadir(-5, 0, 30), nadir(5, 0, 30)]
    b = footprint_bounds(cams, 0.0, margin=0.0)
    # Half-footprint at 30 m: 30 * (W/2) / F = 20 m across, 15 m along y.
    assert np.allclose(b, [-25, -15, 25, 15], atol=1e-6), b
    grown = footprint_bounds(cams, 0.0, margin=0.1)
    assert np.allclose(grown, [-30, -18, 30, 18], atol=1e-6), grown


def test_backdrop_fills_the_hole_and_only_the_hole():
    rng = np.random.default_rng(1)
    hole = (3.0, -2.0, 4.0)  # centre x, y and half size: an 8 m pond
    pts = sloped_ground_points(rng, hole)
    rgb = np.full((len(pts), 3), 200.0)
    cams = [nadir(-4, 0, 30), nadir(4, 0, 30)]
    # Photos: left half red, right half blue (in image x, which is world x for these cameras).
    img = np.zeros((H, W, 3), np.float32)
    img[:, : W // 2, 0] = 1.0
    img[:, W // 2:, 2] = 1.0
    spacing = 1.0
    xyz, col = backdrop_points(pts, rgb, cams, [img, img], spacing, margin=0.1)
    assert len(xyz) > 0
    # Every new point is at least one spacing (in plan) from every SfM point ...
    d = np.min(np.linalg.norm(xyz[:, None, :2] - pts[None, :, :2], axis=-1), axis=1)
    assert d.min() > spacing
    # ... the pond's interior is covered at the grid spacing ...
    inner = (np.abs(xyz[:, 0] - hole[0]) < hole[2] - 1.5) & (np.abs(xyz[:, 1] - hole[1]) < hole[2] - 1.5)
    assert inner.sum() >= (2 * (hole[2] - 1.5) / spacing) ** 2 * 0.8
    # ... on the ground (z = 0.1 x; the rim points a low quantile is taken of span 0.8 m of slope) ...
    assert np.allclose(xyz[inner, 2], 0.1 * xyz[inner, 0], atol=0.5)
    # ... coloured from the photo that sees it most centrally: x < -4 lies left of camera (-4, 0).
    left = inner & (xyz[:, 0] < -4.5)
    right = inner & (xyz[:, 0] > 4.5)
    assert right.any()
    assert np.all(col[right] == [0, 0, 255])
    assert not left.any() or np.all(col[left] == [255, 0, 0])
    # The ring beyond the SfM points ([-20, 20]) is filled too; past the photos' footprints
    # (|x| > 24 on flat ground, 25.6 on this slope) and within the margin (|x| < 28.8) with the nearest SfM colour, as no photo sees it.
    unseen = np.abs(xyz[:, 0]) > 26
    assert np.abs(xyz[:, 0]).max() < 28.8 + spacing
    assert unseen.any() and np.all(col[unseen] == 200.0)


def test_no_backdrop_without_spacing_or_points():
    cams = [nadir(0, 0, 30)]
    img = np.zeros((H, W, 3), np.float32)
    assert len(backdrop_points(np.zeros((2, 3)), np.zeros((2, 3)), cams, [img], 1.0)[0]) == 0
    pts = np.random.default_rng(0).uniform(-5, 5, (50, 3))
    assert len(backdrop_points(pts, np.zeros((50, 3)), cams, [img], 0.0)[0]) == 0
