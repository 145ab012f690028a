"""Held-out quality of the plain gsplat loop and of our default trainer, same split, resolution and steps.

    python bench/quality.py --scene brighton_beach --max-image-size 400 --steps 2000 \
        --out bench/results/brighton_beach_cpu400.json
    python bench/quality.py --scene sample --split thin-nadir --steps 1500 --out bench/results/sample_thin.json

Needs the scene's partition stage (`snakemake --cores 2 results/<scene>/partitions/manifest.json`).
Variants (--variants):
- `plain`: gsplat's reference trainer defaults (simple_trainer; DefaultStrategy densifying to the end,
  L1 + 0.2 SSIM, SH ramp to 3 every 1000 steps, kNN init from the SfM points, no appearance model,
  full resolution from step 0, black background) - the anchors' loop, on our CPU rasterizer where
  there is no GPU;
- `plain_mcmc`: the same with simple_trainer's MCMC settings (cap 500k, opacity and scale reg 0.01);
- `ours`: `TrainConfig()` defaults, with only device, resolution and steps set; `--set KEY=JSON`
  changes one option (ablation rows).
`plain` in the JSON is the better of the plain variants run (by held-out PSNR).

Splits (--split): `standard` (the partition stage's: every 8th image held out), `thin-nadir` (nadir
views only, every second one along the flight trains, the others are held out: sparse views scored
in between them), `validation` (held-out images excluded entirely; every 5th *training* image is held
out instead - for choosing settings without looking at the test images).

Held-out scoring: PSNR/SSIM of the raw render (no appearance correction), and the standard appearance
protocol (per-channel gain and offset fitted on the left half of the photo, PSNR on the right half);
with an appearance model, also the render in the look of the nearest training photo (its learned
correction; no held-out pixel is used: `heldout_psnr_nearest_appearance`); for every variant, the
render as an auto-exposing camera would take it (one gain bringing the render's mean brightness
to the training photos': `heldout_psnr_auto_exposure`); expected and median
depth per held-out view as float32 TIFF; depth error against the scene's truth DSM (synthetic
scenes) or its reference point cloud (`reference/model.laz` beside the images, aligned to our SfM
points by a translation first, since both are georeferenced by consumer GPS).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from aerosplat import depthmaps, evaluate, train  # noqa: E402
from aerosplat.config import load_yaml  # noqa: E402
from aerosplat.errors import InputError  # noqa: E402
from aerosplat.splats import read_ply  # noqa: E402

log = logging.getLogger("quality")

PLAIN = {
    "appearance": False, "resolution_schedule": [], "depth_prior": "none", "depth_weight": 0.0,
    "dense_init": False, "sh_degree": 3, "sh_degree_interval": 1000, "strategy": "default",
    "refine_start": 500, "refine_stop_fraction": 1.0, "grow_grad2d": 0.0002, "reset_every": 3000,
    "init_opacity": 0.1, "init_scale": 1.0, "anisotropy_weight": 0.0, "rasterize_mode": "classic",
    "opacity_reg": 0.0, "scale_reg": 0.0, "pose_refinement": False, "random_background": False,
}
PLAIN_MCMC = {**PLAIN, "strategy": "mcmc", "cap_max": 500_000, "init_opacity": 0.5,
              "init_scale": 0.1, "opacity_reg": 0.01, "scale_reg": 0.01}
PRESETS = {"plain": PLAIN, "plain_mcmc": PLAIN_MCMC, "ours": {}}


def choose_split(manifest: dict, split: str) -> tuple[list[str], list[str]]:
    if split == "standard":
        return list(manifest["train"]), list(manifest["heldout"])
    if split == "validation":
        names = sorted(manifest["train"])
        held = names[::5]
        return [n for n in names if n not in held], held
    if split == "thin-nadir":
        return thin_nadir(manifest)
    raise InputError(f"--split {split}: expected standard, thin-nadir or validation")


def thin_nadir(manifest: dict) -> tuple[list[str], list[str]]:
    """Nadir views in flight order: every second one trains; held out are the others that lie
    between two training views (within a quarter of their spacing of the midpoint) - the views a
    sparse flight must interpolate. Line ends are not held out: part of them no training photo shows."""
    cams = manifest["cameras"]
    nadir = sorted(n for n, c in cams.items() if np.asarray(c["w2c"], float)[2, 2] < -np.cos(np.radians(15)))

    def centre(n):
        w2c = np.asarray(cams[n]["w2c"], float)
        return -w2c[:3, :3].T @ w2c[:3, 3]

    train_names = nadir[0::2]
    held = []
    for i in range(1, len(nadir) - 1, 2):
        a, b, c = centre(nadir[i - 1]), centre(nadir[i]), centre(nadir[i + 1])
        if np.linalg.norm(b - (a + c) / 2) <= 0.25 * np.linalg.norm(c - a):
            held.append(nadir[i])
    return train_names, held


def bench_manifest(manifest: dict, part_dir: Path, train_names, heldout) -> dict:
    """One partition holding every training view; the scene's own files, referenced absolutely."""
    pts = np.load(part_dir / manifest["points"])["xyz"]
    lo, hi = pts.min(0) - 1e3, pts.max(0) + 1e3
    out = dict(manifest)
    out.update({
        "images_dir": str((part_dir / manifest["images_dir"]).resolve()),
        "points": str((part_dir / manifest["points"]).resolve()),
        "train": list(train_names), "heldout": list(heldout),
        "partitions": [{"id": "all", "cell_bounds": [lo[0], lo[1], hi[0], hi[1]],
                        "expanded_bounds": [lo[0], lo[1], hi[0], hi[1]],
                        "z_range": [float(pts[:, 2].min()), float(pts[:, 2].max())],
                        "images": list(train_names), "num_points": int(len(pts))}],
    })
    out.pop("monolithic", None)
    return out


def scene_truth(scene_cfg: dict, scene_results: Path, origin: np.ndarray):
    """The scene's DSM truth (synthetic) or its reference cloud beside the images; None if neither."""
    truth_dir = scene_cfg.get("truth")
    if truth_dir:
        truth_dir = Path(str(truth_dir).replace("{synthetic}", str(scene_results / "synthetic")))
        truth_dir = truth_dir if truth_dir.is_absolute() else ROOT / truth_dir
        if (truth_dir / "dsm.tif").exists():
            return depthmaps.DepthTruth.from_dsm(truth_dir / "dsm.tif", origin)
    images = scene_cfg.get("images")
    laz = (ROOT / images).parent / "reference" / "model.laz" if images and "{" not in images else None
    if laz is not None and laz.exists():
        sfm = np.load(scene_results / "partitions" / "points.npz")["xyz"]
        return depthmaps.DepthTruth.from_cloud(laz, origin, sfm)
    return None


def score_heldout(splats, manifest, names, image_dir, scale, truth, out_dir: Path,
                  appearance: dict | None = None) -> dict:
    """The workflow's evaluation (aerosplat.evaluate) of the held-out views, in the bench's JSON."""
    cams = train.load_cameras(manifest, names)
    train_cams = train.load_cameras(manifest, manifest["partitions"][0]["images"])
    rows = evaluate.score_model(splats, manifest, cams, image_dir, scale, out_dir / "heldout",
                                appearance=appearance, train_cameras=train_cams,
                                exposure_target=evaluate.photo_brightness(image_dir, train_cams, scale))
    depth = evaluate.write_depths(splats, manifest, image_dir, scale, out_dir / "depth", truth, names)
    mean = lambda k: round(float(np.mean([r[k] for r in rows])), 4)  # noqa: E731
    res = {"heldout_psnr": mean("psnr"), "heldout_ssim": mean("ssim"),
           "heldout_psnr_right_half_raw": mean("psnr_right_half_raw"),
           "heldout_psnr_right_half_appearance_fit": mean("psnr_right_half_appearance_fit"),
           **({"heldout_psnr_nearest_appearance": mean("psnr_nearest_appearance")} if appearance else {}),
           "heldout_psnr_auto_exposure": mean("psnr_auto_exposure"),
           "per_view": [{k: v for k, v in r.items() if k not in ("cell_shares", "border")} for r in rows]}
    if "heldout" in depth:
        res["depth_median_abs_error_m"] = depth["heldout_median_abs_error_m"]
        res["depth_expected_median_abs_error_m"] = depth["heldout_expected_median_abs_error_m"]
        res["gsd_m"] = depth["gsd_m"]
        res["depth_per_view"] = depth["heldout"]
    return res


def trained_before(vdir: Path, cfg: train.TrainConfig) -> dict | None:
    """The metrics of the model in `vdir` if it was trained with exactly `cfg` (else None)."""
    try:
        metrics = json.loads((vdir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = metrics.get("config") == json.loads(json.dumps(asdict(cfg)))
    return metrics if same and (vdir / "splats.ply").exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", required=True)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-image-size", type=int, help="longest training image side (default: the scene "
                    "file's train.image_scale)")
    ap.add_argument("--steps", type=int, default=None, help="default: the scene file's train.steps")
    ap.add_argument("--split", default="standard", choices=["standard", "thin-nadir", "validation"])
    ap.add_argument("--variants", default="plain,plain_mcmc,ours")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="an option of `ours`")
    ap.add_argument("--label", help="name of the `ours` row (default: ours, or the --set options)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, help="models and depth maps (default: beside --out)")
    ap.add_argument("--prior-cache", type=Path, help="folder of cached depth priors, shared by runs on "
                    "the same split and resolution (default: in --work)")
    ap.add_argument("--reuse", action="store_true", help="score a variant's model already in the work "
                    "folder instead of training it again, when it was trained with the same options")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    scene_results = args.results / args.scene
    part_dir = scene_results / "partitions"
    if not (part_dir / "manifest.json").exists():
        raise SystemExit(f"{part_dir / 'manifest.json'} is missing: run "
                         f"`snakemake --cores 2 {part_dir / 'manifest.json'}` first")
    manifest = json.loads((part_dir / "manifest.json").read_text())
    scene_cfg = load_yaml(ROOT / "config" / "scenes" / f"{args.scene}.yaml") or {}
    scene_train = scene_cfg.get("train", {})
    any_cam = next(iter(manifest["cameras"].values()))
    scale = (args.max_image_size / max(any_cam["width"], any_cam["height"]) if args.max_image_size
             else scene_train.get("image_scale", 1.0))
    steps = args.steps or scene_train.get("steps", 7000)
    train_names, heldout = choose_split(manifest, args.split)
    work = args.work or args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    bman = bench_manifest(manifest, part_dir, train_names, heldout)
    bman_path = work / "manifest.json"
    bman_path.write_text(json.dumps(bman, indent=1))
    frame = json.loads((scene_results / "georef" / "frame.json").read_text())
    truth = scene_truth(scene_cfg, scene_results, np.asarray(frame["origin"], float))

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    result = {"scene": args.scene, "split": args.split, "device": None, "image_size": None,
              "steps": steps, "train_images": train_names, "heldout_images": heldout,
              "depth_truth": truth.note if truth else None, "command": "python bench/quality.py " + shlex.join(argv or sys.argv[1:])}
    variants = {}
    for name in args.variants.split(","):
        if name not in PRESETS:
            raise SystemExit(f"--variants: {name} is not one of {', '.join(PRESETS)}")
        section = {**PRESETS[name], **(overrides if name == "ours" else {}),
                   "device": args.device, "image_scale": scale, "steps": steps}
        cfg = train.TrainConfig.from_config(section)
        vdir = work / name
        m = trained_before(vdir, cfg) if args.reuse else None
        if m is not None:
            log.info("%s: reusing the model trained before in %s", name, vdir)
            seconds = m["seconds"]
        else:
            t0 = time.time()
            m = train.train_partition(bman_path, "all", cfg, vdir / "splats.ply", vdir / "metrics.json",
                                      threads=args.threads, prior_cache=args.prior_cache or work / "depth_prior")
            seconds = time.time() - t0
        splats = read_ply(vdir / "splats.ply")
        scores = score_heldout(splats, bman, heldout, Path(bman["images_dir"]), scale, truth, vdir,
                               appearance=m.get("appearance"))
        variants[name] = {"heldout_psnr": scores.pop("heldout_psnr"), "heldout_ssim": scores.pop("heldout_ssim"),
                          "train_psnr": round(m["train_psnr"], 4), "gaussians": m["num_gaussians"],
                          "seconds": round(seconds, 1), **scores,
                          "options": {k: v for k, v in section.items() if k not in ("device",)}}
        result["device"], result["image_size"] = m["device"], m["image_size"]
        log.info("%s: held-out %.2f dB, SSIM %.3f, %d Gaussians, %.0f s", name,
                 variants[name]["heldout_psnr"], variants[name]["heldout_ssim"], m["num_gaussians"], seconds)
    plains = {k: v for k, v in variants.items() if k.startswith("plain")}
    if plains:
        best = max(plains, key=lambda k: plains[k]["heldout_psnr"])
        result["plain"] = {"variant": best, **plains[best]}
    if "ours" in variants:
        result["ours"] = variants["ours"]
        if args.label or overrides:
            result["ours"]["label"] = args.label or " ".join(args.set)
    result["variants"] = variants
    if "plain" in result and "ours" in result:
        result["ours_minus_plain_db"] = round(result["ours"]["heldout_psnr"] - result["plain"]["heldout_psnr"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_rows(result))
    return 0


def markdown_rows(result: dict) -> str:
    """One Markdown table row per variant of a result JSON."""
    lines = []
    for name, v in result["variants"].items():
        dep = v.get("depth_median_abs_error_m")
        lines.append(f"| {result['scene']} ({result['split']}) | {name}{' (' + v['label'] + ')' if v.get('label') else ''} "
                     f"| {result['image_size'][0]}x{result['image_size'][1]} | {result['steps']} | {v['heldout_psnr']:.2f} "
                     f"| {v['heldout_ssim']:.3f} | {v['heldout_psnr_right_half_appearance_fit']:.2f} | {v['train_psnr']:.2f} "
                     f"| {v['gaussians']:,} | {'' if dep is None else f'{dep:.3f}'} | {v['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
