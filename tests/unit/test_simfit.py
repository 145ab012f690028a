import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aerosplat.simfit import Similarity, fit_similarity_robust, umeyama


def _random_sim(rng):
    return Similarity(float(rng.uniform(0.1, 20)), Rotation.random(random_state=rng.integers(1e9)).as_matrix(),
                      rng.normal(0, 100, 3))


def test_umeyama_exact_recovery():
    rng = np.random.default_rng(1)
    sim = _random_sim(rng)
    src = rng.normal(0, 5, (10, 3))
    est = umeyama(src, sim.apply(src))
    assert est.scale == pytest.approx(sim.scale, rel=1e-9)
    assert np.allclose(est.R, sim.R, atol=1e-9) and np.allclose(est.t, sim.t, atol=1e-6)
    assert np.allclose(est.inverse().apply(sim.apply(src)), src, atol=1e-8)


def test_robust_fit_ignores_a_wild_gps_fix_and_averages_noise():
    rng = np.random.default_rng(7)
    sim = _random_sim(rng)
    # 30 camera centres of a lawnmower flight in the SfM frame (arbitrary scale).
    xs, ys = np.meshgrid(np.linspace(-1, 1, 6), np.linspace(-1, 1, 5))
    src = np.column_stack([xs.ravel(), ys.ravel(), rng.normal(0, 0.02, 30)])
    truth = sim.apply(src)
    sigma = np.array([2.0, 2.0, 3.0])
    noisy = truth + rng.normal(0, 1, truth.shape) * sigma
    noisy[4] += [80.0, -60.0, 40.0]  # one wild fix
    fit = fit_similarity_robust(src, noisy, np.broadcast_to(sigma, noisy.shape))
    assert not fit.inliers[4] and fit.inliers.sum() >= 27
    err = np.linalg.norm(fit.sim.apply(src) - truth, axis=1)
    # The fitted centres are far closer to the truth than the raw GPS (averaging), and the
    # outlier has no pull: a plain least-squares fit is visibly worse.
    raw = np.linalg.norm(np.delete(noisy - truth, 4, axis=0), axis=1)
    assert np.sqrt(np.mean(err ** 2)) < 0.45 * np.sqrt(np.mean(raw ** 2))
    plain = umeyama(src, noisy)
    plain_err = np.linalg.norm(plain.apply(src) - truth, axis=1)
    assert np.sqrt(np.mean(err ** 2)) < 0.5 * np.sqrt(np.mean(plain_err ** 2))


def test_needs_three_points():
    with pytest.raises(ValueError):
        fit_similarity_robust(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 3)))
