"""Train, merge and evaluate a partitioned scene outside Snakemake, with overrides; print the figures.

The workflow's own functions on the partition stage's outputs, for measuring one configuration on
one machine (e.g. a GPU node without Snakemake). Example, after `make demo`:

    python bench/train_partitions.py results/sample --device cuda --image-scale 1.0 --steps 7000 \
        --out bench/results/sample_cuda.json

Writes the partition and merged outputs under OUT_DIR (default: a `bench_runs/` folder beside the
scene's results) so the workflow's own results are left untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from aerosplat import evaluate, merge, train
from aerosplat.config import load_yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene_results", type=Path, help="results/<scene> holding partitions/ and georef/")
    ap.add_argument("--scene-config", type=Path, help="scene YAML whose train: section is the base "
                    "(default: config/scenes/<scene>.yaml)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-scale", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--strategy", choices=["default", "mcmc"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="any other train option, e.g. --set sh_degree=1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-monolithic", action="store_true")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--out", type=Path, help="JSON summary")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    scene = args.scene_results.name
    cfg_file = args.scene_config or Path(__file__).resolve().parents[1] / "config" / "scenes" / f"{scene}.yaml"
    section = dict((load_yaml(cfg_file) or {}).get("train", {})) if cfg_file.exists() else {}
    section["device"] = args.device
    for key, value in (("image_scale", args.image_scale), ("steps", args.steps), ("strategy", args.strategy)):
        if value is not None:
            section[key] = value
    for item in args.set:
        key, value = item.split("=", 1)
        section[key] = json.loads(value)
    cfg = train.TrainConfig.from_config(section)
    manifest = args.scene_results / "partitions" / "manifest.json"
    out = args.out_dir or args.scene_results.parent / "bench_runs" / f"{scene}_{cfg.device}_{int(time.time())}"
    out.mkdir(parents=True, exist_ok=True)

    ids = [p["id"] for p in json.loads(manifest.read_text())["partitions"]]
    has_mono = "monolithic" in json.loads(manifest.read_text()) and not args.no_monolithic
    part_metrics = {}
    for pid in ids + (["monolithic"] if has_mono else []):
        part_metrics[pid] = train.train_partition(manifest, pid, cfg, out / pid / "splats.ply",
                                                  out / pid / "metrics.json", threads=args.threads)
    merge.merge(manifest, {pid: out / pid / "splats.ply" for pid in ids},
                args.scene_results / "georef" / "frame.json", out / "merged" / "splats.ply",
                out / "merged" / "frame.json", out / "merged" / "merge.json")
    metrics = evaluate.evaluate(manifest, out / "merged" / "splats.ply", out / "merged" / "metrics.json",
                                out / "merged" / "heldout", cfg,
                                monolithic_ply=out / "monolithic" / "splats.ply" if has_mono else None,
                                partition_metrics={pid: out / pid / "metrics.json" for pid in ids})
    summary = {
        "scene": scene, "device": part_metrics[ids[0]]["device"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "image_size": part_metrics[ids[0]]["image_size"], "steps": cfg.steps,
        "heldout_psnr": metrics["heldout_psnr"], "heldout_ssim": metrics["heldout_ssim"],
        "monolithic_heldout_psnr": metrics.get("monolithic_heldout_psnr"),
        "seam": metrics["seam"],
        "partitions": {pid: {k: m[k] for k in ("train_psnr", "num_gaussians", "num_images",
                                                "train_seconds", "iterations_per_second")}
                       for pid, m in part_metrics.items()},
        "config": section,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
