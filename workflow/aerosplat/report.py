"""The run's quality report (DESIGN stage 8): `report/metrics.json` and one static `report/report.html`.

Why a separate stage: every figure a person needs to judge a run (how many photos registered, how well
the model sits on the ground, how well it renders photos it never saw, how accurate the DSM is, what
each stage cost) is scattered over the stages' own files. This module gathers them in one JSON, and
every figure there names the stage file and key it came from (`sources`), so that any number in the
report can be traced back and checked. Figures recomputed here (RMSEs from per-image residuals, file
sizes, wall times) are computed from the raw rows, not copied from another summary.

The HTML is one file that opens offline and can be mailed or archived: images are embedded as data
URIs, styles are inline, there are no scripts, and a Content-Security-Policy forbids the page to load
anything from elsewhere. Plots are drawn with matplotlib (Agg). Every section survives missing inputs
(a stage not run yet, no DTM, no QGIS map): it then says what is missing and why, instead of failing.

Inputs (`<results>/<scene>/`): `ingest/exif.csv`, `ingest/skipped.csv`, `sfm/report.json`,
`georef/frame.json`, `partitions/manifest.json`, `partitions/<pid>/metrics.json`,
`monolithic/metrics.json`, `merged/metrics.json`, `merged/heldout/*.png`, `products/metrics.json`,
`products/{dsm,dtm,ortho}.tif` and the other products, `report/map.png`; the training logs
`<logs>/train/<scene>/<pid>.log` (the per-step loss and PSNR are only there); the benchmark tables
`<benchmarks>/<rule>/<scene>.tsv` and `<benchmarks>/<rule>/<scene>/<job>.tsv`.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_path, write_json

log = logging.getLogger(__name__)

# Pipeline order of the rules, for the stage table; rules not listed here follow in name order.
STAGE_ORDER = ("generate_scene", "ingest", "sfm", "georef", "partition", "train", "train_monolithic",
               "merge", "evaluate", "products", "mosaic", "qgis_project", "report")
# What each deliverable is, where the products stage's own description (products/metrics.json
# `files`) does not say.
DESCRIPTIONS = {
    "dsm.tif": "digital surface model (highest surface), float32 COG, metres",
    "dtm.tif": "digital terrain model (ground), float32 COG, metres",
    "ortho.tif": "true orthophoto, RGB + alpha COG",
    "points.laz": "dense point cloud (LAZ), ground = class 2",
    "points.copc.laz": "the same cloud as a Cloud Optimized Point Cloud",
    "metrics.json": "the products' figures (GSD, density, completeness, accuracy)",
    "splats.ply": "radiance-field model: 3D Gaussian splats (standard 3DGS PLY, local frame)",
    "map.png": "map of the QGIS project (orthophoto, cells, cameras)",
    "cameras.gpkg": "camera positions and footprints (GeoPackage)",
    "survey.gpkg": "partition cells, GCPs and check points (GeoPackage)",
    "heights.tif": "heights above ground (DSM - DTM)",
    "ept": "the point cloud as Entwine Point Tiles (opens in QGIS without PDAL)",
    "qgis_project.json": "the QGIS project's layers and the reasons for any left out",
}
HEADLINE_TITLES = {
    "registered_photos": "Registered photos",
    "georef_rmse_m": "Georef RMSE",
    "heldout_psnr_db": "Held-out PSNR",
    "dsm_median_error_m": "DSM median error",
}
MAX_HELDOUT_SHOWN = 4
PREVIEW_PX = 900  # longest side of the raster previews' pixel grids
BLUE, ORANGE, GREY, RED = "#2563eb", "#ea580c", "#6b7280", "#dc2626"
PART_COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#4b5563")


# ----------------------------------------------------------------------------- small helpers

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(value) -> float | None:
    """A finite float, or None (for NaN, inf, missing or unparsable values)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _rms(values) -> float | None:
    v = np.asarray([x for x in values if x is not None], float)
    return float(np.sqrt(np.mean(v ** 2))) if v.size else None


def _clean(obj):
    """JSON-safe: non-finite floats become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return _num(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _path_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


class _Sources:
    """Figure -> the file (and key) it was read from, or how it was computed."""

    def __init__(self, base: Path):
        self.base = base
        self.map: dict[str, dict] = {}

    def rel(self, path: Path) -> str:
        rel = os.path.relpath(Path(path).resolve(), self.base)
        return str(path) if rel.startswith("..") else rel

    def add(self, figure: str, path: Path, key: str | None = None, how: str | None = None) -> None:
        entry = {"file": self.rel(path)}
        if key:
            entry["key"] = key
        if how:
            entry["how"] = how
        self.map[figure] = entry


def _scene_dir(results_dir, scene: str) -> Path:
    """`<results_dir>/<scene>`, or `results_dir` itself when it already is the scene's folder."""
    results_dir = Path(results_dir)
    if not (results_dir / scene).is_dir() and results_dir.name == scene:
        return results_dir
    return results_dir / scene


# ----------------------------------------------------------------------------- collecting

def parse_training_log(text: str, pid: str) -> dict:
    """The per-step curve of partition `pid` from its training log: {step, loss, psnr, gaussians} lists.

    A resumed job appends to the same log: points after the step it resumed from are replaced by the
    new run's; a run that starts afresh discards what earlier runs logged.
    """
    step_re = re.compile(rf"\b{re.escape(pid)} step (\d+)/(\d+)\s+(?:\d+x\d+\s+)?loss\s+(\S+)\s+psnr\s+(\S+)\s*dB"
                         r"(?:\s+(\d+)\s+Gaussians)?")
    start_re = re.compile(rf"\btraining {re.escape(pid)} on\b")
    resume_re = re.compile(rf"\bresumed {re.escape(pid)} from checkpoint at step (\d+)")
    points: dict[int, tuple] = {}
    resumed = False
    for line in text.splitlines():
        m = resume_re.search(line)
        if m:
            cut = int(m.group(1))
            points = {s: p for s, p in points.items() if s <= cut}
            resumed = True
            continue
        if start_re.search(line):
            if not resumed:
                points = {}
            resumed = False
            continue
        m = step_re.search(line)
        if m:
            step = int(m.group(1))
            points[step] = (_num(m.group(3)), _num(m.group(4)), int(m.group(5)) if m.group(5) else None)
    steps = sorted(points)
    return {"step": steps, "loss": [points[s][0] for s in steps], "psnr": [points[s][1] for s in steps],
            "gaussians": [points[s][2] for s in steps]}


def _curve_from_metrics(m: dict) -> dict | None:
    """A curve the trainer stored in its metrics.json (`curve` or `history`: rows with `step`)."""
    rows = m.get("curve") or m.get("history")
    if isinstance(rows, dict) and "step" in rows:
        return {k: list(rows.get(k) or []) for k in ("step", "loss", "psnr", "gaussians")}
    if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "step" in rows[0]:
        return {"step": [int(r["step"]) for r in rows], "loss": [_num(r.get("loss")) for r in rows],
                "psnr": [_num(r.get("psnr")) for r in rows], "gaussians": [r.get("gaussians") for r in rows]}
    return None


def read_benchmarks(benchmarks_dir, scene: str) -> list[dict]:
    """Per-rule wall time and peak memory from the benchmark tables of `scene`, in pipeline order.

    Each row: stage (the rule, or `train_monolithic` for the one-partition reference), rule,
    jobs [{job, file, s, max_rss_mb, cpu_s}], wall_s (sum over jobs), longest_s,
    max_rss_mb (the largest job's), cpu_s. A table with repeats counts its mean time and largest memory.
    """
    benchmarks_dir = Path(benchmarks_dir)
    rules: dict[str, list] = {}
    if not benchmarks_dir.is_dir():
        return []
    for rule_dir in sorted(p for p in benchmarks_dir.iterdir() if p.is_dir()):
        files = [(scene, rule_dir / f"{scene}.tsv")] if (rule_dir / f"{scene}.tsv").is_file() else []
        if (rule_dir / scene).is_dir():
            files += [(f.stem, f) for f in sorted((rule_dir / scene).glob("*.tsv"))]
        for job, f in files:
            try:
                with open(f, newline="") as fh:
                    rows = list(csv.DictReader(fh, delimiter="\t"))
            except OSError:
                continue
            if not rows:
                continue
            secs = [v for v in (_num(r.get("s")) for r in rows) if v is not None]
            rss = [v for v in (_num(r.get("max_rss")) for r in rows) if v is not None]
            cpu = [v for v in (_num(r.get("cpu_time")) for r in rows) if v is not None]
            stage = rule_dir.name
            if stage == "train" and job == "monolithic":
                stage = "train_monolithic"  # the one-partition reference, not a part of the pipeline
            rules.setdefault(stage, []).append({
                "job": job, "file": f,
                "s": float(np.mean(secs)) if secs else None,
                "max_rss_mb": max(rss) if rss else None,
                "cpu_s": float(np.mean(cpu)) if cpu else None,
            })
    order = {r: i for i, r in enumerate(STAGE_ORDER)}
    out = []
    for rule in sorted(rules, key=lambda r: (order.get(r, len(order)), r)):
        jobs = rules[rule]
        secs = [j["s"] for j in jobs if j["s"] is not None]
        rss = [j["max_rss_mb"] for j in jobs if j["max_rss_mb"] is not None]
        cpu = [j["cpu_s"] for j in jobs if j["cpu_s"] is not None]
        out.append({"stage": rule, "rule": "train" if rule == "train_monolithic" else rule, "jobs": jobs,
                    "wall_s": sum(secs) if secs else None,
                    "longest_s": max(secs) if secs else None, "max_rss_mb": max(rss) if rss else None,
                    "cpu_s": sum(cpu) if cpu else None})
    return out


def _gcp_groups(frame: dict) -> tuple[list[dict], list[dict]]:
    """GCP rows split into control points (used in the fit) and check points (kept out of it)."""
    control, check = [], []
    for key, role in (("gcps", "gcp"), ("check_points", "check"), ("checkpoints", "check")):
        for row in frame.get(key) or []:
            r = {"name": row.get("gcp") or row.get("name"), "dx": _num(row.get("dx")), "dy": _num(row.get("dy")),
                 "dz": _num(row.get("dz")), "observations": row.get("observations"), "used": row.get("used"),
                 "reproj_px": _num(row.get("reproj_px")), "inlier": row.get("inlier")}
            if None not in (r["dx"], r["dy"]):
                r["horizontal_m"] = math.hypot(r["dx"], r["dy"])
            is_check = row.get("role", role) == "check" or row.get("check") is True
            (check if is_check else control).append(r)
    return control, check


def _rmse_rows(rows: list[dict]) -> dict | None:
    h = [r["horizontal_m"] for r in rows if r.get("horizontal_m") is not None]
    v = [r["dz"] for r in rows if r.get("dz") is not None]
    if not h and not v:
        return None
    return {"horizontal": _rms(h), "vertical": _rms(v), "count": len(rows)}


def collect_metrics(results_dir, benchmarks_dir, scene: str, logs_dir=None) -> dict:
    """Every figure of the run of `scene`, each traceable to its stage file (`sources`).

    `results_dir` holds `<scene>/`; `logs_dir` (default: `logs` beside `results_dir`) holds the
    training logs, where the per-step curves are. Missing stage files leave their figures out and
    say why under `missing`.
    """
    d = _scene_dir(results_dir, scene)
    root = d.parent.parent
    logs_dir = Path(logs_dir) if logs_dir is not None else root / "logs"
    src = _Sources(root.resolve())
    missing: dict[str, str] = {}
    out: dict[str, Any] = {"scene": scene, "scene_dir": src.rel(d),
                           "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

    # --- photos: ingest and SfM
    photos: dict[str, Any] = {}
    exif = d / "ingest" / "exif.csv"
    if exif.is_file():
        with open(exif, newline="", encoding="utf-8") as fh:
            exif_rows = list(csv.DictReader(fh))
        photos["used"] = len(exif_rows)
        src.add("photos.used", exif, how="rows")
    else:
        missing["ingest"] = "ingest/exif.csv is absent: the ingest stage has not run"
    skipped = d / "ingest" / "skipped.csv"
    if skipped.is_file():
        with open(skipped, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        photos["skipped"] = len(rows)
        photos["skipped_list"] = [{"name": r.get("name"), "reason": r.get("reason")} for r in rows[:100]]
        src.add("photos.skipped", skipped, how="rows")
    sfm = _read_json(d / "sfm" / "report.json")
    sfm_path = d / "sfm" / "report.json"
    if sfm:
        photos.update({"registered": sfm.get("registered"), "total": sfm.get("total"),
                       "registered_fraction": sfm.get("registered_fraction"),
                       "unregistered": sfm.get("unregistered_images") or []})
        for k, key in (("registered", "registered"), ("total", "total"), ("unregistered", "unregistered_images")):
            src.add(f"photos.{k}", sfm_path, key)
        out["sfm"] = {k: sfm.get(k) for k in ("mean_reproj_error_px", "num_points3d", "mean_track_length",
                                                "matcher", "mapper", "num_models", "pose_priors", "seconds",
                                                "refine_focal", "refine_focal_reason", "refine_distortion",
                                                "weak_connection")}
        for k in ("mean_reproj_error_px", "num_points3d", "mean_track_length"):
            src.add(f"sfm.{k}", sfm_path, k)
        finals = sfm.get("cameras") or {}
        cams = []
        for c in sfm.get("camera_sources") or []:
            final = finals.get(str(c.get("camera_id")), {})
            params = final.get("params") or []
            start = c.get("params_start") or []
            cams.append({"camera_id": c.get("camera_id"), "make": c.get("make"), "model": c.get("model"),
                         "photos": c.get("images"), "width": final.get("width", c.get("width")),
                         "height": final.get("height", c.get("height")),
                         "camera_model": final.get("model", c.get("model_start")), "params": params,
                         "focal_px_start": start[0] if start else None,
                         "focal_px": params[0] if params else None,
                         "intrinsics_source": c.get("intrinsics_source"),
                         "calibration_date": c.get("calibration_date"),
                         "focal_refined": sfm.get("refine_focal")})
        if not cams:  # an older report without camera_sources: the final cameras alone
            cams = [{"camera_id": k, "camera_model": v.get("model"), "width": v.get("width"),
                     "height": v.get("height"), "params": v.get("params"),
                     "focal_px": (v.get("params") or [None])[0], "intrinsics_source": None}
                    for k, v in finals.items()]
        out["cameras"] = cams
        out["focal_sources"] = sfm.get("focal_sources") or {}
        src.add("cameras", sfm_path, "camera_sources[], cameras{}")
        src.add("focal_sources", sfm_path, "focal_sources")
    else:
        missing["sfm"] = "sfm/report.json is absent: structure from motion has not run"
    out["photos"] = photos

    # --- georeferencing
    frame_path = d / "georef" / "frame.json"
    frame = _read_json(frame_path)
    if frame:
        per_image = [{"image": p.get("image"), "dx": _num(p.get("dx")), "dy": _num(p.get("dy")),
                      "dz": _num(p.get("dz")), "inlier": p.get("inlier"), "source": p.get("source")}
                     for p in frame.get("per_image") or []]
        for p in per_image:
            p["horizontal_m"] = (math.hypot(p["dx"], p["dy"]) if None not in (p["dx"], p["dy"]) else None)
        control, check = _gcp_groups(frame)
        g = {"epsg": frame.get("epsg"), "crs_name": frame.get("crs_name"), "method": frame.get("method"),
             "origin": frame.get("origin"), "scale": frame.get("scale"), "outliers": frame.get("outliers") or [],
             "per_image": per_image,
             "rmse_images_m": _rmse_rows(per_image),
             "rmse_images_stage_m": frame.get("rmse_gps_m"),
             "gcps": control, "check_points": check,
             "rmse_gcp_m": _rmse_rows(control), "rmse_check_m": _rmse_rows(check)}
        for k in ("gt_camera_rmse_m", "gt_camera_rmse_horizontal_m", "gt_camera_rmse_vertical_m",
                  "gt_camera_rmse_gps_only_m", "gt_cameras_compared"):
            if k in frame:
                g[k] = frame[k]
                src.add(f"georef.{k}", frame_path, k)
        src.add("georef.per_image", frame_path, "per_image[]")
        src.add("georef.rmse_images_m", frame_path, "per_image[].dx,dy,dz",
                how="RMS over every positioned image (outliers included) of hypot(dx, dy) and of dz")
        src.add("georef.rmse_images_stage_m", frame_path, "rmse_gps_m")
        if control:
            src.add("georef.rmse_gcp_m", frame_path, "gcps[].dx,dy,dz", how="RMS over the GCPs")
        if check:
            src.add("georef.rmse_check_m", frame_path, "check_points[].dx,dy,dz", how="RMS over the check points")
        # The headline: the most independent figure there is (check points, then GCPs, then GPS).
        for key, label in (("rmse_check_m", "check points"), ("rmse_gcp_m", "GCPs"), ("rmse_images_m", "GPS")):
            if g[key] and g[key].get("horizontal") is not None:
                g["headline"] = {"from": key, "label": label, **g[key]}
                break
        out["georef"] = g
    else:
        missing["georef"] = "georef/frame.json is absent: georeferencing has not run (or failed)"

    # --- partitions
    manifest_path = d / "partitions" / "manifest.json"
    manifest = _read_json(manifest_path)
    if manifest:
        out["partitions"] = {
            "grid": manifest.get("grid"), "overlap": manifest.get("overlap"),
            "count": len(manifest.get("partitions") or []),
            "heldout": manifest.get("heldout") or [], "train_images": len(manifest.get("train") or []),
            "items": [{"id": p.get("id"), "cell_bounds": p.get("cell_bounds"),
                       "expanded_bounds": p.get("expanded_bounds"), "images": len(p.get("images") or [])}
                      for p in manifest.get("partitions") or []],
            "warnings": manifest.get("warnings") or [],
        }
        src.add("partitions", manifest_path, "partitions[], grid, overlap, heldout")
    else:
        missing["partitions"] = "partitions/manifest.json is absent: the scene has not been partitioned"

    # --- training: per partition (and the one-partition reference), with curves
    merged_path = d / "merged" / "metrics.json"
    merged = _read_json(merged_path)
    pids = [p["id"] for p in out.get("partitions", {}).get("items", [])]
    if not pids:
        pids = sorted(p.name for p in (d / "partitions").glob("*/") if (p / "metrics.json").is_file())
    training = {}
    for pid in pids + (["monolithic"] if (d / "monolithic" / "metrics.json").is_file() else []):
        mpath = (d / "monolithic" / "metrics.json") if pid == "monolithic" else d / "partitions" / pid / "metrics.json"
        m = _read_json(mpath)
        entry: dict[str, Any] = {"reference": pid == "monolithic"}
        if m is None and merged and pid in (merged.get("partitions") or {}):
            m, mpath = merged["partitions"][pid], merged_path
            src.add(f"training.{pid}", merged_path, f"partitions.{pid}")
        elif m is not None:
            src.add(f"training.{pid}", mpath)
        if m is not None:
            entry.update({k: m.get(k) for k in ("steps", "num_gaussians", "num_images", "num_init_points",
                                                "train_psnr", "seconds", "train_seconds", "iterations_per_second",
                                                "device", "resumed_from_step")})
        curve = _curve_from_metrics(m) if m else None
        if curve is not None:
            src.add(f"training.{pid}.curve", mpath, "curve")
        else:
            log_path = logs_dir / "train" / scene / f"{pid}.log"
            if log_path.is_file():
                curve = parse_training_log(log_path.read_text(errors="replace"), pid)
                src.add(f"training.{pid}.curve", log_path, how="the trainer's per-step log lines "
                        "(loss, mean training PSNR since the previous line)")
        if curve and curve["step"]:
            entry["curve"] = curve
        if m is None and not entry.get("curve"):
            continue
        training[pid] = entry
    out["training"] = training
    if not training:
        missing["training"] = "no partition has training metrics or a training log yet"

    # --- held-out views
    if merged:
        rows = merged.get("heldout_images") or []
        out["heldout"] = {
            "psnr_db": merged.get("heldout_psnr"), "ssim": merged.get("heldout_ssim"),
            "psnr_auto_exposure_db": merged.get("heldout_psnr_auto_exposure"),
            "psnr_appearance_fit_db": merged.get("heldout_psnr_right_half_appearance_fit"),
            "monolithic_psnr_db": merged.get("monolithic_heldout_psnr"),
            "monolithic_ssim": merged.get("monolithic_heldout_ssim"),
            "lpips": merged.get("heldout_lpips"), "lpips_note": merged.get("heldout_lpips_note"),
            "num_gaussians": merged.get("num_gaussians"),
            "seam": merged.get("seam"),
            "views": [{"name": r.get("name"), "psnr_db": r.get("psnr"), "ssim": r.get("ssim"),
                       "psnr_auto_exposure_db": r.get("psnr_auto_exposure"), "border": r.get("border")}
                      for r in rows],
        }
        depth = merged.get("depth") or {}
        if depth.get("heldout_median_abs_error_m") is not None:
            out["heldout"]["depth_median_abs_error_m"] = depth["heldout_median_abs_error_m"]
            out["heldout"]["depth_gsd_m"] = depth.get("gsd_m")
            src.add("heldout.depth_median_abs_error_m", merged_path, "depth.heldout_median_abs_error_m")
        for k, key in (("psnr_db", "heldout_psnr"), ("ssim", "heldout_ssim"),
                       ("monolithic_psnr_db", "monolithic_heldout_psnr"), ("views", "heldout_images[]")):
            src.add(f"heldout.{k}", merged_path, key)
    else:
        missing["heldout"] = "merged/metrics.json is absent: the merged model has not been evaluated"

    # --- products
    prod_path = d / "products" / "metrics.json"
    prod = _read_json(prod_path)
    if prod:
        p = {k: prod.get(k) for k in ("crs", "gsd_m", "resolution_m", "grid", "dsm_source", "completeness",
                                      "footprint_m2", "points", "accuracy", "warnings")}
        p["meshes"] = {name: {k: m.get(k) for k in ("vertices", "faces", "colors")}
                       for name, m in (prod.get("meshes") or {}).items()}
        out["products"] = p
        for k in ("gsd_m", "completeness", "footprint_m2", "points", "accuracy", "meshes"):
            src.add(f"products.{k}", prod_path, k)
    else:
        missing["products"] = "products/metrics.json is absent: the products stage has not run yet"
    out["files"] = _product_files(d, prod, src)

    # --- stage time and memory
    stages = read_benchmarks(benchmarks_dir, scene)
    for s in stages:
        for j in s["jobs"]:
            src.add(f"stages.{s['stage']}.{j['job']}", j["file"], "s, max_rss, cpu_time")
            j["file"] = src.rel(j["file"])
    out["stages"] = stages
    if not stages:
        missing["stages"] = f"no benchmark table of {scene} under {src.rel(Path(benchmarks_dir))}"

    out["headline"] = _headline(out, src)
    out["missing"] = missing
    out["sources"] = src.map
    return _clean(out)


def _product_files(d: Path, prod: dict | None, src: _Sources) -> list[dict]:
    """The deliverables on disk, with their sizes (measured here) and what each is."""
    described = {k: v.get("what") for k, v in ((prod or {}).get("files") or {}).items() if isinstance(v, dict)}
    found = []
    pdir = d / "products"
    if pdir.is_dir():
        found += [f for f in sorted(pdir.iterdir()) if f.is_file() and not f.name.startswith(".")]
    found += [f for f in (d / "merged" / "splats.ply",) if f.is_file()]
    rdir = d / "report"
    if rdir.is_dir():
        found += [f for f in sorted(rdir.iterdir()) if not f.name.startswith(".")
                  and f.name not in ("metrics.json", "report.html") and (f.is_file() or f.name == "ept")]
    rows = []
    for f in found:
        rel = f.relative_to(d).as_posix()
        what = described.get(f.name) or DESCRIPTIONS.get(f.name)
        if what is None and f.suffix == ".qgz":
            what = "QGIS project opening every product, styled"
        if what is None and f.name.startswith("mesh"):
            what = "3D mesh" + (" (offset and CRS of the glb)" if f.suffix == ".json" else f" ({f.suffix[1:]})")
        rows.append({"path": rel, "bytes": _path_size(f), "what": what or ""})
        src.add(f"files.{rel}", f, how="size on disk" + (" (folder total)" if f.is_dir() else ""))
    return rows


def _headline(m: dict, src: _Sources) -> dict:
    """The four numbers a person reads first, each with its origin."""
    h: dict[str, Any] = {}
    ph = m.get("photos") or {}
    if ph.get("registered") is not None:
        h["registered_photos"] = {"value": ph["registered"], "of": ph.get("total"),
                                  "text": f"{ph['registered']} / {ph.get('total', '?')}"}
        src.map["headline.registered_photos"] = dict(src.map["photos.registered"])
    g = (m.get("georef") or {}).get("headline")
    if g:
        h["georef_rmse_m"] = {"value": g["horizontal"], "vertical": g.get("vertical"), "over": g["label"],
                              "count": g.get("count"), "text": f"{g['horizontal']:.3f} m"}
        n = g.get("count") or 0
        what = {"check points": "check point", "GCPs": "GCP", "GPS": "camera GPS position"}[g["label"]]
        fit = " (in the fit)" if g["label"] == "GCPs" else ""
        h["georef_rmse_m"]["note"] = f"horizontal, {_plural(n, what)}{fit}" + (
            f" · vertical {g['vertical']:.3f} m" if g.get("vertical") is not None else "")
        src.map["headline.georef_rmse_m"] = dict(src.map[f"georef.{g['from']}"])
    ho = m.get("heldout") or {}
    if ho.get("psnr_db") is not None:
        h["heldout_psnr_db"] = {"value": ho["psnr_db"], "text": f"{ho['psnr_db']:.2f} dB",
                                "note": (f"SSIM {ho['ssim']:.3f}, " if ho.get("ssim") is not None else "")
                                + f"{_plural(len(ho.get('views') or []), 'photo')} never trained on"}
        src.map["headline.heldout_psnr_db"] = dict(src.map["heldout.psnr_db"])
    acc = ((m.get("products") or {}).get("accuracy") or {}).get("dsm") or {}
    if acc.get("median_abs_m") is not None:
        h["dsm_median_error_m"] = {"value": acc["median_abs_m"], "text": f"{acc['median_abs_m']:.2f} m",
                                   "note": f"|DSM − reference| over {_f(acc.get('cells'), 0)} cells"}
        src.map["headline.dsm_median_error_m"] = {**src.map["products.accuracy"], "key": "accuracy.dsm.median_abs_m"}
    return h


def write_metrics(metrics: dict, out_json) -> None:
    """`report/metrics.json`, atomically."""
    write_json(out_json, _clean(metrics))


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
                         "figure.dpi": 100, "savefig.dpi": 130, "font.family": "DejaVu Sans"})
    return plt


def _fig_uri(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_uri(img, max_side: int = 800, fmt: str = "PNG") -> str:
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img))
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=88)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_preview(path: Path, max_px: int = PREVIEW_PX) -> dict | None:
    """A raster decimated to at most `max_px` a side (from its overviews): data, mask, bounds, pixel size."""
    import rasterio
    from rasterio.enums import Resampling

    try:
        with rasterio.open(path) as ds:
            f = max(1.0, max(ds.width, ds.height) / max_px)
            w, h = max(1, round(ds.width / f)), max(1, round(ds.height / f))
            data = ds.read(out_shape=(ds.count, h, w), resampling=Resampling.average, masked=True)
            b = ds.bounds
            return {"data": data, "bounds": (b.left, b.bottom, b.right, b.top),
                    "pixel_m": (b.right - b.left) / w, "count": ds.count, "dtype": ds.dtypes[0]}
    except Exception as exc:  # an unreadable raster is reported, not fatal
        log.warning("cannot read %s for the report: %s", path, exc)
        return None


def _ortho_rgba(prev: dict) -> np.ndarray:
    """[H, W, 4] uint8 of an RGBA, RGB or grey orthophoto (no alpha band: opaque where not nodata)."""
    data = np.asarray(prev["data"].filled(0))
    if prev["count"] >= 4:
        bands = data[:4]
    else:
        rgb = data[:3] if prev["count"] >= 3 else np.repeat(data[:1], 3, axis=0)
        alpha = np.where(np.ma.getmaskarray(prev["data"][0]), 0, 255)[None]
        bands = np.concatenate([rgb, alpha])
    return np.clip(np.moveaxis(bands, 0, -1), 0, 255).astype(np.uint8)


def _local_extent(bounds, origin) -> tuple:
    ox, oy = origin[0], origin[1]
    return (bounds[0] - ox, bounds[2] - ox, bounds[1] - oy, bounds[3] - oy)


def _axes_labels(ax, origin) -> None:
    ax.set_xlabel(f"metres east of E {origin[0]:,.0f}".replace(",", " "))
    ax.set_ylabel(f"metres north of N {origin[1]:,.0f}".replace(",", " "))
    ax.set_aspect("equal")


def camera_centres(manifest: dict) -> dict[str, np.ndarray]:
    """Camera centres in the local frame from the manifest's world-to-camera matrices."""
    out = {}
    for name, cam in (manifest.get("cameras") or {}).items():
        w2c = np.asarray(cam.get("w2c"), float)
        if w2c.shape[0] >= 3 and w2c.shape[1] >= 4:
            R, t = w2c[:3, :3], w2c[:3, 3]
            out[name] = -R.T @ t
    return out


def _nice_scale(target: float) -> float:
    """1, 2 or 5 times a power of ten, near `target`."""
    if target <= 0 or not math.isfinite(target):
        return 1.0
    e = math.floor(math.log10(target))
    return min((m * 10 ** e for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / target)))


def plot_camera_map(metrics: dict, manifest: dict, ortho: dict | None, origin) -> tuple[str, str]:
    """Cameras with their georeferencing residual arrows over the orthophoto: (data URI, caption)."""
    plt = _pyplot()
    centres = camera_centres(manifest)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    if ortho is not None:
        ax.imshow(_ortho_rgba(ortho), extent=_local_extent(ortho["bounds"], origin), interpolation="bilinear")
    per = {p["image"]: p for p in (metrics.get("georef") or {}).get("per_image", [])}
    names = sorted(centres)
    xy = np.array([centres[n][:2] for n in names]).reshape(-1, 2)
    heldout = set((metrics.get("partitions") or {}).get("heldout") or [])
    res = np.array([[per.get(n, {}).get("dx") or 0.0, per.get(n, {}).get("dy") or 0.0] for n in names]).reshape(-1, 2)
    outlier = np.array([per.get(n, {}).get("inlier") is False for n in names], bool)
    extent = np.ptp(xy, axis=0).max() if len(xy) > 1 else 10.0
    biggest = np.hypot(res[:, 0], res[:, 1]).max() if len(res) else 0.0
    k = _nice_scale(0.08 * extent / biggest) if biggest > 0 else 1.0
    ho = np.array([n in heldout for n in names], bool)
    ax.scatter(xy[~ho, 0], xy[~ho, 1], s=26, c=BLUE, edgecolors="white", linewidths=0.8, zorder=3,
               label="camera (training)")
    if ho.any():
        ax.scatter(xy[ho, 0], xy[ho, 1], s=40, marker="D", c="#facc15", edgecolors="black", linewidths=0.7,
                   zorder=3, label="camera (held out)")
    if outlier.any():
        ax.scatter(xy[outlier, 0], xy[outlier, 1], s=90, facecolors="none", edgecolors=RED, linewidths=1.6,
                   zorder=4, label="GPS outlier")
    if biggest > 0:
        ax.quiver(xy[:, 0], xy[:, 1], res[:, 0] * k, res[:, 1] * k, angles="xy", scale_units="xy", scale=1,
                  color=ORANGE, width=0.004, headwidth=4, zorder=5, label=f"GPS residual ×{k:g}")
    if len(xy):  # every camera in view, with the orthophoto (if any) around them
        pad = 0.08 * extent
        x0, x1 = xy[:, 0].min() - pad, xy[:, 0].max() + pad
        y0, y1 = xy[:, 1].min() - pad, xy[:, 1].max() + pad
        if ortho is not None:
            e = _local_extent(ortho["bounds"], origin)
            x0, x1, y0, y1 = min(x0, e[0]), max(x1, e[1]), min(y0, e[2]), max(y1, e[3])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8.5, frameon=False)
    ax.grid(False)
    _axes_labels(ax, origin)
    where = f"{len(names)} cameras (local frame){' over the orthophoto' if ortho is not None else ''}."
    caption = (f"{where} Arrows: GPS position minus fitted camera centre, scaled ×{k:g} to be seen "
               f"(largest {biggest:.2f} m).") if biggest > 0 else where
    return _fig_uri(fig), caption


def plot_partition_map(metrics: dict, manifest: dict, ortho: dict | None, origin) -> str:
    """The partition cells (solid, labelled) and their overlap bounds (dashed) with the cameras."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(8.5, 7))
    if ortho is not None:
        ax.imshow(_ortho_rgba(ortho), extent=_local_extent(ortho["bounds"], origin), alpha=0.45,
                  interpolation="bilinear")
    items = (metrics.get("partitions") or {}).get("items") or []
    allx, ally = [], []
    for i, p in enumerate(items):
        col = PART_COLOURS[i % len(PART_COLOURS)]
        cb, eb = p.get("cell_bounds"), p.get("expanded_bounds")
        if eb:
            ax.add_patch(Rectangle((eb[0], eb[1]), eb[2] - eb[0], eb[3] - eb[1], fill=False, ls="--", lw=1.2,
                                   ec=col, alpha=0.8))
            allx += [eb[0], eb[2]]
            ally += [eb[1], eb[3]]
        if cb:
            ax.add_patch(Rectangle((cb[0], cb[1]), cb[2] - cb[0], cb[3] - cb[1], fc=col, alpha=0.12, ec=col, lw=2))
            ax.text((cb[0] + cb[2]) / 2, (cb[1] + cb[3]) / 2, f"{p['id']}\n{p['images']} photos", ha="center",
                    va="center", fontsize=12, fontweight="bold", color=col,
                    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=col, alpha=0.9))
            allx += [cb[0], cb[2]]
            ally += [cb[1], cb[3]]
    centres = camera_centres(manifest)
    if centres:
        xy = np.array([c[:2] for c in centres.values()])
        ax.scatter(xy[:, 0], xy[:, 1], s=10, c="black", alpha=0.6, zorder=3, label="camera")
        allx += list(xy[:, 0])
        ally += list(xy[:, 1])
    if allx:
        px, py = 0.05 * (max(allx) - min(allx)), 0.05 * (max(ally) - min(ally))
        ax.set_xlim(min(allx) - px, max(allx) + px)
        ax.set_ylim(min(ally) - py, max(ally) + py)
    from matplotlib.lines import Line2D
    ax.legend(handles=[Line2D([], [], color=GREY, lw=2, label="cell (what the partition delivers)"),
                       Line2D([], [], color=GREY, lw=1.2, ls="--", label="cell + overlap (what it trains on)"),
                       Line2D([], [], color="black", marker="o", ls="", ms=3, label="camera")],
              loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8.5, frameon=False)
    ax.grid(False)
    _axes_labels(ax, origin)
    return _fig_uri(fig)


def plot_training_curves(training: dict) -> str | None:
    """Loss and training PSNR over steps, one line per partition (the reference dashed)."""
    curves = {pid: t["curve"] for pid, t in training.items() if t.get("curve")}
    if not curves:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (pid, c) in enumerate(curves.items()):
        ref = training[pid].get("reference")
        style = dict(color=GREY, ls="--", lw=1.4) if ref else dict(color=PART_COLOURS[i % len(PART_COLOURS)], lw=1.8)
        label = "monolithic (reference)" if ref else pid
        steps = np.asarray(c["step"], float)
        for ax, key in ((a1, "loss"), (a2, "psnr")):
            vals = np.array([np.nan if v is None else v for v in c.get(key) or []], float)
            if len(vals) == len(steps) and np.isfinite(vals).any():
                ax.plot(steps, vals, marker="o", ms=3, label=label, **style)
    a1.set_title("Training loss (L1 + SSIM, logged step)")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a2.set_title("Training PSNR (mean since previous point)")
    a2.set_xlabel("step")
    a2.set_ylabel("PSNR (dB)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return _fig_uri(fig)


def plot_elevation(dsm: dict, dtm: dict | None) -> str:
    """DSM (and DTM, on the same colour scale) as hypsometric colours over a hillshade, with a colour bar.

    The scale runs over the 5-99 % heights of the DSM: pits and spikes (the usual outliers of a
    surface model) are drawn at the ends of the ramp instead of squeezing the terrain into one colour.
    """
    plt = _pyplot()
    from matplotlib.colors import LightSource, ListedColormap, Normalize

    panels = [("DSM (highest surface)", dsm)] + ([("DTM (ground)", dtm)] if dtm is not None else [])
    vals = np.ma.compressed(dsm["data"][0])
    lo, hi = (np.percentile(vals, [5, 99]) if vals.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    # matplotlib's "terrain" without its blue end: low ground must not read as water.
    cmap = ListedColormap(plt.get_cmap("terrain")(np.linspace(0.25, 0.95, 256)))
    norm = Normalize(lo, hi)
    ls = LightSource(azdeg=315, altdeg=45)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels) + 1.2, 5), squeeze=False)
    for ax, (title, prev) in zip(axes[0], panels):
        z = prev["data"][0]
        mask = np.ma.getmaskarray(z)
        zf = np.asarray(z.filled(np.ma.median(z) if z.count() else 0.0), float)
        shade = ls.hillshade(zf, vert_exag=2.0, dx=prev["pixel_m"], dy=prev["pixel_m"])
        rgb = cmap(norm(zf))[..., :3] * (0.35 + 0.65 * shade[..., None])
        rgba = np.dstack([np.clip(rgb, 0, 1), (~mask).astype(float)])
        b = prev["bounds"]
        ax.imshow(rgba, extent=(b[0], b[2], b[1], b[3]), interpolation="bilinear")
        ax.set_title(title)
        ax.set_axis_off()
        ax.set_aspect("equal")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=list(axes[0]), fraction=0.035, pad=0.02, extend="both")
    cb.set_label("height (m)")
    return _fig_uri(fig)


def plot_ortho(ortho: dict, origin) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 7))
    ax.imshow(_ortho_rgba(ortho), extent=_local_extent(ortho["bounds"], origin), interpolation="bilinear")
    ax.grid(False)
    _axes_labels(ax, origin)
    return _fig_uri(fig)


# ----------------------------------------------------------------------------- HTML

CSS = """
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f3f4f6; --card:#fff; --accent:#2563eb;
        --warn:#b45309; --warnbg:#fffbeb; }
* { box-sizing: border-box; }
html { color-scheme: light; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
       "Liberation Sans", sans-serif; }
header { background:#111827; color:#f9fafb; padding:28px 0 30px; }
.wrap { max-width:1120px; margin:0 auto; padding:0 24px; }
header h1 { margin:0; font-size:28px; font-weight:650; letter-spacing:-0.01em; }
header .sub { color:#9ca3af; margin-top:4px; font-size:14px; }
.cards { display:grid; grid-template-columns:repeat(4, minmax(0, 1fr)); gap:14px; margin-top:22px; }
.card { background:#1f2937; border:1px solid #374151; border-radius:10px; padding:14px 16px; }
.card .k { color:#9ca3af; font-size:12px; text-transform:uppercase; letter-spacing:0.05em; }
.card .v { font-size:26px; font-weight:650; margin-top:2px; font-variant-numeric: tabular-nums; }
.card .n { color:#9ca3af; font-size:12.5px; margin-top:2px; }
.card.na .v { color:#6b7280; font-size:18px; font-weight:500; padding:5px 0 3px; }
nav { background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:2; }
nav .wrap { display:flex; flex-wrap:wrap; gap:4px 18px; padding-top:10px; padding-bottom:10px; font-size:14px; }
nav a { color:var(--ink); text-decoration:none; }
nav a:hover { color:var(--accent); }
main { padding:8px 0 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:22px 26px;
          margin:22px 0; }
section h2 { margin:0 0 4px; font-size:20px; font-weight:650; }
section h3 { margin:22px 0 8px; font-size:15.5px; font-weight:650; }
p.lead { color:var(--muted); margin:0 0 14px; }
.missing { background:var(--warnbg); border:1px solid #fcd34d; color:var(--warn); border-radius:8px;
           padding:10px 14px; margin:10px 0; font-size:14px; }
table { border-collapse:collapse; width:100%; font-size:14px; margin:6px 0 4px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { font-weight:600; color:#374151; background:#f9fafb; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tbody tr:hover { background:#f9fafb; }
table.kv { width:auto; min-width:55%; }
table.kv th { background:none; color:var(--muted); font-weight:500; }
figure { margin:14px 0; }
figure img { max-width:100%; height:auto; display:block; border-radius:6px; }
figure img.map { max-width:880px; margin:0 auto; }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:10px; }
.pair img { width:100%; image-rendering:auto; border:1px solid var(--line); }
.pair .lab { font-size:12.5px; color:var(--muted); margin:2px 0 0; }
.views { display:grid; grid-template-columns:1fr 1fr; gap:18px 26px; }
.ok { color:#15803d; } .bad { color:#b91c1c; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
       background:#f3f4f6; padding:1px 4px; border-radius:4px; }
details summary { cursor:pointer; color:var(--accent); margin:8px 0; }
footer { color:var(--muted); font-size:13px; padding:0 0 30px; }
@media (max-width: 800px) { .cards, .views { grid-template-columns:1fr 1fr; } }
@media print { nav { display:none; } section { break-inside:avoid; } }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _f(v, digits: int = 2, unit: str = "") -> str:
    n = _num(v)
    if n is None:
        return "–"
    return f"{n:,.{digits}f}".replace(",", " ") + (f" {unit}" if unit else "")


def _size(nbytes) -> str:
    n = _num(nbytes)
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def _table(headers: list[str], rows: list[list], num_cols: set[int] = frozenset(), cls: str = "") -> str:
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in num_cols else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv"><tbody>' + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</tbody></table>"


def _missing(text: str) -> str:
    return f'<div class="missing">{_e(text)}</div>'


def _figure(uri: str, caption: str = "", alt: str = "", cls: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    klass = f' class="{cls}"' if cls else ""
    return f'<figure><img{klass} src="{uri}" alt="{_e(alt or caption)}">{cap}</figure>'


def _src_note(metrics: dict, *figures: str) -> str:
    """'From <file> (<keys>)' for the figures a table shows, so the reader can trace them."""
    by_file: dict[str, list[str]] = {}
    for fig in figures:
        s = metrics.get("sources", {}).get(fig)
        if s:
            keys = by_file.setdefault(s["file"], [])
            if s.get("key") and s["key"] not in keys:
                keys.append(s["key"])
    parts = [f"<code>{_e(f)}</code>" + (f" ({_e('; '.join(k))})" if k else "") for f, k in by_file.items()]
    return f'<figcaption>From {", ".join(parts)}.</figcaption>' if parts else ""


def _safe(section: str, fn, *args) -> str:
    """A section's HTML; a section that cannot be drawn says so instead of failing the report."""
    try:
        return fn(*args)
    except Exception as exc:  # the report must come out even when one input is odd
        log.exception("report section %s failed", section)
        return _missing(f"This section could not be drawn: {type(exc).__name__}: {exc}")


def _sec_photos(m: dict) -> str:
    ph, sfm = m.get("photos") or {}, m.get("sfm")
    parts = []
    if not ph and not sfm:
        return _missing(m["missing"].get("ingest") or m["missing"].get("sfm", "no photo figures"))
    rows = [("Photos used", _f(ph.get("used"), 0)), ("Photos skipped at ingest", _f(ph.get("skipped"), 0)),
            ("Registered by SfM", f"{_f(ph.get('registered'), 0)} of {_f(ph.get('total'), 0)}"
             + (f" ({100 * ph['registered_fraction']:.0f} %)" if ph.get("registered_fraction") is not None else ""))]
    if sfm:
        rows += [("Mean reprojection error", _f(sfm.get("mean_reproj_error_px"), 3, "px")),
                 ("Sparse points", _f(sfm.get("num_points3d"), 0)),
                 ("Mean track length", _f(sfm.get("mean_track_length"), 2, "images")),
                 ("Matching / mapping", _e(f"{sfm.get('matcher')} / {sfm.get('mapper')}")),
                 ("Pose priors (GPS)", _f(sfm.get("pose_priors"), 0))]
    parts.append(_kv(rows) + _src_note(m, "photos.used", "photos.registered", "sfm.mean_reproj_error_px"))
    if sfm and sfm.get("weak_connection"):
        parts.append(_missing(f"Weak connection in the SfM model: {json.dumps(sfm['weak_connection'])[:400]}"))
    if ph.get("unregistered"):
        parts.append(_missing("Not registered: " + ", ".join(ph["unregistered"][:30])
                              + (" …" if len(ph["unregistered"]) > 30 else "")))
    if ph.get("skipped_list"):
        parts.append("<h3>Skipped photos</h3>" + _table(["Photo", "Reason"], [[_e(r["name"]), _e(r["reason"])]
                                                                               for r in ph["skipped_list"]]))
    cams = m.get("cameras") or []
    if cams:
        rows = []
        for c in cams:
            src = _e(c.get("intrinsics_source") or "–")
            if c.get("calibration_date"):
                src += f" ({_e(c['calibration_date'])})"
            refined = {True: "refined", False: "held fixed"}.get(c.get("focal_refined"), "–")
            rows.append([_e(c.get("camera_id")), _e(" ".join(x for x in (c.get("make"), c.get("model")) if x) or "–"),
                         _f(c.get("photos"), 0), f"{_e(c.get('width'))} × {_e(c.get('height'))}",
                         _e(c.get("camera_model")), _f(c.get("focal_px_start"), 1), _f(c.get("focal_px"), 1),
                         src, refined])
        fs = m.get("focal_sources") or {}
        parts.append("<h3>Camera calibration</h3>"
                     + _table(["Camera", "Make / model", "Photos", "Size (px)", "Model", "Focal prior (px)",
                               "Focal final (px)", "Calibration source", "Focal"], rows, {2, 5, 6})
                     + ("<figcaption>Focal length source per photo: "
                        f'{_e(", ".join(f"{k}: {v}" for k, v in fs.items()))}. '
                        if fs else "<figcaption>")
                     + "Final intrinsics after bundle adjustment.</figcaption>")
    return "".join(parts)


def _sec_georef(m: dict, cam_map: tuple[str, str] | None, reason_no_map: str | None) -> str:
    g = m.get("georef")
    if not g:
        return _missing(m["missing"].get("georef", "no georeferencing figures"))
    parts = [_kv([("Delivery CRS", _e(f"EPSG:{g.get('epsg')} — {g.get('crs_name')}")),
                  ("Method", _e(g.get("method"))),
                  ("Local-frame origin (E, N, H)", _e(", ".join(f"{v:,.1f}".replace(",", " ")
                                                               for v in g.get("origin") or []))),
                  ("SfM → local scale", _f(g.get("scale"), 4)),
                  ("GPS outliers", _e(", ".join(g.get("outliers") or []) or "none"))])]
    rows = []
    for key, label in (("rmse_images_m", "Camera GPS positions (all)"), ("rmse_gcp_m", "GCPs (in the fit)"),
                       ("rmse_check_m", "Check points (not in the fit)")):
        r = g.get(key)
        if r:
            rows.append([_e(label), _f(r.get("count"), 0), _f(r.get("horizontal"), 3), _f(r.get("vertical"), 3)])
    if g.get("gt_camera_rmse_m") is not None:
        rows.append(["Camera centres vs true poses (synthetic scene)", _f(g.get("gt_cameras_compared"), 0),
                     _f(g.get("gt_camera_rmse_horizontal_m"), 3), _f(g.get("gt_camera_rmse_vertical_m"), 3)])
    parts.append("<h3>Residuals</h3>" + _table(["Residuals of", "Count", "Horizontal RMSE (m)", "Vertical RMSE (m)"],
                                                rows, {1, 2, 3})
                 + _src_note(m, "georef.rmse_images_m", "georef.rmse_gcp_m")
                 + ("" if g.get("check_points") else
                    '<figcaption>No check points: every ground control point was used in the fit, so the GCP '
                    "residuals show fit quality, not independent accuracy.</figcaption>"
                    if g.get("gcps") else ""))
    if cam_map:
        parts.append(_figure(cam_map[0], cam_map[1], "camera map", "map"))
    elif reason_no_map:
        parts.append(_missing(reason_no_map))
    for key, title in (("gcps", "Ground control points"), ("check_points", "Check points")):
        pts = g.get(key) or []
        if pts:
            rows = [[_e(p["name"]), _f(p.get("dx"), 3), _f(p.get("dy"), 3), _f(p.get("dz"), 3),
                     _f(p.get("horizontal_m"), 3), _e(f"{p.get('used', '–')} / {p.get('observations', '–')}"),
                     _f(p.get("reproj_px"), 2),
                     {True: '<span class="ok">yes</span>',
                      False: '<span class="bad">no</span>'}.get(p.get("inlier"), "–")]
                    for p in pts]
            parts.append(f"<h3>{title}</h3>" + _table(
                ["Name", "dE (m)", "dN (m)", "dH (m)", "Horizontal (m)", "Marks used / all", "Reprojection (px)",
                 "Inlier"], rows, {1, 2, 3, 4, 5, 6}))
    per = g.get("per_image") or []
    if per:
        rows = [[_e(p["image"]), _f(p.get("dx"), 2), _f(p.get("dy"), 2), _f(p.get("dz"), 2),
                 _f(p.get("horizontal_m"), 2),
                 {True: "yes", False: '<span class="bad">no (outlier)</span>'}.get(p.get("inlier"), "–")] for p in per]
        parts.append(f"<details><summary>Per-image GPS residuals ({len(per)} photos)</summary>"
                     + _table(["Photo", "dE (m)", "dN (m)", "dH (m)", "Horizontal (m)", "Inlier"], rows, {1, 2, 3, 4})
                     + "<figcaption>Residual = GPS position − fitted camera centre.</figcaption></details>")
    return "".join(parts)


def _sec_partitions(m: dict, part_map: str | None) -> str:
    p = m.get("partitions")
    if not p:
        return _missing(m["missing"].get("partitions", "no partitions"))
    grid = p.get("grid") or []
    parts = [_kv([("Grid", _e(" × ".join(str(v) for v in grid) or "–")), ("Partitions", _f(p.get("count"), 0)),
                  ("Overlap margin",
                   _f(100 * p["overlap"], 0, "% of the cell") if p.get("overlap") is not None else "–"),
                  ("Held-out photos (never trained on)", _f(len(p.get("heldout") or []), 0))])]
    if part_map:
        parts.append(_figure(part_map, "Cells in the local frame; each partition trains on the photos that "
                             "see its cell plus the overlap margin, and delivers only its cell.",
                             "partition map", "map"))
    rows = []
    tr = m.get("training") or {}
    for it in p.get("items") or []:
        cb = it.get("cell_bounds") or [0, 0, 0, 0]
        t = tr.get(it["id"], {})
        rows.append([_e(it["id"]), _f(it.get("images"), 0), _f(cb[2] - cb[0], 1), _f(cb[3] - cb[1], 1),
                     _f(t.get("num_gaussians"), 0)])
    parts.append(_table(["Partition", "Photos", "Cell width (m)", "Cell height (m)", "Gaussians trained"], rows,
                        {1, 2, 3, 4}) + _src_note(m, "partitions"))
    for w in p.get("warnings") or []:
        parts.append(_missing(str(w)))
    return "".join(parts)


def _sec_training(m: dict, curves: str | None) -> str:
    tr = m.get("training") or {}
    if not tr:
        return _missing(m["missing"].get("training", "no training figures"))
    parts = []
    if curves:
        parts.append(_figure(curves, "Loss of the logged step and PSNR on the training photos averaged since "
                             "the previous point, as the trainer logged them. Jumps follow the resolution "
                             "schedule (coarse images first).", "training curves"))
    else:
        parts.append(_missing("No training curve: neither the partitions' metrics nor their training logs "
                              "hold per-step figures."))
    rows = []
    for pid, t in tr.items():
        rows.append([_e("monolithic (reference)" if t.get("reference") else pid), _e(t.get("device") or "–"),
                     _f(t.get("num_images"), 0), _f(t.get("steps"), 0), _f(t.get("num_gaussians"), 0),
                     _f(t.get("train_psnr"), 2), _f(t.get("iterations_per_second"), 2), _f(t.get("seconds"), 0),
                     _e(t.get("resumed_from_step") if t.get("resumed_from_step") is not None else "–")])
    parts.append(_table(["Partition", "Device", "Photos", "Steps", "Gaussians", "Train PSNR (dB)", "Steps/s",
                         "Time (s)", "Resumed from step"], rows, {2, 3, 4, 5, 6, 7, 8})
                 + _src_note(m, *[f"training.{pid}" for pid in tr], *[f"training.{pid}.curve" for pid in tr]))
    return "".join(parts)


def _sec_heldout(m: dict, d: Path) -> str:
    ho = m.get("heldout")
    if not ho:
        return _missing(m["missing"].get("heldout", "no held-out figures"))
    rows = [("PSNR (raw render vs photo)", _f(ho.get("psnr_db"), 2, "dB")), ("SSIM", _f(ho.get("ssim"), 3)),
            ("PSNR, render auto-exposed", _f(ho.get("psnr_auto_exposure_db"), 2, "dB")),
            ("PSNR, appearance fitted on the left half", _f(ho.get("psnr_appearance_fit_db"), 2, "dB"))]
    if ho.get("monolithic_psnr_db") is not None:
        rows.append(("One-partition reference: PSNR / SSIM",
                     f"{_f(ho.get('monolithic_psnr_db'), 2, 'dB')} / {_f(ho.get('monolithic_ssim'), 3)}"))
    seam = ho.get("seam") or {}
    if seam.get("border_psnr") is not None or seam.get("interior_psnr") is not None:
        rows.append(("PSNR at cell borders / inside cells",
                     f"{_f(seam.get('border_psnr'), 2, 'dB')} / {_f(seam.get('interior_psnr'), 2, 'dB')}"))
    if ho.get("depth_median_abs_error_m") is not None:
        rows.append(("Depth median error vs reference", f"{_f(ho['depth_median_abs_error_m'], 3, 'm')} "
                     f"(GSD {_f(ho.get('depth_gsd_m'), 3, 'm')})"))
    rows.append(("Gaussians in the merged model", _f(ho.get("num_gaussians"), 0)))
    parts = [_kv(rows) + _src_note(m, "heldout.psnr_db")]
    views = ho.get("views") or []
    shown = []
    render_dir = d / "merged" / "heldout"
    from PIL import Image

    for v in views:
        f = render_dir / f"{Path(v['name']).stem}.png"
        if not f.is_file() or len(shown) >= MAX_HELDOUT_SHOWN:
            continue
        with Image.open(f) as im:
            im = im.convert("RGB")
            w = im.width // 2  # the evaluate stage saves render | photo side by side
            render, photo = im.crop((0, 0, w, im.height)), im.crop((w, 0, 2 * w, im.height))
            pair = (f'<div class="pair"><div><img src="{_image_uri(render, 640)}" alt="render of {_e(v["name"])}">'
                    f'<div class="lab">render</div></div><div><img src="{_image_uri(photo, 640)}" '
                    f'alt="photo {_e(v["name"])}"><div class="lab">photo</div></div></div>')
        shown.append(f"<figure>{pair}<figcaption><b>{_e(v['name'])}</b>: PSNR {_f(v.get('psnr_db'), 2, 'dB')}, "
                      f"SSIM {_f(v.get('ssim'), 3)}{' — across a cell border' if v.get('border') else ''}"
                      f"</figcaption></figure>")
    if shown:
        parts.append(f"<h3>Renders of photos the model never saw ({len(shown)} of {len(views)})</h3>"
                     f'<div class="views">{"".join(shown)}</div>')
    elif views:
        parts.append(_missing("No held-out renders: merged/heldout/ holds none of the held-out photos."))
    if views:
        rows = [[_e(v["name"]), _f(v.get("psnr_db"), 2), _f(v.get("ssim"), 3), _f(v.get("psnr_auto_exposure_db"), 2),
                 "yes" if v.get("border") else "no"] for v in views]
        parts.append("<h3>Per view</h3>" + _table(["Photo", "PSNR (dB)", "SSIM", "PSNR auto-exposed (dB)",
                                                   "Across a cell border"], rows, {1, 2, 3}))
    return "".join(parts)


def _sec_products(m: dict, d: Path, previews: dict) -> str:
    p = m.get("products")
    parts, orow = [], ""
    if not p:
        parts.append(_missing(m["missing"].get("products", "no product figures")))
    else:
        pts = p.get("points") or {}
        grid = p.get("grid") or {}
        parts.append(_kv([
            ("Delivery CRS", _e(p.get("crs"))),
            ("Ground sample distance (training)", _f(p.get("gsd_m"), 3, "m")),
            ("Raster resolution", _f(p.get("resolution_m"), 3, "m")
             + (f" ({_e(grid.get('width'))} × {_e(grid.get('height'))} cells)" if grid else "")),
            ("Completeness of the footprint",
             _f(100 * p["completeness"], 1, "%") if p.get("completeness") is not None else "–"),
            ("Footprint", _f(p.get("footprint_m2"), 0, "m²")),
            ("Points (ground, filter)",
             f"{_f(pts.get('count'), 0)} ({_f(pts.get('ground'), 0)}, {_e(pts.get('ground_filter') or '–')})"),
            ("Point density / spacing",
             f"{_f(pts.get('density_per_m2'), 1, 'pts/m²')} / {_f(pts.get('spacing_m'), 3, 'm')}"),
            ("DSM drawn from", _e(p.get("dsm_source") or "–")),
        ]) + _src_note(m, "products.gsd_m"))
        acc = p.get("accuracy") or {}
        rows = []
        for key, label in (("dsm", "DSM (delivered)"), ("dsm_ortho", "DSM from splats, straight down"),
                           ("dsm_cloud", "DSM from the fused cloud"), ("dsm_mvs", "DSM from plane sweep only"),
                           ("dtm", "DTM")):
            e = acc.get(key)
            if e and e.get("median_abs_m") is not None:
                rows.append([_e(label), _f(e.get("cells"), 0), _f(e.get("median_abs_m"), 3), _f(e.get("p90_abs_m"), 3),
                             _f(e.get("rmse_m"), 3), _f(e.get("bias_m"), 3)])
        if rows:
            parts.append("<h3>Accuracy against the reference surface</h3>"
                         + _table(["Raster", "Cells compared", "Median |dz| (m)", "90th pct |dz| (m)", "RMSE (m)",
                                   "Bias (m)"], rows, {1, 2, 3, 4, 5})
                         + f"<figcaption>Over {_e(acc.get('over') or 'the compared cells')}; reference: "
                           f"{_e(acc.get('truth') or '–')}.</figcaption>")
        elif p:
            parts.append(_missing("No accuracy figures: the scene has no reference surface to compare with."))
        o = acc.get("ortho") or {}
        orow = (f"Orthophoto vs reference: shift {_f(o.get('shift_abs_px'), 2, 'px')} "
                f"({_f(o.get('shift_m'), 3, 'm')}), "
                f"PSNR {_f(o.get('psnr_db'), 2, 'dB')}.") if o.get("shift_abs_px") is not None else ""
        for w in p.get("warnings") or []:
            parts.append(_missing(str(w)))
    parts.append("<h3>Elevation models</h3>")
    if previews.get("dsm"):
        parts.append(_figure(previews["dsm"], "Colour: height; shading: hillshade from the north-west. "
                             "DSM and DTM share one colour scale (5–99 % of the DSM's heights; lower and higher cells "
                             "take the ramp's end colours). White: no data.", "DSM and DTM"))
    else:
        parts.append(_missing(previews.get("dsm_reason") or "No DSM."))
    if previews.get("dtm_reason"):
        parts.append(_missing(previews["dtm_reason"]))
    parts.append("<h3>Orthophoto</h3>")
    if previews.get("ortho"):
        parts.append(_figure(previews["ortho"], orow or "True orthophoto (local frame).", "orthophoto", "map"))
    else:
        parts.append(_missing(previews.get("ortho_reason") or "No orthophoto."))
    return "".join(parts)


def _sec_files(m: dict) -> str:
    files = m.get("files") or []
    if not files:
        return _missing("No products on disk yet: products/ is empty or absent.")
    rows = [[f"<code>{_e(f['path'])}</code>", _size(f["bytes"]), _f(f["bytes"], 0), _e(f.get("what"))] for f in files]
    total = sum(f["bytes"] for f in files)
    rows.append(["<b>total</b>", f"<b>{_size(total)}</b>", _f(total, 0), ""])
    return (_table(["File", "Size", "Bytes", "What it is"], rows, {1, 2})
            + f"<figcaption>Paths relative to <code>{_e(m.get('scene_dir'))}</code>; sizes measured on disk when "
              "the report was written.</figcaption>")


def _sec_qgis(d: Path) -> str:
    f = d / "report" / "map.png"
    if not f.is_file():
        return _missing("No QGIS map: report/map.png is absent (the QGIS project has not been written, or "
                        "QGIS is not installed where the workflow ran).")
    from PIL import Image

    with Image.open(f) as im:
        uri = _image_uri(im.convert("RGB"), 1400)
    return _figure(uri, "The QGIS project's map as QGIS draws it (orthophoto, cells, cameras, footprints, GCPs).",
                   "QGIS map")


def _sec_stages(m: dict) -> str:
    st = m.get("stages") or []
    if not st:
        return _missing(m["missing"].get("stages", "no benchmark tables"))
    rows = []
    for s in st:
        name = "train (one-partition reference)" if s["stage"] == "train_monolithic" else s["stage"]
        rows.append([_e(name), _f(len(s["jobs"]), 0), _f(s.get("wall_s"), 1), _f(s.get("longest_s"), 1),
                     _f(s.get("cpu_s"), 1), _f(s.get("max_rss_mb"), 0)])
    secs = [s["wall_s"] for s in st if s.get("wall_s") is not None]
    cpu = [s["cpu_s"] for s in st if s.get("cpu_s") is not None]
    rss = [s["max_rss_mb"] for s in st if s.get("max_rss_mb") is not None]
    rows.append(["<b>all stages</b>", _f(sum(len(s["jobs"]) for s in st), 0), f"<b>{_f(sum(secs), 1)}</b>", "",
                 f"<b>{_f(sum(cpu), 1)}</b>" if cpu else "–",
                 f"<b>{_f(max(rss), 0)}</b>" if rss else "–"])
    return (_table(["Stage", "Jobs", "Wall time, all jobs (s)", "Longest job (s)", "CPU time (s)",
                    "Peak memory, largest job (MB)"], rows, {1, 2, 3, 4, 5})
            + "<figcaption>From Snakemake's benchmark tables (<code>benchmarks/&lt;rule&gt;/…tsv</code>: columns "
              "<code>s</code>, <code>cpu_time</code>, <code>max_rss</code>). Jobs of one stage may have run in "
              "parallel: their wall times add up to more than the elapsed time.</figcaption>")


def _sec_sources(m: dict) -> str:
    rows = [[f"<code>{_e(k)}</code>", f"<code>{_e(v['file'])}</code>", _e(v.get("key") or ""), _e(v.get("how") or "")]
            for k, v in sorted((m.get("sources") or {}).items())]
    return ("<details><summary>Show the source of every figure (" + str(len(rows)) + ")</summary>"
            + _table(["Figure (report/metrics.json)", "File", "Key", "How"], rows) + "</details>")


def _header(m: dict) -> str:
    h = m.get("headline") or {}
    cards = []
    for key, title in HEADLINE_TITLES.items():
        c = h.get(key)
        if c:
            s = (m.get("sources") or {}).get(f"headline.{key}", {})
            tip = f"{s.get('file', '')} {s.get('key', '')}".strip()
            note = c.get("note") or "photos in the SfM model"
            cards.append(f'<div class="card" title="{_e(tip)}"><div class="k">{_e(title)}</div>'
                         f'<div class="v">{_e(c["text"])}</div><div class="n">{_e(note)}</div></div>')
        else:
            why = {"dsm_median_error_m": "no reference surface" if m.get("products") else "products not made yet",
                   "heldout_psnr_db": "not evaluated yet", "georef_rmse_m": "not georeferenced yet",
                   "registered_photos": "SfM not run yet"}[key]
            cards.append(f'<div class="card na"><div class="k">{_e(title)}</div><div class="v">n/a</div>'
                         f'<div class="n">{_e(why)}</div></div>')
    return (f'<header><div class="wrap"><h1>{_e(m["scene"])} — quality report</h1>'
            f'<div class="sub">{_e(m.get("scene_dir"))} · written {_e(m.get("generated_utc"))}</div>'
            f'<div class="cards">{"".join(cards)}</div></div></header>')


SECTIONS = (("photos", "Photos and cameras"), ("georef", "Georeferencing"), ("partitions", "Partitions"),
            ("training", "Training"), ("heldout", "Held-out views"), ("products", "Products"),
            ("qgis", "QGIS map"), ("files", "Files delivered"), ("stages", "Time and memory"),
            ("sources", "Sources"))
LEADS = {
    "photos": "What went in, what was skipped, and how well structure from motion tied the photos together.",
    "georef": "How the model was placed on the ground: residuals of camera GPS positions, ground control "
              "points and check points after the similarity fit.",
    "partitions": "How the scene was split for training; each cell is trained as its own job.",
    "training": "Per partition, as the trainer logged it.",
    "heldout": "Photos set aside before training and rendered from the merged model: the honest measure "
               "of how well the model reproduces what a camera sees.",
    "products": "The GIS products: figures, accuracy against a reference where one exists, and previews.",
    "qgis": "",
    "files": "Everything the run delivers, with its size.",
    "stages": "What each stage cost: wall time and peak resident memory per Snakemake rule.",
    "sources": "Every figure in this report is in report/metrics.json; here is the stage file and key each "
               "came from.",
}


def render_html(metrics: dict, results_dir, out_html) -> Path:
    """Write the self-contained `report/report.html` of `metrics` (as `collect_metrics` returns them).

    `results_dir` is the same as given to `collect_metrics` (rasters, renders and the QGIS map are
    read from there). Returns the path written.
    """
    m = _clean(metrics)
    m.setdefault("missing", {})
    d = _scene_dir(results_dir, m["scene"])
    out_html = Path(out_html)
    manifest = _read_json(d / "partitions" / "manifest.json")
    origin = list((m.get("georef") or {}).get("origin") or ((manifest or {}).get("frame") or {}).get("origin")
                  or [0.0, 0.0, 0.0])
    pdir = d / "products"
    ortho = read_preview(pdir / "ortho.tif") if (pdir / "ortho.tif").is_file() else None
    previews: dict[str, str] = {}

    def raster_previews():
        dsm = read_preview(pdir / "dsm.tif") if (pdir / "dsm.tif").is_file() else None
        dtm = read_preview(pdir / "dtm.tif") if (pdir / "dtm.tif").is_file() else None
        if dsm is None:
            previews["dsm_reason"] = ("No DSM: products/dsm.tif is absent (the products stage has not run)."
                                      if not (pdir / "dsm.tif").exists() else "No DSM: products/dsm.tif is unreadable.")
        elif dsm["data"].count() == 0:
            previews["dsm_reason"] = "The DSM holds no valid cell (all nodata)."
            dsm = None
        if dsm is not None and (pdir / "dsm.tif").is_file() and dtm is None:
            previews["dtm_reason"] = (
                "No DTM: products/dtm.tif is absent. The products stage writes a DTM only where its ground "
                "filter found ground (none over water or dense canopy, for example); see the products log."
                if not (pdir / "dtm.tif").exists() else "No DTM: products/dtm.tif is unreadable.")
        if dtm is not None and dtm["data"].count() == 0:
            previews["dtm_reason"] = "The DTM holds no valid cell (all nodata)."
            dtm = None
        if dsm is not None:
            previews["dsm"] = plot_elevation(dsm, dtm)
        if ortho is not None:
            previews["ortho"] = plot_ortho(ortho, origin)
        else:
            previews["ortho_reason"] = ("No orthophoto: products/ortho.tif is absent (the products stage has not run)."
                                        if not (pdir / "ortho.tif").exists() else
                                        "No orthophoto: products/ortho.tif is unreadable.")

    cam_map, part_map, reason_no_map = None, None, None
    if manifest and camera_centres(manifest):
        try:
            cam_map = plot_camera_map(m, manifest, ortho, origin)
        except Exception as exc:
            log.exception("camera map failed")
            reason_no_map = f"The camera map could not be drawn: {exc}"
        try:
            part_map = plot_partition_map(m, manifest, ortho, origin)
        except Exception:
            log.exception("partition map failed")
    else:
        reason_no_map = ("No camera map: the camera positions come from partitions/manifest.json, which is "
                         "absent (the scene has not been partitioned yet).")
    try:
        curves = plot_training_curves(m.get("training") or {})
    except Exception:
        log.exception("training curves failed")
        curves = None
    try:
        raster_previews()
    except Exception as exc:
        log.exception("raster previews failed")
        previews.setdefault("dsm_reason", f"The raster previews could not be drawn: {exc}")
    bodies = {
        "photos": _safe("photos", _sec_photos, m),
        "georef": _safe("georef", _sec_georef, m, cam_map, reason_no_map),
        "partitions": _safe("partitions", _sec_partitions, m, part_map),
        "training": _safe("training", _sec_training, m, curves),
        "heldout": _safe("heldout", _sec_heldout, m, d),
        "products": _safe("products", _sec_products, m, d, previews),
        "qgis": _safe("qgis", _sec_qgis, d),
        "files": _safe("files", _sec_files, m),
        "stages": _safe("stages", _sec_stages, m),
        "sources": _safe("sources", _sec_sources, m),
    }
    nav = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS)
    sections = "".join(
        f'<section id="{k}"><h2>{_e(t)}</h2>' + (f'<p class="lead">{_e(LEADS[k])}</p>' if LEADS.get(k) else "")
        + bodies[k] + "</section>" for k, t in SECTIONS)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(m['scene'])} — aerosplat quality report</title><style>{CSS}</style></head><body>"
        + _header(m) + f'<nav><div class="wrap">{nav}</div></nav><main><div class="wrap">{sections}</div></main>'
        + f'<footer><div class="wrap">aerosplat quality report of {_e(m["scene"])} · figures in '
          f'<code>report/metrics.json</code></div></footer></body></html>\n')
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_html


def build_report(results_dir, benchmarks_dir, scene: str, out_json, out_html, logs_dir=None) -> dict:
    """Rule `report`: collect the figures, write `report/metrics.json`, then `report/report.html`."""
    metrics = collect_metrics(results_dir, benchmarks_dir, scene, logs_dir=logs_dir)
    write_metrics(metrics, out_json)
    render_html(metrics, results_dir, out_html)
    h = metrics.get("headline") or {}
    log.info("report of %s: %s", scene, ", ".join(f"{k} {v['text']}" for k, v in h.items()) or "no headline figures")
    for k, why in metrics.get("missing", {}).items():
        log.info("report: %s: %s", k, why)
    return metrics
