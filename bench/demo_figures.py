"""The figures of a finished run at a scene's own settings, checked against the bounds the test suite
used to assert on them before it moved to the shorter test settings (tests/scenes/, tests/README.md).

    make demo && .venv/bin/python bench/demo_figures.py results/sample
    .venv/bin/snakemake --cores 2 --config 'scenes=["brighton_beach"]' && \
        .venv/bin/python bench/demo_figures.py results/brighton_beach --min-psnr 15

Prints one line per figure with its bound and PASS/FAIL, and the stage wall times from Snakemake's
benchmark files; exits 1 when a bound is not met. Defaults are the sample demo's bounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def figures(scene_dir: Path, min_psnr: float, max_depth_gsd: float, max_mono_gap_db: float) -> list[tuple]:
    """(name, value, bound text, ok) for every bound that applies to the run's outputs."""
    metrics = json.loads((scene_dir / "merged" / "metrics.json").read_text())
    rows = [("held-out PSNR (dB)", metrics["heldout_psnr"], f">= {min_psnr}", metrics["heldout_psnr"] >= min_psnr)]
    if "monolithic_heldout_psnr" in metrics:
        gap = metrics["heldout_psnr"] - metrics["monolithic_heldout_psnr"]
        rows.append(("partitioned minus monolithic (dB)", round(gap, 3), f">= -{max_mono_gap_db}",
                     gap >= -max_mono_gap_db))
    depth = metrics.get("depth") or {}
    if depth.get("heldout_median_abs_error_m") is not None:
        err, gsd = depth["heldout_median_abs_error_m"], depth["gsd_m"]
        rows.append(("held-out median depth error (m)", err, f"<= {max_depth_gsd} x GSD {gsd:.3f} m",
                     err <= max_depth_gsd * gsd))
    return rows


def stage_seconds(workdir: Path, scene: str) -> dict[str, float]:
    """Wall seconds per job from Snakemake's benchmark files (benchmarks/<rule>/<scene>[/<pid>].tsv)."""
    out = {}
    for tsv in sorted((workdir / "benchmarks").glob(f"*/{scene}*")):
        for f in ([tsv] if tsv.is_file() else sorted(tsv.glob("*.tsv"))):
            with open(f) as fh:
                row = list(csv.DictReader(fh, delimiter="\t"))[-1]
            out[f"{tsv.parent.name}/{f.stem}" if f != tsv else tsv.parent.name] = float(row["s"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene_dir", type=Path, help="results/<scene> of a finished run")
    ap.add_argument("--min-psnr", type=float, default=25.0)
    ap.add_argument("--max-depth-gsd", type=float, default=2.0)
    ap.add_argument("--max-mono-gap-db", type=float, default=1.0)
    args = ap.parse_args(argv)
    rows = figures(args.scene_dir, args.min_psnr, args.max_depth_gsd, args.max_mono_gap_db)
    for name, value, bound, ok in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}  (bound {bound})")
    workdir = args.scene_dir.resolve().parents[1]
    for job, seconds in stage_seconds(workdir, args.scene_dir.name).items():
        print(f"      {job}: {seconds:.0f} s")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
