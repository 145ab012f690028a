"""`python -m aerosplat.summary results/<scene>`: the figures of a finished run, in a few lines."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

from .ingest import DUPLICATE_REASON


def summarize(scene_dir: str | Path) -> str:
    d = Path(scene_dir)
    lines = [f"scene: {d.name} ({d})"]
    skipped = d / "ingest" / "skipped.csv"
    if skipped.is_file():
        with open(skipped, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        table = d / "ingest" / "exif.csv"
        used = max(0, len(table.read_text(encoding="utf-8").splitlines()) - 1) if table.is_file() else 0
        kinds = Counter("duplicate" if r["reason"].startswith(DUPLICATE_REASON) else "unreadable" for r in rows)
        lines.append(f"  ingest: {used} photos used, {len(rows)} skipped"
                     + (f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}: {', '.join(r['name'] for r in rows[:5])}"
                        f"{', ...' if len(rows) > 5 else ''}; see {skipped})" if rows else ""))
    sfm = d / "sfm" / "report.json"
    if sfm.is_file():
        r = json.loads(sfm.read_text())
        lines.append(f"  sfm: {r['registered']}/{r['total']} registered, {r['mean_reproj_error_px']:.3f} px mean "
                     f"reprojection error, {r['num_points3d']} points, track length "
                     f"{r['mean_track_length']:.2f}, {r['seconds']:.0f} s ({r['matcher']}, {r['mapper']})")
        weak = r.get("weak_connection")
        if weak:
            lines.append(f"    WARNING (sfm): weak connection: {weak['shared_points']} of {weak['points']} points hold "
                         f"{len(weak['groups'])} groups of images together: "
                         + "; ".join(f"{len(g)} images from {g[0]} to {g[-1]}" for g in weak["groups"]))
        for cam in r.get("camera_sources", []):
            final = r.get("cameras", {}).get(str(cam["camera_id"]), {})
            focal = final.get("params", cam["params_start"])[0]
            lines.append(f"    camera {cam['camera_id']} ({cam['make']} {cam['model']}, {cam['images']} photos): "
                         f"{final.get('model', cam['model_start'])}, focal {focal:.1f} px from "
                         f"{cam['intrinsics_source']}"
                         + (f" of {cam['calibration_date']}" if cam.get("calibration_date") else "")
                         + (", held fixed" if not r.get("refine_focal", True) else ", refined"))
    frame = d / "georef" / "frame.json"
    failed = d / "georef" / "frame.partial.json"
    if failed.is_file() and not frame.is_file():
        f = json.loads(failed.read_text())
        lines.append(f"  georef: FAILED ({f['checks']['outlier_share']:.0%} of positions outliers, GPS residual RMSE "
                     f"{f['rmse_gps_m']['horizontal']:.1f} m); the model is kept in {d / 'georef' / 'partial'}")
    if frame.is_file():
        f = json.loads(frame.read_text())
        g = f["rmse_gps_m"]
        line = (f"  georef: EPSG:{f['epsg']} ({f['method']}), GPS residual RMSE {g['horizontal']:.2f} m "
                f"horizontal / {g['vertical']:.2f} m vertical, {len(f['outliers'])} outlier(s)")
        if f.get("rmse_gcp_m"):
            line += f", GCP RMSE {f['rmse_gcp_m']['horizontal']:.3f} / {f['rmse_gcp_m']['vertical']:.3f} m"
        lines.append(line)
        chk = f.get("rmse_checkpoints_m")
        if chk:
            lines.append(f"    check points (not in the fit): {chk['count']}, RMSE {chk['horizontal']:.3f} m horizontal"
                         f" / {chk['vertical']:.3f} m vertical")
        pos = f.get("positions")
        if pos:
            lines.append(f"    positions: {pos['rtk_fixed_share']:.0%} RTK fixed, accuracy from "
                         + ", ".join(f"{k} ({v})" for k, v in pos["accuracy_sources"].items())
                         + f", median sigma {pos['sigma_median_m']['horizontal']:.3f} m horizontal / "
                         f"{pos['sigma_median_m']['vertical']:.3f} m vertical")
        if "gt_camera_rmse_m" in f:
            lines.append(f"  camera centres vs truth: RMSE {f['gt_camera_rmse_m']:.3f} m"
                         + (f" (GPS alone: {f['gt_camera_rmse_gps_only_m']:.3f} m)"
                            if "gt_camera_rmse_gps_only_m" in f else ""))
        hp = f.get("height_prior") or {}
        if hp.get("nadir_only"):
            lines.append(f"  {hp.get('note', '')}")
        if hp.get("warning"):
            lines.append(f"  WARNING (georef): {hp['warning']}")
    manifest = d / "partitions" / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        parts = ", ".join(f"{p['id']} {len(p['images'])} images" for p in m["partitions"])
        lines.append(f"  partitions: grid {m['grid'][0]}x{m['grid'][1]} -> {parts}; "
                     f"{len(m['heldout'])} photos held out")
    metrics = d / "merged" / "metrics.json"
    if metrics.is_file():
        r = json.loads(metrics.read_text())
        line = (f"  merged: {r['num_gaussians']} Gaussians, held-out PSNR {r['heldout_psnr']:.2f} dB, "
                f"SSIM {r['heldout_ssim']:.3f} over {len(r['heldout_images'])} views")
        if r.get("monolithic_heldout_psnr") is not None:
            line += f" (one partition: {r['monolithic_heldout_psnr']:.2f} dB)"
        lines.append(line)
        for pid, p in (r.get("partitions") or {}).items():
            lines.append(f"    {pid}: {p['num_gaussians']} Gaussians, train PSNR {p['train_psnr']:.2f} dB, "
                         f"{p['iterations_per_second']:.1f} it/s on {p['device']}, {p['seconds']:.0f} s")
    lines.extend(product_lines(d))
    lines.extend(warning_lines(d))
    return "\n".join(lines)


def product_lines(scene_dir: Path) -> list[str]:
    """The GIS products: grid, cloud, completeness, and the accuracy where truth exists."""
    path = scene_dir / "products" / "metrics.json"
    if not path.is_file():
        return []
    m = json.loads(path.read_text())
    g = m["grid"]
    out = [f"  products ({scene_dir / 'products'}): {g['width']} x {g['height']} cells at {m['resolution_m']:.3f} m "
           f"(training GSD {m['gsd_m']:.3f} m), {m['crs']}; {m['points']['count']:,} points "
           f"({m['points']['ground']:,} ground, {m['points']['ground_filter']}); completeness "
           f"{100 * m['completeness']:.1f} % of the footprint; files: {', '.join(m['files'])}"]
    acc = m.get("accuracy") or {}
    for key, label in (("dsm", f"DSM ({m['dsm_source']})"), ("dsm_ortho", "  splats, straight down"),
                       ("dsm_cloud", "  fused cloud"), ("dsm_mvs", "  plane-sweep only"), ("dtm", "DTM")):
        if acc.get(key) and acc[key].get("median_abs_m") is not None:
            e = acc[key]
            out.append(f"    {label} vs truth: median |dz| {e['median_abs_m']:.3f} m, 90th pct {e['p90_abs_m']:.3f} m, "
                       f"RMSE {e['rmse_m']:.3f} m")
    if acc.get("ortho") and acc["ortho"].get("shift_abs_px") is not None:
        o = acc["ortho"]
        out.append(f"    orthophoto vs truth: shift {o['shift_abs_px']:.2f} px ({o['shift_m']:.3f} m), "
                   f"PSNR {o['psnr_db']:.2f} dB")
    return out


def warning_lines(scene_dir: Path) -> list[str]:
    """One line per stage whose log holds warnings: how many, the first, and where the rest are.

    Logs live in <workdir>/logs/<rule>/<scene>[_<part>].log beside <workdir>/results/<scene>/.
    """
    logs = scene_dir.parent.parent / "logs"
    out = []
    for log in (sorted(logs.glob(f"*/{scene_dir.name}.log")) + sorted(logs.glob(f"*/{scene_dir.name}_*.log"))
                + sorted(logs.glob(f"*/{scene_dir.name}/*.log"))):
        warnings = [line.split(" WARNING ", 1)[1].strip() for line in log.read_text(errors="replace").splitlines()
                    if " WARNING " in line]
        if warnings:
            first = warnings[0] if len(warnings[0]) <= 160 else warnings[0][:157] + "..."
            out.append(f"  warnings [{log.parent.name}]: {len(warnings)}, e.g. {first} (see {log})")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for d in argv or ["results/sample"]:
        print(summarize(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
