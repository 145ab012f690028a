"""Ground classification of the dense point cloud: which points the DTM is made of.

Telling ground from buildings, cars and trees is a solved, tested problem, so it is left to a
maintained filter, never a home-made one:

- PDAL's Simple Morphological Filter (`filters.smrf`, Pingel et al. 2013) when the `pdal` Python
  bindings import (the cluster's `gis` env);
- otherwise the Cloth Simulation Filter (Zhang et al. 2016, PyPI `cloth-simulation-filter`, module
  `CSF`), which installs everywhere with pip: the cloud is turned upside down, a cloth dropped on
  it settles on the underside of the terrain, and points within `class_threshold` of the cloth
  are ground.

Both were designed for airborne lidar (0.5-1 m spacing); a photogrammetric cloud is denser and
noisier, so the defaults scale with the cloud's cell (`cell_m`, the point spacing, about the GSD):

- cloth resolution (CSF) or grid cell (SMRF): 2.5 x cell, at least 0.5 m. Finer than the spacing
  the cloth falls through gaps between points; much finer than 0.5 m it also sags into the upside
  down "pits" that roofs become, and the cost grows with 1/resolution²;
- threshold (height above the ground surface still counted as ground): max(0.3 m, 2 x cell), above
  the noise of dense matching yet below a kerb, a car bonnet or a low wall.

Coordinates are the local frame (metres around 0, see `georef`): both filters keep points in
double, but a cloth on UTM northings would waste its precision and its bounding box maths.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Iterator

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

MIN_POINTS = 10
"""Fewer points than this cannot describe a surface: `classify_ground` returns all False."""

CLOTH_PER_CELL = 2.5
"""Cloth resolution (CSF) or SMRF cell, in units of the point spacing."""

MIN_CLOTH_M = 0.5
"""Finest cloth / SMRF cell: below it the cloth sags into buildings and the run time explodes."""

THRESHOLD_PER_CELL = 2.0
"""Ground threshold in units of the point spacing..."""

MIN_THRESHOLD_M = 0.3
"""...but never under 30 cm: dense matching's noise on grass and gravel is of that order."""

SMRF_WINDOW_M = 40.0
"""SMRF's largest opening window: removes objects up to about this size (large roofs included)."""


def ground_filter_name() -> str:
    """Which maintained filter `classify_ground` uses here: 'pdal-smrf' or 'csf' (for metrics)."""
    return "pdal-smrf" if _have_pdal() else "csf"


def default_parameters(cell_m: float) -> tuple[float, float]:
    """(cloth resolution or SMRF cell, ground threshold) in metres for a cloud of spacing `cell_m`."""
    try:
        cell = float(cell_m)
    except (TypeError, ValueError):
        cell = float("nan")
    if not np.isfinite(cell) or cell <= 0:
        raise InputError(f"point spacing must be a positive number of metres, got {cell_m!r}")
    return max(MIN_CLOTH_M, CLOTH_PER_CELL * cell), max(MIN_THRESHOLD_M, THRESHOLD_PER_CELL * cell)


def classify_ground(xyz: np.ndarray, cell_m: float, *, slope_smooth: bool = False,
                    cloth_resolution_m: float | None = None, class_threshold_m: float | None = None,
                    rigidness: int = 2) -> np.ndarray:
    """Ground mask [N] bool of the local-frame points `xyz` [N, 3] (Z up, metres).

    `cell_m` is the point spacing; `cloth_resolution_m` and `class_threshold_m` default from it
    (see the module docstring). `slope_smooth` and `rigidness` (1 steep, 2 relief, 3 flat) are
    CSF's own knobs; with PDAL, `rigidness` 1 allows SMRF a steeper terrain slope. A cloud of fewer
    than `MIN_POINTS` points (empty included) has no surface to find: all False, no error.
    """
    cloth, threshold = default_parameters(cell_m)
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.size == 0:
        return np.zeros(0, bool)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"ground classification needs points as an [N, 3] array, got shape {xyz.shape}")
    if len(xyz) < MIN_POINTS:
        return np.zeros(len(xyz), bool)
    if not np.isfinite(xyz).all():
        raise InputError(f"{int((~np.isfinite(xyz)).any(axis=1).sum())} point(s) with non-finite coordinates")
    if rigidness not in (1, 2, 3):
        raise InputError(f"rigidness must be 1 (steep), 2 (relief) or 3 (flat), got {rigidness!r}")
    cloth = cloth if cloth_resolution_m is None else float(cloth_resolution_m)
    threshold = threshold if class_threshold_m is None else float(class_threshold_m)
    if cloth <= 0 or threshold <= 0:
        raise InputError(f"cloth resolution ({cloth}) and threshold ({threshold}) must be positive metres")
    if _have_pdal():
        return _smrf(xyz, cell=cloth, threshold=threshold, slope=0.3 if rigidness == 1 else 0.15)
    return _csf(xyz, resolution=cloth, threshold=threshold, slope_smooth=slope_smooth, rigidness=rigidness)


def _have_pdal() -> bool:
    try:
        import pdal  # noqa: F401
    except ImportError:
        return False
    return True


def _smrf(xyz: np.ndarray, *, cell: float, threshold: float, slope: float) -> np.ndarray:
    """PDAL `filters.smrf` on an in-memory array; the view keeps the input order."""
    import pdal

    points = np.zeros(len(xyz), dtype=[("X", "<f8"), ("Y", "<f8"), ("Z", "<f8"), ("Classification", "u1"),
                                       ("ReturnNumber", "u1"), ("NumberOfReturns", "u1")])
    points["X"], points["Y"], points["Z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["ReturnNumber"] = points["NumberOfReturns"] = 1  # single returns: SMRF's default `returns` keeps them
    stage = {"type": "filters.smrf", "cell": cell, "threshold": threshold, "slope": slope,
             "window": SMRF_WINDOW_M}
    pipeline = pdal.Pipeline(json.dumps([stage]), arrays=[points])
    pipeline.execute()
    out = pipeline.arrays[0]
    if len(out) != len(xyz):
        raise RuntimeError(f"filters.smrf returned {len(out)} points for {len(xyz)}")
    return np.asarray(out["Classification"]) == 2


def _csf(xyz: np.ndarray, *, resolution: float, threshold: float, slope_smooth: bool, rigidness: int) -> np.ndarray:
    """Cloth Simulation Filter; its progress lines (C++ stdout) go to stderr, the rule log."""
    import CSF

    csf = CSF.CSF()
    csf.params.bSloopSmooth = bool(slope_smooth)
    csf.params.cloth_resolution = float(resolution)
    csf.params.class_threshold = float(threshold)
    csf.params.rigidness = int(rigidness)
    csf.params.interations = 500  # CSF's default; it stops early once the cloth has settled
    # Centre the cloud: the cloth's box maths then runs on small numbers whatever frame came in.
    centred = np.ascontiguousarray(xyz - xyz.mean(axis=0), dtype=np.float64)
    ground, off_ground = CSF.VecInt(), CSF.VecInt()
    with _stdout_to_stderr():
        csf.setPointCloud(centred)
        csf.do_filtering(ground, off_ground, False)  # False: no cloth file in the working directory
    mask = np.zeros(len(xyz), bool)
    mask[np.asarray(ground, dtype=np.int64)] = True
    return mask


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 (what C++ writes to std::cout) to file descriptor 2 for the block."""
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced streams without a descriptor
        yield
        return
    sys.stdout.flush()
    saved = os.dup(out_fd)
    try:
        os.dup2(err_fd, out_fd)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, out_fd)
        os.close(saved)
