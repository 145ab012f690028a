"""Ablation of our trainer's sparse-view ingredients: each one switched off (or on) alone, same budget.

    python bench/ablation.py --scene brighton_beach --split validation --max-image-size 400 --steps 1500 \
        --out bench/results/ablation_brighton_validation.md
    python bench/ablation.py --scene sample --split thin-nadir --steps 1500 --out bench/results/ablation_sample_thin.md

Each row is one `bench/quality.py` run (the command is in the table); its JSON lands beside the
Markdown file. `--jobs 2` runs two rows at a time with one thread each. Rows already present (same
JSON) are not re-run, so an interrupted ablation resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# label -> options of `ours` (empty: our defaults); "plain" rows run the reference variants.
ROWS = {
    "plain (gsplat defaults)": ["--variants", "plain"],
    "plain MCMC (cap 500k)": ["--variants", "plain_mcmc"],
    "ours (defaults)": [],
    "ours - depth loss": ["--set", "depth_weight=0"],
    "ours + dense seed": ["--set", "dense_init=true"],
    "ours - depth prior": ["--set", "depth_prior=\"none\""],
    "ours - appearance": ["--set", "appearance=false"],
    "ours - progressive resolution": ["--set", "resolution_schedule=[]"],
    "ours + depth weight 0.5": ["--set", "depth_weight=0.5"],
    "ours + SH degree 1": ["--set", "sh_degree=1"],
    "ours + densify to the end": ["--set", "refine_stop_fraction=1.0"],
    "ours + anisotropy penalty": ["--set", "anisotropy_weight=0.1"],
    "ours + antialiased": ["--set", "rasterize_mode=\"antialiased\""],
    "ours + multi-view consistency 0.1": ["--set", "multiview_weight=0.1"],
    "ours + multi-view consistency 0.5": ["--set", "multiview_weight=0.5"],
    "ours + Gaussian dropout 0.2": ["--set", "dropout=0.2"],
    "ours + Gaussian dropout 0.4": ["--set", "dropout=0.4"],
    "ours + backdrop seeds": ["--set", "backdrop_px=8"],
    "ours + height band": ["--set", "height_band=0.1"],
    "ours + scale cap": ["--set", "max_scale=0.05"],
    "ours + coarser schedule": ["--set", "resolution_schedule=[[0,0.125],[0.2,0.25],[0.45,0.5],[0.7,1.0]]"],
    "ours + filled-depth loss": ["--set", "fill_depth_weight=0.05"],
    "ours + appearance baked": ["--set", "appearance_bake=true"],
    "ours - random background": ["--set", "random_background=false"],
}


def slug(label: str) -> str:
    """File name of a row: "ours - depth loss" -> ours_no_depth_loss, "ours + SH degree 1" -> ours_with_sh_degree_1."""
    import re

    text = label.lower().replace(" - ", " no ").replace(" + ", " with ")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--max-image-size", type=int)
    ap.add_argument("--rows", help="comma-separated subset of the row labels' slugs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="Markdown table")
    args = ap.parse_args(argv)
    rows = {k: v for k, v in ROWS.items() if not args.rows or slug(k) in args.rows.split(",")}
    json_dir = args.out.with_suffix("")
    json_dir.mkdir(parents=True, exist_ok=True)
    common = ["--scene", args.scene, "--split", args.split, "--steps", str(args.steps)]
    if args.max_image_size:
        common += ["--max-image-size", str(args.max_image_size)]
    threads = ["--threads", "1"] if args.jobs > 1 else []

    def run(label):
        extra = rows[label]
        if "--variants" not in extra:
            extra = ["--variants", "ours", *extra, "--label", label]
        out = json_dir / f"{slug(label)}.json"
        cmd = [sys.executable, "bench/quality.py", *common, *extra, "--out", str(out)]
        if not out.exists():
            log = out.with_suffix(".log")
            with open(log, "w") as fh:
                proc = subprocess.run(cmd + threads, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode:
                raise SystemExit(f"{label}: failed, see {log}")
        return label, cmd, json.loads(out.read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, rows))
    lines = [f"# Ablation: {args.scene}, split `{args.split}`, {args.steps} steps"
             + (f", images at most {args.max_image_size} px" if args.max_image_size else ""), "",
             "| row | held-out PSNR | SSIM | right half, appearance fit | train PSNR | Gaussians "
             "| depth median abs. error (m) | seconds | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, cmd, r in results:
        v = next(iter(r["variants"].values()))
        dep = v.get("depth_median_abs_error_m")
        rel = [c if not c.startswith(str(ROOT)) else str(Path(c).relative_to(ROOT)) for c in cmd[1:]]
        lines.append(f"| {label} | {v['heldout_psnr']:.2f} | {v['heldout_ssim']:.3f} "
                     f"| {v['heldout_psnr_right_half_appearance_fit']:.2f} | {v['train_psnr']:.2f} | {v['gaussians']:,} "
                     f"| {'' if dep is None else f'{dep:.3f}'} | {v['seconds']:.0f} | `python {shlex.join(rel)}` |")
    first = results[0][2]
    lines += ["", f"Image size {first['image_size'][0]} x {first['image_size'][1]}, device {first['device']}, "
              f"{len(first['train_images'])} training and {len(first['heldout_images'])} held-out images "
              f"({', '.join(first['heldout_images'])}). Depth truth: {first['depth_truth']}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
