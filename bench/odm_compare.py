"""Our dense cloud and DSM against OpenDroneMap's dense cloud of the same photos, scored the way the
Tanks and Temples benchmark scores a reconstruction (see aerosplat.cloudcompare).

    python bench/odm_compare.py --results results/brighton_beach \
        --reference ../shared/datasets/brighton_beach/reference/model.laz --out bench/results/odm_brighton.md

(run after the workflow has made `results/brighton_beach/products/`; this wrote the committed
`bench/results/odm_brighton.md` and `.json`).

Both clouds rest on consumer GPS, off by metres as a whole, so the best-fit translation between them
is removed first and reported; the reference is moved (our products stay where they were delivered),
after being reprojected into our delivery CRS if it was made in another. Then, over the ground both
cover: precision (share of our points within tau of the reference), recall (share of the reference's
within tau of ours) and F-score at tau = 1, 2 (the headline) and 4 x our training GSD; and the median
and NMAD of our DSM minus the reference's highest point per cell of our DSM's grid, against the bar
|median| <= 2 x GSD.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
from pathlib import Path

import laspy
import numpy as np
import rasterio
from pyproj import CRS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from aerosplat.cloudcompare import dsm_median_difference, fit_translation, precision_recall, to_crs  # noqa: E402
from aerosplat.rasterize import Grid, highest_per_cell  # noqa: E402

log = logging.getLogger("odm_compare")
HEADLINE_MULTIPLE = 2.0


def read_cloud(path: Path):
    """(points [N, 3] float64, CRS or None) of a LAS/LAZ file; the CRS from its WKT or GeoTIFF VLRs."""
    with laspy.open(path) as f:
        crs = f.header.parse_crs()
        las = f.read()
    return np.column_stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)]), crs


def read_dsm(path: Path):
    """(heights [H, W] with NaN for nodata, Grid, CRS) of a north-up GeoTIFF DSM."""
    with rasterio.open(path) as src:
        t = src.transform
        if t.b != 0 or t.d != 0 or t.a != -t.e:
            raise SystemExit(f"{path}: not a north-up grid of square cells ({t})")
        dsm = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        return dsm, Grid(t.c, t.f, t.a, src.width, src.height), src.crs


def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def markdown(r: dict) -> str:
    t, sp = r["translation_m"], r["translation_spread_m"]
    d = r["dsm"]
    bar = f"{'met' if d['bar_met'] else 'not met'}: |{d['median_m']:.3f}| m vs {d['bar_m']:.3f} m"
    ref_crs = (f"reprojected from {r['reference']['crs']} into ours" if r["reference"]["reprojected"]
               else f"already in ours ({r['reference']['crs']}), not reprojected")
    lines = [
        f"# {r['scene']}: our dense cloud vs OpenDroneMap's ({r['date']})",
        "",
        f"Command: `{r['command']}`",
        "",
        f"- Our cloud: `products/points.laz`, {r['ours']['points']:,} points, {r['ours']['crs']}; training GSD "
        f"{r['gsd_m']:.4f} m, DSM cell {r['dsm']['cell_m']:.4f} m.",
        f"- Reference: `{r['reference']['file']}`, {r['reference']['points']:,} points, {ref_crs}.",
        f"- Best-fit translation removed (reference minus ours, trimmed point-to-plane ICP): "
        f"E {t[0]:+.3f} m, N {t[1]:+.3f} m, U {t[2]:+.3f} m ({np.linalg.norm(t):.3f} m); spread (max - min) over "
        f"{len(r['icp']['samplings'])} random samplings of our points: E {sp[0]:.3f} m, N {sp[1]:.3f} m, "
        f"U {sp[2]:.3f} m.",
        f"- **DSM bar (|median vertical difference| <= {HEADLINE_MULTIPLE:g} x GSD): {bar}.**",
        "",
        "| tau | tau (m) | precision | recall | F-score | our points scored | reference points scored |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in r["scores"]:
        name = f"{s['gsd_multiple']:g} x GSD" + (" (headline)" if s["gsd_multiple"] == HEADLINE_MULTIPLE else "")
        lines.append(f"| {name} | {s['tau_m']:.3f} | {fmt(s['precision'])} | {fmt(s['recall'])} | "
                     f"{fmt(s['fscore'])} | {s['n_ours']:,} | {s['n_ref']:,} |")
    lines += [
        "",
        "| DSM, ours minus reference (reference's highest point per cell of our grid) | value |",
        "| --- | --- |",
        f"| median vertical difference (m) | {fmt(d['median_m'])} |",
        f"| NMAD (m) | {fmt(d['nmad_m'])} |",
        f"| cells compared (valid in both) | {d['cells_compared']:,} of {d['cells_ours']:,} with our DSM |",
        f"| bar: {HEADLINE_MULTIPLE:g} x GSD (m) | {d['bar_m']:.3f} ({'met' if d['bar_met'] else 'not met'}) |",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="a scene's results folder (with products/)")
    ap.add_argument("--reference", type=Path, required=True, help="the reference LAS/LAZ (ODM's dense cloud)")
    ap.add_argument("--out", type=Path, required=True, help="the Markdown table; the JSON goes beside it")
    ap.add_argument("--reference-crs", default=None,
                    help="the reference's CRS when its file names none (else its own wins over this)")
    ap.add_argument("--gsd-multiples", default="1,2,4", help="tau values in multiples of our GSD")
    ap.add_argument("--max-offset-m", type=float, default=10.0,
                    help="the farthest pair the translation fit matches (at least the GPS offset expected)")
    ap.add_argument("--icp-iterations", type=int, default=100)
    ap.add_argument("--icp-samplings", type=int, default=4,
                    help="fits on different random samples of our points; the first is used, the spread reported")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    products = args.results / "products"
    metrics = json.loads((products / "metrics.json").read_text())
    gsd = float(metrics["gsd_m"])
    ours, ours_crs = read_cloud(products / "points.laz")
    if ours_crs is None:
        raise SystemExit(f"{products / 'points.laz'} names no CRS")
    ref_raw, ref_crs = read_cloud(args.reference)
    if ref_crs is None:
        if not args.reference_crs:
            raise SystemExit(f"{args.reference} names no CRS: give it with --reference-crs")
        ref_crs = args.reference_crs
    ref, reprojected = to_crs(ref_raw, ref_crs, ours_crs)
    log.info("ours: %d points; reference: %d points (%s)", len(ours), len(ref),
             "reprojected" if reprojected else "same CRS")

    # Seed 0 is the translation used; the other samplings say how well the surface pins it down
    # (flat ground leaves the horizontal looser than the vertical).
    fits = np.array([fit_translation(ours, ref, max_dist_m=args.max_offset_m, iterations=args.icp_iterations,
                                     seed=seed) for seed in range(args.icp_samplings)])
    t, spread = fits[0], fits.max(axis=0) - fits.min(axis=0)
    ref_aligned = ref - t  # the reference onto ours: our products stay as delivered
    log.info("translation (reference minus ours) %s m; spread over %d samplings %s m", np.round(t, 3),
             len(fits), np.round(spread, 3))

    scores = []
    for m in (float(v) for v in args.gsd_multiples.split(",")):
        s = {k: (round(v, 4) if isinstance(v, float) else v)
             for k, v in precision_recall(ours, ref_aligned, m * gsd).items()}
        scores.append({"gsd_multiple": m, **s})
        log.info("tau %.3f m: precision %.3f recall %.3f F %.3f", s["tau_m"], s["precision"], s["recall"],
                 s["fscore"])

    dsm, grid, dsm_crs = read_dsm(products / "dsm.tif")
    if not ours_crs.equals(CRS.from_wkt(dsm_crs.to_wkt()), ignore_axis_order=True):
        raise SystemExit(f"dsm.tif ({dsm_crs}) and points.laz ({ours_crs.name}) disagree on the CRS")
    ref_dsm = highest_per_cell(grid, ref_aligned).astype(np.float64)
    diff = dsm_median_difference(dsm, ref_dsm)
    bar = HEADLINE_MULTIPLE * gsd

    result = {
        "scene": args.results.name,
        "date": datetime.date.today().isoformat(),
        "command": "python bench/odm_compare.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "gsd_m": gsd, "resolution_m": metrics.get("resolution_m"),
        "ours": {"file": "products/points.laz", "points": int(len(ours)), "crs": ours_crs.name,
                 "epsg": ours_crs.to_epsg()},
        "reference": {"file": str(args.reference), "points": int(len(ref)),
                      "crs": getattr(ref_crs, "name", str(ref_crs)), "reprojected": reprojected},
        "translation_m": [round(float(v), 4) for v in t],
        "translation_note": "reference minus ours (E, N, U); subtracted from the reference before scoring",
        "translation_spread_m": [round(float(v), 4) for v in spread],
        "icp": {"max_offset_m": args.max_offset_m, "iterations": args.icp_iterations,
                "samplings": [[round(float(v), 4) for v in f] for f in fits]},
        "scores": scores,
        "headline": next((s for s in scores if s["gsd_multiple"] == HEADLINE_MULTIPLE), None),
        "dsm": {"median_m": round(diff["median"], 4), "nmad_m": round(diff["nmad"], 4),
                "cells_compared": diff["n"], "cells_ours": int(np.isfinite(dsm).sum()),
                "cells_reference": int(np.isfinite(ref_dsm).sum()), "cell_m": grid.cell,
                "sign": "ours minus reference",
                "bar_m": round(bar, 4), "bar_met": bool(abs(diff["median"]) <= bar)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
