"""Products scored against independent truth: elevation errors in metres, orthophoto shift and PSNR.

Why here and not in a test: users compare runs by these figures (`products/metrics.json`), and a
product whose accuracy is unknown is only a picture. Truth rasters (the sample's `truth/`) are
resampled onto the product's own grid, so every figure is per product cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

from .rasterize import Grid


def resample_to(path: str | Path, grid: Grid, crs, resampling: str = "average") -> np.ndarray:
    """Every band of a GeoTIFF on `grid` as float64 [B, H, W], NaN where it has no data."""
    with rasterio.open(path) as src:
        out = np.full((src.count, grid.height, grid.width), np.nan)
        for b in range(src.count):
            band = src.read(b + 1).astype(np.float64)
            if src.nodata is not None:
                band[band == src.nodata] = np.nan
            reproject(band, out[b], src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
                      dst_transform=grid.transform, dst_crs=crs, dst_nodata=np.nan,
                      resampling=getattr(Resampling, resampling))
    return out


def elevation_errors(ours: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Median, 90th percentile and RMS of |ours - truth| (m) and the bias, over cells valid in both."""
    ok = np.isfinite(ours) & np.isfinite(truth)
    if mask is not None:
        ok &= mask
    if not ok.any():
        return {"cells": 0, "median_abs_m": None, "p90_abs_m": None, "rmse_m": None, "bias_m": None}
    dz = (ours - truth)[ok]
    return {"cells": int(ok.sum()), "median_abs_m": round(float(np.median(np.abs(dz))), 4),
            "p90_abs_m": round(float(np.percentile(np.abs(dz), 90)), 4),
            "rmse_m": round(float(np.sqrt(np.mean(dz ** 2))), 4), "bias_m": round(float(np.median(dz)), 4)}


def phase_shift(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (rows, cols) translation of image `a` relative to `b` by phase correlation over
    the `valid` cells (others set to the mean), with a Hann window against edge effects."""
    def prep(img):
        x = np.where(valid, img, img[valid].mean())
        x = x - x.mean()
        return x * np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))
    fa, fb = np.fft.fft2(prep(a)), np.fft.fft2(prep(b))
    cross = fa * np.conj(fb)
    corr = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    peak = np.unravel_index(np.argmax(corr), corr.shape)
    shift = []
    for axis, p in enumerate(peak):
        n = corr.shape[axis]
        idx = [peak[0], peak[1]]
        vals = []
        for d in (-1, 0, 1):
            idx[axis] = (p + d) % n
            vals.append(corr[tuple(idx)])
        denom = vals[0] - 2 * vals[1] + vals[2]
        sub = 0.5 * (vals[0] - vals[2]) / denom if denom != 0 else 0.0
        s = p + sub
        shift.append(s - n if s > n / 2 else s)
    return float(shift[0]), float(shift[1])


def ortho_errors(ours_rgb: np.ndarray, truth_rgb: np.ndarray, valid: np.ndarray, cell: float) -> dict:
    """Shift (px and m, by phase correlation of the grey images) and PSNR (dB) of an orthophoto
    against the truth, both [H, W, 3] in 0..255, over the `valid` cells."""
    ok = valid & np.isfinite(truth_rgb).all(-1)
    if ok.sum() < 64:
        return {"cells": int(ok.sum()), "shift_px": None, "shift_m": None, "psnr_db": None}
    grey_a, grey_b = ours_rgb.astype(np.float64).mean(-1), np.nan_to_num(truth_rgb).mean(-1)
    dy, dx = phase_shift(grey_a, grey_b, ok)
    mse = np.mean((ours_rgb[ok].astype(np.float64) - truth_rgb[ok]) ** 2)
    return {"cells": int(ok.sum()), "shift_px": [round(dy, 3), round(dx, 3)],
            "shift_abs_px": round(float(np.hypot(dy, dx)), 3),
            "shift_m": round(float(np.hypot(dy, dx)) * cell, 4),
            "psnr_db": round(float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12))), 2)}
