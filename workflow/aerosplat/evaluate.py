"""Held-out evaluation of the merged model, with a seam check and the monolithic comparison.

The held-out photos (every n-th image, see `partition`) never reach training: no pixels, no
appearance codes. They are rendered from the merged model with no appearance correction, at the
training resolution, and scored with PSNR and SSIM. LPIPS needs pretrained network weights that
cannot be downloaded at run time, so it is reported only when they are already installed.

Seam check: a held-out view whose visible ground (its rendered expected depth, back-projected) falls
in more than one partition cell is a *border* view; border and interior views are scored separately,
so a seam between partitions shows up as a gap between the two figures.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import depthmaps
from .fileio import atomic_path, write_json
from .manifest import load_manifest
from .reprojection import fit_gain_offset
from .splats import read_ply, render_view
from .train import TrainConfig, load_cameras, load_image, psnr, ssim

log = logging.getLogger(__name__)

# A view is a border view when its second most visible cell holds at least this share of its pixels.
BORDER_SHARE = 0.1


def cell_shares(points_xy: np.ndarray, cells: list[list[float]]) -> np.ndarray:
    """Share of the points falling in each cell (half-open rectangles)."""
    shares = []
    for c in cells:
        inside = ((points_xy[:, 0] >= c[0]) & (points_xy[:, 0] < c[2])
                  & (points_xy[:, 1] >= c[1]) & (points_xy[:, 1] < c[3]))
        shares.append(inside.mean() if len(points_xy) else 0.0)
    return np.array(shares)


def backproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray, step: int = 4) -> np.ndarray:
    """World points [M, 3] of every `step`-th pixel of a z-depth map [H, W] (0 = no surface)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h:step, 0:w:step]
    z = depth[v, u]
    ok = z > 0
    pix = np.stack([(u[ok] + 0.5) * z[ok], (v[ok] + 0.5) * z[ok], z[ok]], 0)
    cam = np.linalg.inv(K) @ pix
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (R.T @ (cam - t[:, None])).T


def nearest_appearance(camera, train_cameras, appearance: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The colour correction (gain, bias: img * (1 + gain) + bias) of the training photo whose centre
    is nearest to `camera`'s: a new photo's exposure is best predicted by the photos taken beside it
    (auto-exposure follows the ground in view), and this uses none of the new photo's pixels.
    `appearance`: {photo name: {"gain": [3], "bias": [3]}} as the trainer's metrics hold it."""
    known = [c for c in train_cameras if c.name in appearance]
    if not known:
        return None
    near = min(known, key=lambda c: float(np.linalg.norm(c.centre - camera.centre)))
    code = appearance[near.name]
    return torch.tensor(code["gain"], dtype=torch.float32), torch.tensor(code["bias"], dtype=torch.float32)


def photo_brightness(image_dir: Path, cameras, scale: float) -> float:
    """Mean pixel value of the photos at `scale`: the brightness the camera's auto-exposure held them
    at (brighton_beach's training photos: 0.41-0.46, while our renders of the same views in the model's
    mean look span 0.33-0.59 as forest or beach fills the frame)."""
    means = []
    for cam in cameras:
        _, w, h = cam.scaled(scale)
        means.append(float(load_image(image_dir / cam.name, w, h).mean()))
    return float(np.mean(means))


def auto_exposed(render: torch.Tensor, target: float) -> torch.Tensor:
    """The render as an auto-exposing camera would have taken it: one gain that brings its mean
    brightness to the `target` of the training photos (photo_brightness). The camera meters the
    image as composited (metering only the opaque part overexposes a model that learned to darken
    colours with transparency over black). Uses no pixel of the photo being predicted."""
    return (render * (target / render.mean().clamp_min(1e-6))).clamp(0, 1)


def lpips_status() -> str:
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return "not computed: the lpips package and its pretrained weights are not installed"
    return "not computed: LPIPS backbone weights would have to be downloaded at run time"


def score_model(splats: dict, manifest: dict, cameras, image_dir: Path, scale: float,
                renders_dir: Path | None = None, appearance: dict | None = None,
                train_cameras=None, exposure_target: float | None = None) -> list[dict]:
    """Render every held-out camera; PSNR, SSIM and the cells its visible surface falls in. With the
    trainer's per-photo `appearance` and the `train_cameras`, also the PSNR of the render in the
    look of the nearest training photo (`psnr_nearest_appearance`; see nearest_appearance); with
    the training photos' `exposure_target`, the PSNR of the auto-exposed render (`psnr_auto_exposure`)."""
    cells = [p["cell_bounds"] for p in manifest["partitions"]]
    rows = []
    for cam in cameras:
        K, w, h = cam.scaled(scale)
        gt = load_image(image_dir / cam.name, w, h)
        with torch.no_grad():
            out, alpha, _ = render_view(splats, K, cam.w2c, w, h, render_mode="RGB+ED")
        img = out[..., :3].clamp(0, 1)
        depth = out[..., 3].numpy() * (alpha[..., 0].numpy() > 0.5)
        shares = cell_shares(backproject(depth, K, cam.w2c)[:, :2], cells)
        order = np.sort(shares)[::-1]
        fitted, right_raw = half_fit_psnr(img, gt)
        rows.append({
            "name": cam.name,
            "psnr": round(psnr(img, gt), 4),
            "psnr_right_half_raw": round(right_raw, 4),
            "psnr_right_half_appearance_fit": round(fitted, 4),
            "ssim": round(float(ssim(img, gt)), 5),
            "cell_shares": {p["id"]: round(float(s), 3) for p, s in zip(manifest["partitions"], shares)},
            "border": bool(len(order) > 1 and order[1] >= BORDER_SHARE),
        })
        code = nearest_appearance(cam, train_cameras or [], appearance) if appearance else None
        if code is not None:
            looked = (out[..., :3] * (1 + code[0]) + code[1]).clamp(0, 1)
            rows[-1]["psnr_nearest_appearance"] = round(psnr(looked, gt), 4)
        if exposure_target is not None:
            exposed = auto_exposed(img, exposure_target)
            rows[-1]["psnr_auto_exposure"] = round(psnr(exposed, gt), 4)
        if renders_dir is not None:
            pair = np.concatenate([img.numpy(), gt.numpy()], 1)
            renders_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pair * 255 + 0.5).astype(np.uint8)).save(
                renders_dir / f"{Path(cam.name).stem}.png")
        log.info("held-out %s: %.2f dB, SSIM %.3f%s", cam.name, rows[-1]["psnr"], rows[-1]["ssim"],
                 " (border view)" if rows[-1]["border"] else "")
    return rows


def half_fit_psnr(render: torch.Tensor, photo: torch.Tensor) -> tuple[float, float]:
    """The appearance protocol for models with a per-image appearance embedding: a per-channel gain
    and offset (what our embedding can express) fitted by least squares on the left half of the
    held-out photo, PSNR on the right half. Returns (fitted, raw) right-half PSNR."""
    w = render.shape[1] // 2
    r, p = render.double().numpy(), photo.double().numpy()
    gain, offset = fit_gain_offset(r[:, :w].reshape(-1, 3), p[:, :w].reshape(-1, 3))
    right = torch.from_numpy(r[:, w:] * gain + offset).float()
    return psnr(right, photo[:, w:]), psnr(render[:, w:], photo[:, w:])


def _mean(rows, key, where=lambda r: True):
    vals = [r[key] for r in rows if where(r)]
    return round(float(np.mean(vals)), 4) if vals else None


def write_depths(splats: dict, manifest: dict, image_dir: Path, scale: float, out_dir: Path,
                 truth: "depthmaps.DepthTruth | None" = None, names: list[str] | None = None) -> dict:
    """Expected and median depth of every training and held-out view (or of `names`) as float32
    TIFFs in `out_dir`; with `truth`, the held-out views' depth errors in metres (`median`: the
    median-depth map, the product; `expected`: the alpha-weighted mean, which floaters pull off)."""
    heldout = set(manifest["heldout"])
    names = sorted(set(manifest["train"]) | heldout) if names is None else list(names)
    errors = []
    for cam in load_cameras(manifest, names):
        K, w, h = cam.scaled(scale)
        depths = depthmaps.render_depths(splats, K, cam.w2c, w, h)
        depthmaps.write_view_depths(out_dir, cam.name, depths, K, cam.w2c)
        if truth is not None and cam.name in heldout:
            true = truth.depth(K, cam.w2c, w, h)
            err = depthmaps.depth_errors(depths["median"], true)
            expected = depthmaps.depth_errors(depths["expected"], true)
            errors.append({"name": cam.name, **err,
                           "expected_median_abs_error_m": expected["median_abs_error_m"],
                           "gsd_m": round(float(np.nanmedian(true)) / K[0, 0], 4)})
            log.info("held-out %s: median depth error %s m (GSD %.3f m)", cam.name,
                     err["median_abs_error_m"], errors[-1]["gsd_m"])
    out = {"views": len(names), "files": "<image stem>_expected.tif, <image stem>_median.tif",
           "image_scale": scale}
    if errors:
        out.update({"truth": truth.note, "heldout": errors,
                    "heldout_median_abs_error_m": _median(errors, "median_abs_error_m"),
                    "heldout_expected_median_abs_error_m": _median(errors, "expected_median_abs_error_m"),
                    "gsd_m": _median(errors, "gsd_m")})
    return out


def _median(rows, key):
    vals = [r[key] for r in rows if r[key] is not None]
    return round(float(np.median(vals)), 4) if vals else None


def evaluate(manifest_path, merged_ply, metrics_out, renders_dir, train_cfg: TrainConfig,
             monolithic_ply=None, partition_metrics: dict[str, str] | None = None,
             depth_dir=None, truth_dsm=None, frame=None) -> dict:
    """Rule `evaluate`: `merged/metrics.json` with held-out PSNR/SSIM, seams and the comparison;
    with `depth_dir`, every view's depth (scored against `truth_dsm` when the scene has one)."""
    t0 = time.time()
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    image_dir = manifest_path.parent / manifest["images_dir"]
    cameras = load_cameras(manifest, manifest["heldout"])
    if not cameras:
        raise ValueError("no held-out images: set partition.heldout_every > 0 to evaluate")
    splats = read_ply(merged_ply)
    target = photo_brightness(image_dir, load_cameras(manifest, manifest["train"]), train_cfg.image_scale)
    with atomic_path(renders_dir) as tmp_renders:
        rows = score_model(splats, manifest, cameras, image_dir, train_cfg.image_scale, tmp_renders,
                           exposure_target=target)
    metrics = {
        "heldout_psnr": _mean(rows, "psnr"),
        "heldout_ssim": _mean(rows, "ssim"),
        "heldout_psnr_right_half_appearance_fit": _mean(rows, "psnr_right_half_appearance_fit"),
        "heldout_psnr_auto_exposure": _mean(rows, "psnr_auto_exposure"),
        "appearance_protocol": "raw: no appearance correction; right_half_appearance_fit: per-channel "
                               "gain/offset fitted on the photo's left half, PSNR on its right half; "
                               "auto_exposure: one gain bringing the render's mean brightness to the "
                               "training photos' (no pixel of the held-out photo used)",
        "heldout_lpips": None,
        "heldout_lpips_note": lpips_status(),
        "heldout_images": rows,
        "image_scale": train_cfg.image_scale,
        "num_gaussians": int(splats["means"].shape[0]),
        "num_partitions": len(manifest["partitions"]),
        "seam": {
            "border_views": [r["name"] for r in rows if r["border"]],
            "border_psnr": _mean(rows, "psnr", lambda r: r["border"]),
            "interior_psnr": _mean(rows, "psnr", lambda r: not r["border"]),
            "border_share_threshold": BORDER_SHARE,
        },
    }
    if monolithic_ply:
        mono = score_model(read_ply(monolithic_ply), manifest, cameras, image_dir,
                           train_cfg.image_scale)
        metrics["monolithic_heldout_psnr"] = _mean(mono, "psnr")
        metrics["monolithic_heldout_ssim"] = _mean(mono, "ssim")
        metrics["partitioned_minus_monolithic_db"] = round(
            metrics["heldout_psnr"] - metrics["monolithic_heldout_psnr"], 4)
    if depth_dir is not None:
        truth = None
        if truth_dsm and frame:
            origin = np.asarray(json.loads(Path(frame).read_text())["origin"], float)
            truth = depthmaps.DepthTruth.from_dsm(truth_dsm, origin)
        with atomic_path(depth_dir) as tmp_depth:
            metrics["depth"] = write_depths(splats, manifest, image_dir, train_cfg.image_scale,
                                            Path(tmp_depth), truth)
    if partition_metrics:
        metrics["partitions"] = {pid: {k: json.loads(Path(f).read_text()).get(k) for k in
                                       ("train_psnr", "num_gaussians", "num_images", "seconds",
                                        "iterations_per_second", "device", "resumed_from_step")}
                                 for pid, f in partition_metrics.items()}
    metrics["seconds"] = round(time.time() - t0, 2)
    write_json(metrics_out, metrics)
    log.info("held-out PSNR %.2f dB, SSIM %.3f over %d views", metrics["heldout_psnr"],
             metrics["heldout_ssim"], len(rows))
    return metrics
