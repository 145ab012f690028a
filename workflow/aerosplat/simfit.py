"""Robust 3D similarity fits (scale, rotation, translation) between point sets.

Georeferencing maps the SfM frame onto GPS/GCP positions. Consumer GPS has
metre-level noise and the occasional wild fix, so the fit is RANSAC over minimal
samples (Umeyama) followed by a weighted, robust-loss least squares refinement
on all points, where each point carries its own horizontal and vertical sigma.
One bad fix therefore neither pulls the model nor decides the inlier set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class Similarity:
    """y = scale * R @ x + t."""

    scale: float
    R: np.ndarray  # [3, 3]
    t: np.ndarray  # [3]

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.scale * x @ self.R.T + self.t

    def inverse(self) -> "Similarity":
        Rinv = self.R.T
        return Similarity(1.0 / self.scale, Rinv, -(Rinv @ self.t) / self.scale)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.R
        m[:3, 3] = self.t
        return m

    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "rotation": self.R.tolist(), "translation": self.t.tolist()}

    @staticmethod
    def from_dict(d: dict) -> "Similarity":
        return Similarity(float(d["scale"]), np.asarray(d["rotation"], float), np.asarray(d["translation"], float))


@dataclass
class FitResult:
    sim: Similarity
    inliers: np.ndarray  # [N] bool
    residuals: np.ndarray  # [N, 3] target - fitted, in target units
    info: dict = field(default_factory=dict)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Similarity:
    """Closed-form least-squares similarity src -> dst (Umeyama 1991), optionally weighted."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (w * (xs ** 2).sum(axis=1)).sum()
    scale = float(np.trace(np.diag(S) @ D) / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * R @ mu_s
    return Similarity(scale, R, t)


def _normalised_residuals(sim: Similarity, src, dst, sigma):
    return (dst - sim.apply(src)) / sigma


def fit_similarity_robust(
    src: np.ndarray,
    dst: np.ndarray,
    sigma: np.ndarray,
    *,
    ransac_threshold: float = 3.0,
    ransac_iterations: int = 2000,
    seed: int = 0,
    min_sample_spread: float = 1e-3,
) -> FitResult:
    """Fit dst ~ s R src + t robustly.

    Args:
        src: [N, 3] points in the source frame (e.g. SfM camera centres).
        dst: [N, 3] the same points in the target frame (e.g. GPS in the local frame).
        sigma: [N, 3] per-axis standard deviations of dst (e.g. [2, 2, 3] for GPS).
        ransac_threshold: inlier threshold on the sigma-normalised residual norm
            divided by sqrt(3) (so 3.0 ~ "within three sigma").
    """
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    sigma = np.broadcast_to(np.asarray(sigma, float), dst.shape).copy()
    n = len(src)
    if n < 3:
        raise ValueError(f"a similarity fit needs at least 3 correspondences, got {n}")
    rng = np.random.default_rng(seed)
    weights = 1.0 / (sigma ** 2).mean(axis=1)

    def score(sim):
        r = _normalised_residuals(sim, src, dst, sigma)
        e = np.linalg.norm(r, axis=1) / np.sqrt(3.0)
        inl = e < ransac_threshold
        # MSAC: truncated quadratic cost.
        return np.minimum(e, ransac_threshold) ** 2, inl

    best_cost, best_inl = np.inf, np.ones(n, bool)
    best_sim = umeyama(src, dst, weights)
    if n > 3:
        for _ in range(ransac_iterations if n > 4 else 200):
            idx = rng.choice(n, 3, replace=False)
            s = src[idx]
            # Skip near-collinear samples: the rotation is undetermined.
            if np.linalg.norm(np.cross(s[1] - s[0], s[2] - s[0])) < min_sample_spread * max(
                np.ptp(src, axis=0).max() ** 2, 1e-12):
                continue
            sim = umeyama(s, dst[idx])
            cost, inl = score(sim)
            c = cost.sum()
            if c < best_cost and inl.sum() >= 3:
                best_cost, best_inl, best_sim = c, inl, sim
        best_sim = umeyama(src[best_inl], dst[best_inl], weights[best_inl])
        _, best_inl = score(best_sim)
        if best_inl.sum() < 3:
            best_inl = np.ones(n, bool)

    # Robust weighted refinement on all points (soft-L1 loss keeps outliers weak).
    rv0 = Rotation.from_matrix(best_sim.R).as_rotvec()
    x0 = np.concatenate([rv0, [np.log(best_sim.scale)], best_sim.t])

    def unpack(x):
        return Similarity(float(np.exp(x[3])), Rotation.from_rotvec(x[:3]).as_matrix(), x[4:7])

    # Use only RANSAC inliers in the refinement so that gross outliers have no pull at all.
    sel = best_inl

    def fun_sel(x):
        return _normalised_residuals(unpack(x), src[sel], dst[sel], sigma[sel]).ravel()

    res = least_squares(fun_sel, x0, loss="soft_l1", f_scale=2.0, x_scale="jac")
    sim = unpack(res.x)
    _, inliers = score(sim)
    resid = dst - sim.apply(src)
    return FitResult(sim, inliers, resid, {"ransac_inliers": int(best_inl.sum()), "cost": float(res.cost)})
