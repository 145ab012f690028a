"""Re-projecting training photos into a new view (the photo ceiling of sparse views)."""

from __future__ import annotations

import numpy as np

from aerosplat.reprojection import SourcePhoto, ceiling_scores, fit_gain_offset, reproject

W, H, F, HEIGHT = 64, 48, 60.0, 40.0
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])


def nadir(x: float, y: float, z: float = HEIGHT) -> np.ndarray:
    """World-to-camera of a camera at (x, y, z) looking straight down (image x east, image y south)."""
    R = np.diag([1.0, -1.0, -1.0])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ np.array([x, y, z])
    return w2c


def texture(x, y):
    """Smooth ground colours (a few metres per period), so bilinear sampling is nearly exact."""
    return np.stack([0.5 + 0.4 * np.sin(x / 3.0), 0.5 + 0.4 * np.cos(y / 4.0),
                     0.5 + 0.3 * np.sin((x + y) / 5.0)], -1)


def photograph(w2c: np.ndarray, tex=texture) -> np.ndarray:
    """A nadir photo of the textured plane z = 0."""
    v, u = np.mgrid[0:H, 0:W] + 0.5
    c = -w2c[:3, :3].T @ w2c[:3, 3]
    x = c[0] + (u - K[0, 2]) / F * c[2]
    y = c[1] - (v - K[1, 2]) / F * c[2]
    return tex(x, y)


def test_a_view_between_two_photos_is_their_pixels_and_the_rest_is_uncovered():
    held = nadir(10.0, 0.0)
    sources = [SourcePhoto(photograph(nadir(x, 0.0)), K, nadir(x, 0.0)) for x in (0.0, 14.0)]
    depth = np.full((H, W), HEIGHT)
    rep = reproject(depth, K, held, sources)
    photo = photograph(held)
    # The footprint is 42.7 m wide: x in [-11.3, 31.3] m at the held view; the sources reach
    # [-21.3, 21.3] and [-7.3, 35.3] m, so every pixel is seen, those in [-7.3, 21.3] m twice.
    assert (rep.count >= 1).all()
    x = 10.0 + (np.arange(W) + 0.5 - W / 2) / F * HEIGHT
    both = (x > -7.33) & (x < 21.33)
    assert ((rep.count == 2) == both[None, :]).all()
    scores = ceiling_scores(photo, photo, rep)
    assert scores["covered_share"] == 1.0 and scores["uncovered_error_share"] == 0.0
    assert scores["nearest_photo_psnr_covered"] > 40  # the same ground, sampled bilinearly
    assert scores["mean_photos_psnr_covered"] > 40
    # A view off the sources' strip sees ground no source shows: NaN colour, count 0 there.
    off = reproject(depth, K, nadir(10.0, 30.0), sources)
    y = 30.0 - (np.arange(H) + 0.5 - H / 2) / F * HEIGHT
    outside = np.abs(y) > H / 2 / F * HEIGHT
    assert (off.count[outside] == 0).all() and np.isnan(off.nearest[outside]).all()
    assert (off.count[~outside] > 0).all()


def test_a_source_whose_depth_shows_something_nearer_does_not_see_the_point():
    held = nadir(0.0, 0.0)
    photo = photograph(held)
    blocked = np.full((H, W), HEIGHT)
    blocked[:, : W // 2] = HEIGHT / 2  # a roof in front of the ground on the left half
    rep = reproject(np.full((H, W), HEIGHT), K, held, [SourcePhoto(photo, K, held, blocked)])
    assert (rep.count[:, : W // 2] == 0).all() and (rep.count[:, W // 2 + 1:] == 1).all()
    # Unknown source depth (NaN) hides nothing.
    unknown = SourcePhoto(photo, K, held, np.full((H, W), np.nan))
    assert (reproject(np.full((H, W), HEIGHT), K, held, [unknown]).count == 1).all()


def test_the_ceiling_separates_what_no_photo_shows_and_what_exposure_explains():
    held = nadir(10.0, 0.0)
    sources = [SourcePhoto(photograph(nadir(0.0, 0.0)) * 0.8 + 0.05, K, nadir(0.0, 0.0))]
    rep = reproject(np.full((H, W), HEIGHT), K, held, sources)
    photo = photograph(held)
    render = photo.copy()
    render[rep.count == 0] = 0.0  # a model that gets everything right but what no photo shows
    s = ceiling_scores(render, photo, rep)
    assert 0.6 < s["covered_share"] < 0.9
    assert s["render_psnr_covered"] > 60 and s["render_psnr_uncovered"] < 10
    assert s["uncovered_error_share"] == 1.0
    # The source's exposure differs: raw re-projection is poor, the fitted gain/offset undoes it.
    assert s["nearest_photo_psnr_covered"] < 30 < 40 < s["nearest_photo_exposure_fit_psnr_covered"]


def test_gain_offset_fit_recovers_an_affine_colour_change():
    src = np.random.default_rng(0).random((500, 3))
    gain, offset = fit_gain_offset(src, src * [0.8, 1.1, 0.9] + [0.05, -0.02, 0.0])
    assert np.allclose(gain, [0.8, 1.1, 0.9]) and np.allclose(offset, [0.05, -0.02, 0.0], atol=1e-12)
