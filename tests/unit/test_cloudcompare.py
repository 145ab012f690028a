"""Cloud comparison: the GPS offset is removed, then precision and recall score only the common area."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import CRS

from aerosplat.cloudcompare import (common_area_mask, dsm_median_difference, fit_translation, precision_recall,
                                    to_crs)
from aerosplat.errors import InputError

SPACING_M = 0.1
SIDE_M = 40.0
SHIFT = np.array([1.5, -0.8, 0.4])  # what consumer GPS might put between two flights


def _surface(rng, side=SIDE_M, spacing=SPACING_M):
    """Points [N, 3] on rolling ground with two box buildings, one per spacing² on average."""
    xy = rng.uniform(0, side, (int(side * side / spacing**2), 2))
    z = 1.2 * np.sin(xy[:, 0] / 3.0) * np.cos(xy[:, 1] / 4.0) + 0.05 * xy[:, 0]
    z += np.where((np.abs(xy[:, 0] - 12) < 4) & (np.abs(xy[:, 1] - 25) < 6), 3.0, 0.0)
    z += np.where((np.abs(xy[:, 0] - 28) < 5) & (np.abs(xy[:, 1] - 10) < 3), 5.0, 0.0)
    return np.column_stack([xy, z]) + rng.normal(0, 0.01, (len(xy), 3))


@pytest.fixture(scope="module")
def clouds():
    """(ours, ref): two independent samplings of one surface, ours shifted by SHIFT."""
    rng = np.random.default_rng(0)
    ref = _surface(rng)
    ours = _surface(rng) + SHIFT
    return ours, ref


def test_translation_is_recovered_and_alignment_restores_the_fscore(clouds):
    ours, ref = clouds
    t = fit_translation(ours, ref, max_dist_m=3.0)
    # Measured: (-1.4995, 0.8004, -0.3999), i.e. within 1 mm of -SHIFT.
    assert np.abs(t + SHIFT).max() < 0.05, t
    tau = 2 * SPACING_M
    before = precision_recall(ours, ref, tau)
    after = precision_recall(ours + t, ref, tau)
    # Measured: F 0.343 before, 1.000 after.
    assert before["fscore"] < 0.5 and after["fscore"] > 0.95, (before, after)
    assert after["tau_m"] == tau and after["n_ours"] > 0.9 * len(ours) and after["n_ref"] > 0.9 * len(ref)


def test_floaters_cost_precision_and_holes_cost_recall_but_a_smaller_extent_does_not(clouds):
    ours, ref = clouds
    ours = ours - SHIFT  # aligned
    tau = 2 * SPACING_M
    full = precision_recall(ours, ref, tau)
    rng = np.random.default_rng(1)

    floaters = ours[rng.choice(len(ours), len(ours) // 10, replace=False)] + [0, 0, 1.0]
    floaters[:, 2] += rng.uniform(0, 4, len(floaters))
    noisy = precision_recall(np.concatenate([ours, floaters]), ref, tau)
    assert noisy["precision"] < full["precision"] - 0.05 and noisy["recall"] == pytest.approx(full["recall"])

    hole = (np.abs(ours[:, 0] - 20) < 3) & (np.abs(ours[:, 1] - 20) < 3)  # a 6 m x 6 m gap in the middle
    holed = precision_recall(ours[~hole], ref, tau)
    assert holed["recall"] < full["recall"] - 0.015 and holed["precision"] == pytest.approx(full["precision"])

    shorter = precision_recall(ours[ours[:, 0] < 30], ref, tau)  # a flight that stopped at x = 30 m
    assert shorter["recall"] > full["recall"] - 0.005 and shorter["n_ref"] < 0.8 * full["n_ref"]


def test_common_area_counts_enclosed_holes_as_inside():
    g = np.stack(np.meshgrid(np.arange(0, 20, 0.2), np.arange(0, 20, 0.2)), -1).reshape(-1, 2)
    ring = g[np.abs(g - 10).max(axis=1) > 4]  # a square with an 8 m hole
    half = g[g[:, 0] < 10]
    inside = common_area_mask(g, ring, 1.0)
    assert inside[np.abs(g - 10).max(axis=1) < 3].all()  # the hole is scored
    assert not inside[(g[:, 0] < 1) | (g[:, 0] >= 19)].any()  # the outer ring of cells is not
    assert not common_area_mask(g, half, 1.0)[g[:, 0] > 10].any()  # nor where the other cloud never went
    assert common_area_mask(g, np.zeros((0, 2)), 1.0).sum() == 0


def test_clouds_without_common_area_and_bad_input():
    a = np.random.default_rng(0).uniform(0, 10, (500, 3))
    far = precision_recall(a, a + [100, 0, 0], 0.2)
    assert far["n_ours"] == far["n_ref"] == 0 and np.isnan(far["fscore"])
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        precision_recall(a[:, :2], a, 0.2)
    with pytest.raises(InputError, match="tau_m"):
        precision_recall(a, a, 0.0)
    with pytest.raises(InputError, match="max_dist_m"):
        fit_translation(a, a, max_dist_m=0)


def test_dsm_difference_is_median_and_nmad_over_cells_valid_in_both():
    rng = np.random.default_rng(0)
    b = rng.uniform(400, 420, (200, 300))
    a = b + 0.3 + rng.normal(0, 0.05, b.shape)
    a[:20] = np.nan
    b[:, :30] = -9999.0
    a[50, 50] = 1000.0  # a spike moves neither statistic
    out = dsm_median_difference(a, b, nodata=-9999.0)
    assert out["n"] == 180 * 270
    assert out["median"] == pytest.approx(0.3, abs=0.005) and out["nmad"] == pytest.approx(0.05, rel=0.05)
    empty = dsm_median_difference(np.full((3, 3), np.nan), np.zeros((3, 3)))
    assert empty["n"] == 0 and np.isnan(empty["median"])
    with pytest.raises(InputError, match="different grids"):
        dsm_median_difference(a, b[:, :10])


def test_a_reference_in_another_crs_is_moved_into_ours_and_one_in_ours_is_left_alone():
    # brighton_beach's reference cloud: UTM 15N; the same points in the neighbouring zone 16N.
    xyz = np.array([[576661.98, 5188114.06, 156.06], [576768.25, 5188211.70, 168.92]])
    same, moved = to_crs(xyz, "EPSG:32615", CRS.from_epsg(32615).to_wkt())
    assert not moved and np.array_equal(same, xyz)
    east, moved = to_crs(xyz, 32615, "EPSG:32616")
    assert moved and np.all(np.abs(east[:, 0] - xyz[:, 0]) > 100_000)  # another zone's central meridian
    np.testing.assert_array_equal(east[:, 2], xyz[:, 2])  # horizontal CRSs on one datum: z as it was
    # A change of projection is no translation: the 144 m between the points stretch by the two
    # zones' scale factors (measured +0.247 m), which a translation could not remove.
    assert np.linalg.norm(np.diff(east[:, :2], axis=0)) - np.linalg.norm(np.diff(xyz[:, :2], axis=0)) > 0.1
    back, _ = to_crs(east, "EPSG:32616", "EPSG:32615")
    np.testing.assert_allclose(back, xyz, atol=1e-6)
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        to_crs(xyz[:, :2], 32615, 32616)
