"""`python -m aerosplat.summary results/<scene>`: the figures of a finished run, in a few lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(scene_dir: str | Path) -> str:
    d = Path(scene_dir)
    lines = [f"scene: {d.name} ({d})"]
    sfm = d / "sfm" / "report.json"
    if sfm.is_file():
        r = json.loads(sfm.read_text())
        lines.append(f"  sfm: {r['registered']}/{r['total']} registered, {r['mean_reproj_error_px']:.3f} px mean "
                     f"reprojection error, {r['num_points3d']} points, track length "
                     f"{r['mean_track_length']:.2f}, {r['seconds']:.0f} s ({r['matcher']}, {r['mapper']})")
    frame = d / "georef" / "frame.json"
    if frame.is_file():
        f = json.loads(frame.read_text())
        g = f["rmse_gps_m"]
        line = (f"  georef: EPSG:{f['epsg']} ({f['method']}), GPS residual RMSE {g['horizontal']:.2f} m "
                f"horizontal / {g['vertical']:.2f} m vertical, {len(f['outliers'])} outlier(s)")
        if f.get("rmse_gcp_m"):
            line += f", GCP RMSE {f['rmse_gcp_m']['horizontal']:.3f} / {f['rmse_gcp_m']['vertical']:.3f} m"
        lines.append(line)
        if "gt_camera_rmse_m" in f:
            lines.append(f"  camera centres vs truth: RMSE {f['gt_camera_rmse_m']:.3f} m"
                         + (f" (GPS alone: {f['gt_camera_rmse_gps_only_m']:.3f} m)"
                            if "gt_camera_rmse_gps_only_m" in f else ""))
        hp = f.get("height_prior") or {}
        if hp.get("nadir_only"):
            lines.append(f"  {hp.get('note', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for d in argv or ["results/sample"]:
        print(summarize(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
