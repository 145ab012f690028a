"""The photo ceiling of a sparse split: how well the training photos themselves predict each held-out
photo, beside what the trained models score (see aerosplat.reprojection).

    python bench/quality.py --scene brighton_beach --split validation --max-image-size 400 --steps 1000 \
        --variants plain,ours --out bench/results/round4_validation/both.json
    python bench/photo_ceiling.py --scene brighton_beach --work bench/results/round4_validation/both \
        --out bench/results/round4_validation/photo_ceiling.json

`--work` is a `bench/quality.py` work folder (its manifest.json and one folder per variant with
splats.ply and metrics.json). For each variant and held-out view: the share of pixels some training
photo sees, the model's PSNR over the view, over those pixels and over the rest, and the training
photos re-projected into the view through a depth map - the nearest photo's pixels, the mean of all
that see the point, and the nearest photo after a per-channel gain/offset fitted to the held-out
photo (an oracle exposure). Depth (`--depth`): the variant's own median depth (`model`), or the
scene's truth (`truth`: the sample's DSM; brighton_beach's reference cloud, its holes filled from the
nearest known pixel). Occlusion is tested against each training view's depth of the same kind
(`--occlusion-tolerance`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

from aerosplat import depthmaps, train  # noqa: E402
from aerosplat.config import load_yaml  # noqa: E402
from aerosplat.reprojection import SourcePhoto, ceiling_scores, reproject  # noqa: E402
from aerosplat.splats import read_ply, render_view  # noqa: E402
from quality import scene_truth  # noqa: E402

log = logging.getLogger("photo_ceiling")


def view_depth(splats, cam, scale, truth=None) -> np.ndarray:
    """The view's z-depth at `scale`: the model's median depth (the view's median depth where the
    model is transparent), or the truth with its holes (a z-buffered cloud's gaps) filled from the
    nearest known pixel."""
    K, w, h = cam.scaled(scale)
    depth = truth.depth(K, cam.w2c, w, h) if truth is not None else \
        depthmaps.render_depths(splats, K, cam.w2c, w, h)["median"]
    known = np.isfinite(depth)
    if not known.any():
        raise SystemExit(f"{cam.name}: no depth known in the view")
    if truth is None:
        return np.where(known, depth, np.nanmedian(depth))
    _, (rows, cols) = distance_transform_edt(~known, return_indices=True)
    return depth[rows, cols]


def score_variant(work: Path, variant: str, truth, tolerance: float) -> list[dict]:
    manifest = json.loads((work / "manifest.json").read_text())
    metrics = json.loads((work / variant / "metrics.json").read_text())
    image_dir = Path(manifest["images_dir"])
    train_cams = train.load_cameras(manifest, manifest["partitions"][0]["images"])
    held = train.load_cameras(manifest, manifest["heldout"])
    scale = metrics["image_size"][0] / train_cams[0].width
    splats = read_ply(work / variant / "splats.ply")
    sources = {}
    for cam in train_cams:
        K, w, h = cam.scaled(scale)
        sources[cam.name] = SourcePhoto(train.load_image(image_dir / cam.name, w, h).numpy(), K,
                                        cam.w2c, view_depth(splats, cam, scale, truth))
    rows = []
    for cam in held:
        K, w, h = cam.scaled(scale)
        photo = train.load_image(image_dir / cam.name, w, h).numpy()
        with torch.no_grad():
            render = render_view(splats, K, cam.w2c, w, h)[0].clamp(0, 1).numpy()
        order = sorted(train_cams, key=lambda c: float(np.linalg.norm(c.centre - cam.centre)))
        rep = reproject(view_depth(splats, cam, scale, truth), K, cam.w2c, [sources[c.name] for c in order],
                        occlusion_tolerance=tolerance)
        rows.append({"name": cam.name, **ceiling_scores(render, photo, rep)})
        log.info("%s %s: %s", variant, cam.name, rows[-1])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a bench/quality.py work folder")
    ap.add_argument("--scene", required=True)
    ap.add_argument("--variants", default=None, help="default: every variant folder in --work")
    ap.add_argument("--depth", default="model", choices=["model", "truth"])
    ap.add_argument("--occlusion-tolerance", type=float, default=0.05,
                    help="a training photo sees a point unless its own depth there is nearer by this "
                    "fraction (default 0.05: 2 m at 40 m, a tree or a roof, not depth noise)")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    truth = None
    if args.depth == "truth":
        scene_results = args.results / args.scene
        frame = json.loads((scene_results / "georef" / "frame.json").read_text())
        scene_cfg = load_yaml(ROOT / "config" / "scenes" / f"{args.scene}.yaml") or {}
        truth = scene_truth(scene_cfg, scene_results, np.asarray(frame["origin"], float))
        if truth is None:
            raise SystemExit(f"--depth truth: scene {args.scene} has no truth DSM or reference cloud")
    names = args.variants.split(",") if args.variants else sorted(
        p.name for p in args.work.iterdir() if (p / "splats.ply").exists())
    if not names:
        raise SystemExit(f"{args.work}: no variant folder with splats.ply (run bench/quality.py first)")
    views = {v: score_variant(args.work, v, truth, args.occlusion_tolerance) for v in names}
    summary = {v: {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4)
                   for k in rows[0] if k != "name"} for v, rows in views.items()}
    result = {"work": str(args.work), "scene": args.scene, "depth": args.depth,
              "depth_truth": truth.note if truth else None,
              "command": "python bench/photo_ceiling.py " + " ".join(argv or sys.argv[1:]),
              "summary": summary, "views": views}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ["covered_share", "render_psnr", "render_psnr_covered", "nearest_photo_psnr_covered",
            "mean_photos_psnr_covered", "nearest_photo_exposure_fit_psnr_covered", "uncovered_error_share"]
    print("| variant | " + " | ".join(keys) + " |")
    for v, s in summary.items():
        print(f"| {v} | " + " | ".join(f"{s[k]:.3f}" if "share" in k else f"{s[k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
