"""Training-step throughput of the CPU rasterizer (aerosplat.raster_cpu), or of gsplat's CUDA one.

    python bench/raster_cpu.py [--device cpu|cuda] [--threads 2] [--steps 50] [--warmup 5] [--json OUT]

(with the package importable: installed, or PYTHONPATH=workflow). One step is what a splat trainer does per
view: rasterization forward (SH degree 3, one camera) + L1 loss against a fixed target + backward + Adam over
means, scales, quats, opacities, sh0 and shN. The scene follows the set-up of gsplat's reference figures
(shared/gpu/README.md beside the checkout): N random Gaussians in a 40 × 30 × 4 m box seen straight down from
40 m, the image spanning the box; here scales shrink with 1/√N so that about 24 (pixel, Gaussian) pairs per
pixel are composited at every size. Sizes: 5k Gaussians at 128 × 96 and 20k at 256 × 192, plus 200k at
1000 × 750 with --device cuda, which runs gsplat's `rasterization` on the GPU in the same loop. Prints the
median ms/step, steps/s, mean composited pairs per pixel (counted by the CPU rasterizer on the initial scene)
and visible Gaussians.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from aerosplat.raster_cpu import rasterization

SIZES = [(5_000, 128, 96), (20_000, 256, 192)]
CUDA_ONLY_SIZES = [(200_000, 1000, 750)]
SH_DEGREE = 3


def make_scene(n: int, width: int, height: int, seed: int = 0):
    """Random splat parameters (trainer layout: log scales, logit opacities, sh0/shN) and one nadir camera."""
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([40.0, 30.0, 4.0])
    means = (torch.rand(n, 3, generator=g) - torch.tensor([0.5, 0.5, 0.0])) * box  # [N, 3], z up
    spacing = math.sqrt(40.0 * 30.0 / n)  # m between neighbours on the ground
    params = {
        "means": means,
        "scales": math.log(0.77 * spacing) + 0.3 * torch.randn(n, 3, generator=g),  # [N, 3] log
        "quats": torch.randn(n, 4, generator=g),  # [N, 4]
        "opacities": torch.randn(n, generator=g),  # [N] logit
        "sh0": 0.5 * torch.randn(n, 1, 3, generator=g),  # [N, 1, 3]
        "shN": 0.05 * torch.randn(n, (SH_DEGREE + 1) ** 2 - 1, 3, generator=g),  # [N, 15, 3]
    }
    # Camera 40 m above the ground looking down: x east, y south, z down (OpenCV).
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 40], [0, 0, 0, 1]])[None]  # [1, 4, 4]
    f = float(width)  # 40 m across at 40 m
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])[None]  # [1, 3, 3]
    target = torch.rand(1, height, width, 3, generator=g)  # [1, H, W, 3]
    return params, viewmat, K, target


def render(raster, params, viewmat, K, width, height):
    """One differentiable render with the trainer's activations."""
    return raster(
        means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]), colors=torch.cat([params["sh0"], params["shN"]], 1),
        viewmats=viewmat, Ks=K, width=width, height=height, sh_degree=SH_DEGREE, packed=False)


def bench_size(n, width, height, device, steps, warmup):
    """Median step time (ms) of forward + backward + Adam, plus scene statistics."""
    params, viewmat, K, target = make_scene(n, width, height)
    with torch.no_grad():
        _, _, meta = render(rasterization, params, viewmat, K, width, height)
    pairs_per_pixel = meta["n_pairs"] / (width * height)
    visible = int((meta["radii"] > 0).all(-1).sum())
    if device == "cuda":
        from gsplat import rasterization as raster
    else:
        raster = rasterization
    params = {k: torch.nn.Parameter(v.to(device)) for k, v in params.items()}
    viewmat, K, target = viewmat.to(device), K.to(device), target.to(device)
    lrs = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    opt = torch.optim.Adam([{"params": [params[k]], "lr": lr} for k, lr in lrs.items()], eps=1e-15)
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        image, _, _ = render(raster, params, viewmat, K, width, height)
        loss = (image - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    return {"gaussians": n, "width": width, "height": height, "device": device, "ms_per_step": ms,
            "steps_per_s": 1e3 / ms, "pairs_per_pixel": pairs_per_pixel, "visible": visible,
            "threads": torch.get_num_threads(), "steps": steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per size")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = SIZES + (CUDA_ONLY_SIZES if args.device == "cuda" else [])
    rows = []
    print(f"{'gaussians':>9} {'image':>10} {'device':>6} {'ms/step':>8} {'steps/s':>8} {'pairs/px':>8} {'visible':>8}")
    for n, w, h in sizes:
        r = bench_size(n, w, h, args.device, args.steps, args.warmup)
        rows.append(r)
        print(f"{n:>9} {f'{w}x{h}':>10} {args.device:>6} {r['ms_per_step']:>8.1f} {r['steps_per_s']:>8.1f} "
              f"{r['pairs_per_pixel']:>8.1f} {r['visible']:>8}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
