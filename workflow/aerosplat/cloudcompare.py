"""Comparing our point cloud (or DSM) with a reference one, the way the Tanks and Temples benchmark does.

Tanks and Temples (Knapitsch et al. 2017) scores a reconstruction by two distances at a threshold
tau: precision, the share of our points within tau of the reference (are we right?), and recall,
the share of reference points within tau of ours (are we complete?), and their harmonic mean, the
F-score. Two of its habits carry over:

- **Align first.** Our cloud and the reference (another photogrammetric run, or a survey) both rest
  on consumer GPS, which is off by metres as a whole; that offset says nothing about the
  reconstruction. `fit_translation` removes the best-fit translation (translation only: scale and
  rotation errors are reconstruction errors and must stay in the score).
- **Score only where both looked.** A flight that covers less ground is not less complete inside
  what it covers. `common_area_mask` keeps the ground-plane cells both clouds occupy, counting a
  hole inside a cloud's footprint (a roof it failed to reconstruct) as inside: holes are what
  recall is for.

DSMs on one grid compare by the median and NMAD of their difference (`dsm_median_difference`),
robust to the edges and the odd spike. A reference made in another CRS is moved into ours first
(`to_crs`): a translation cannot absorb a change of projection.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import InputError

NMAD_SCALE = 1.4826
"""NMAD = 1.4826 x median absolute deviation: equals the standard deviation for Gaussian errors."""


def _points(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise InputError(f"{what} must be an [N, 3] array of points, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{what} has {int((~np.isfinite(a)).any(axis=1).sum())} non-finite point(s)")
    return a


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return a if len(a) <= n else a[rng.choice(len(a), n, replace=False)]


def _normals(pts: np.ndarray, tree: cKDTree, idx: np.ndarray, k: int = 12) -> np.ndarray:
    """Unit normals [M, 3] at `pts[idx]`: the least-variance axis of each point's k neighbours."""
    _, nb = tree.query(pts[idx], k=min(k, len(pts)))
    patch = pts[nb] - pts[nb].mean(axis=1, keepdims=True)  # [M, k, 3]
    _, vectors = np.linalg.eigh(np.einsum("mki,mkj->mij", patch, patch))
    return vectors[:, :, 0]  # eigenvalues ascending: column 0 is the normal


def to_crs(xyz: np.ndarray, src_crs, dst_crs) -> tuple[np.ndarray, bool]:
    """(points [N, 3] in `dst_crs`, whether they were reprojected) from points in `src_crs`.

    CRSs are anything pyproj reads (EPSG code, WKT, CRS). Equal CRSs return the points untouched:
    a needless round trip through pyproj would only add its rounding. z goes through pyproj too (it
    stays as it is between two horizontal CRSs on one datum).
    """
    xyz = _points(xyz, "the points to reproject")
    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if src.equals(dst, ignore_axis_order=True):
        return xyz, False
    x, y, z = Transformer.from_crs(src, dst, always_xy=True).transform(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    out = np.column_stack([x, y, z])
    if not np.isfinite(out).all():
        raise InputError(f"{int((~np.isfinite(out)).any(axis=1).sum())} point(s) fall outside what "
                         f"{dst.name} can hold when moved from {src.name}")
    return out, True


def fit_translation(ours: np.ndarray, ref: np.ndarray, *, max_dist_m: float, iterations: int = 30,
                    trim: float = 0.8, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """Translation [3] that, added to `ours`, best fits it onto `ref` (trimmed point-to-plane ICP).

    `max_dist_m` bounds a correspondence: at least the expected offset (a few metres for consumer
    GPS). Each iteration pairs a random `sample` of our points with their nearest reference points,
    keeps the `trim` share of closest pairs within the bound and solves the translation that
    zeroes their distances to the reference's tangent planes; it stops early when the step is under
    0.1 mm. A direction the surface does not constrain (along a flat plane) stays near zero.
    """
    ours, ref = _points(ours, "our cloud"), _points(ref, "the reference cloud")
    if len(ours) < 3 or len(ref) < 3:
        raise InputError(f"fitting a translation needs at least 3 points in each cloud, got {len(ours)} and {len(ref)}")
    if not max_dist_m > 0:
        raise InputError(f"max_dist_m must be positive, got {max_dist_m!r}")
    rng = np.random.default_rng(seed)
    src = _subsample(ours, sample, rng)
    dst = _subsample(ref, 20 * sample, rng)
    tree = cKDTree(dst)
    normal_cache = np.full((len(dst), 3), np.nan)
    t = np.zeros(3)
    for _ in range(iterations):
        dist, nn = tree.query(src + t, distance_upper_bound=max_dist_m)
        ok = np.isfinite(dist)
        if ok.sum() < 3:
            break
        keep = np.flatnonzero(ok)
        keep = keep[dist[keep] <= np.quantile(dist[keep], trim)]
        q = nn[keep]
        missing = np.unique(q[np.isnan(normal_cache[q, 0])])
        if len(missing):
            normal_cache[missing] = _normals(dst, tree, missing)
        n = normal_cache[q]
        r = np.einsum("ij,ij->i", n, dst[q] - (src[keep] + t))  # signed plane distances to close
        a = n.T @ n
        step = np.linalg.solve(a + 1e-6 * np.trace(a) * np.eye(3), n.T @ r)
        t = t + step
        if np.linalg.norm(step) < 1e-4:
            break
    return t


def common_area_mask(xy: np.ndarray, other_xy: np.ndarray, cell_m: float) -> np.ndarray:
    """Mask [N] of the points `xy` [N, 2+] that lie in ground-plane cells both clouds occupy.

    Each cloud's footprint is its occupied `cell_m` cells with enclosed holes filled (a hole is
    unreconstructed surface, to be scored); the common area is the two footprints' intersection
    less its outermost ring of cells, where a footprint ends partway through a cell.
    """
    xy, other = np.asarray(xy, np.float64)[:, :2], np.asarray(other_xy, np.float64)[:, :2]
    if not cell_m > 0:
        raise InputError(f"cell_m must be positive, got {cell_m!r}")
    if len(xy) == 0 or len(other) == 0:
        return np.zeros(len(xy), bool)
    origin = np.minimum(xy.min(axis=0), other.min(axis=0))
    ij = np.floor((xy - origin) / cell_m).astype(np.int64)
    other_ij = np.floor((other - origin) / cell_m).astype(np.int64)
    shape = tuple(np.maximum(ij.max(axis=0), other_ij.max(axis=0)) + 1)
    if shape[0] * shape[1] > 400_000_000:
        raise InputError(f"common area grid of {shape[0]} x {shape[1]} cells: cell_m={cell_m} is too small for "
                         "clouds this far apart (align them first)")

    def footprint(cells: np.ndarray) -> np.ndarray:
        grid = np.zeros(shape, bool)
        grid[cells[:, 0], cells[:, 1]] = True
        return ndimage.binary_fill_holes(grid)

    common = ndimage.binary_erosion(footprint(ij) & footprint(other_ij), border_value=0)
    return common[ij[:, 0], ij[:, 1]]


def precision_recall(ours: np.ndarray, ref: np.ndarray, tau_m: float, *, cell_m: float | None = None) -> dict:
    """Tanks-and-Temples precision, recall and F-score at `tau_m` over the common area.

    Precision: share of our points in the common area within `tau_m` of any reference point;
    recall: the converse. `cell_m` (default 5 x tau, at least several point spacings so that a
    footprint has no gaps) is the common area's grid. Align the clouds first (`fit_translation`).
    Returns precision, recall, fscore, tau_m, n_ours, n_ref (the points scored); NaN when the
    clouds share no area.
    """
    ours, ref = _points(ours, "our cloud"), _points(ref, "the reference cloud")
    if not tau_m > 0:
        raise InputError(f"tau_m must be positive, got {tau_m!r}")
    cell_m = 5.0 * tau_m if cell_m is None else float(cell_m)
    ours_in = ours[common_area_mask(ours, ref, cell_m)]
    ref_in = ref[common_area_mask(ref, ours, cell_m)]
    result = {"precision": float("nan"), "recall": float("nan"), "fscore": float("nan"), "tau_m": float(tau_m),
              "n_ours": int(len(ours_in)), "n_ref": int(len(ref_in))}
    if len(ours_in) == 0 or len(ref_in) == 0:
        return result
    # Distances to the whole other cloud: a point at the common area's edge keeps its true neighbour.
    d_ours, _ = cKDTree(ref).query(ours_in, distance_upper_bound=tau_m)
    d_ref, _ = cKDTree(ours).query(ref_in, distance_upper_bound=tau_m)
    precision = float(np.mean(d_ours <= tau_m))
    recall = float(np.mean(d_ref <= tau_m))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    result.update(precision=precision, recall=recall, fscore=fscore)
    return result


def dsm_median_difference(dsm_a: np.ndarray, dsm_b: np.ndarray, *, nodata: float | None = None) -> dict:
    """Median and NMAD of `dsm_a - dsm_b` over cells valid (finite, not `nodata`) in both; same grid.

    Returns median, nmad (1.4826 x median absolute deviation) and n, the cells compared; NaN for
    median and nmad when no cell is valid in both.
    """
    a, b = np.asarray(dsm_a, np.float64), np.asarray(dsm_b, np.float64)
    if a.shape != b.shape:
        raise InputError(f"DSMs on different grids: shapes {a.shape} and {b.shape} (resample one onto the other)")
    valid = np.isfinite(a) & np.isfinite(b)
    if nodata is not None:
        valid &= (a != nodata) & (b != nodata)
    diff = (a - b)[valid]
    if diff.size == 0:
        return {"median": float("nan"), "nmad": float("nan"), "n": 0}
    median = float(np.median(diff))
    return {"median": median, "nmad": float(NMAD_SCALE * np.median(np.abs(diff - median))), "n": int(diff.size)}
