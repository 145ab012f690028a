"""Per-partition 3D Gaussian splatting: one training job per partition, the same code on GPU and CPU.

Follows gsplat's reference trainer (`examples/simple_trainer.py`) in spirit: gsplat's `rasterization`
(or `aerosplat.raster_cpu.rasterization`, same signature, on machines without CUDA), its
`DefaultStrategy` for densification (`MCMCStrategy` as an option), L1 + SSIM loss, spherical-harmonics
degree ramped up during training, Adam per parameter group. Added for aerial surveys:

- progressive resolution: the first part of the run trains on downscaled photos (cheap, coarse
  structure first), then full resolution;
- a per-image appearance (exposure/white balance) correction, an affine colour map per training
  image constrained to average to identity over the training images, so the splats keep the mean
  appearance and held-out views are rendered with no correction at all (no held-out pixel is used);
- a geometry prior for sparse views (`aerosplat.mvs`): plane-sweep depth of every training photo,
  kept where neighbouring photos confirm it, pulling the rendered depth towards it and optionally
  seeding Gaussians; its effect on held-out PSNR and depth is measured in bench/results/;
- optional camera-pose refinement;
- periodic checkpoints (and one on SIGTERM, which SLURM sends before pre-empting a job) from which a
  re-started job resumes; a checkpoint is only resumed by a run with the same configuration and images.

Inputs are the partition stage's files (manifest, undistorted images, SfM points), all in the local
frame, so this module needs neither pycolmap nor the COLMAP model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError
from .fileio import atomic_path, write_json
from .manifest import find_partition, load_manifest
from .backdrop import backdrop_points
from .consistency import multiview_loss
from .mvs import (DepthPrior, MVSConfig, choose_neighbours, compute_depth_prior, covisibility,
                  voxel_downsample)
from .splats import get_rasterizer, render_view, write_ply

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814
# Opacity logit of a Gaussian outside the height band: below the rasterizer's 1/255 cut-off and the
# strategies' pruning threshold, with room for Adam's remaining momentum.
OUT_OF_BAND_LOGIT = -9.0


@dataclass
class TrainConfig:
    """The `train:` section of a scene file (see config/schema.yaml for the documentation)."""

    # auto = CUDA when available, else the CPU rasterizer.
    device: str = "auto"
    # Optimisation steps (one training view per step).
    steps: int = 7000
    # Training resolution as a fraction of the undistorted photos' size.
    image_scale: float = 1.0
    # Progressive resolution: [[fraction of steps where the level starts, scale relative to image_scale]].
    resolution_schedule: list = field(default_factory=lambda: [[0.0, 0.25], [0.15, 0.5], [0.4, 1.0]])
    # Highest SH degree and the step interval at which the degree goes up by one.
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    # Weight of (1 - SSIM) in the loss; L1 gets the rest.
    ssim_lambda: float = 0.2
    # Densification: default (gsplat DefaultStrategy) or mcmc (MCMCStrategy with cap_max).
    strategy: str = "default"
    cap_max: int = 1_000_000
    refine_start: int = 500
    # Fraction of the steps after which densification stops.
    refine_stop_fraction: float = 0.5
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    # Initial opacity and the scale of initial Gaussians relative to their kNN distance.
    init_opacity: float = 0.1
    init_scale: float = 1.0
    # SfM points with a larger reprojection error are not used to initialise the Gaussians.
    init_max_reproj_px: float = 2.0
    # Seed points: the expanded cell's only (cell), or also every point the partition's photos see (visible).
    init_points: str = "visible"
    # Learning rates (means scaled by the partition's camera extent, decayed 100x over the run).
    lr_means: float = 1.6e-4
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    # simple_trainer's regularisers (its MCMC settings use 0.01 each): mean opacity, mean scale.
    opacity_reg: float = 0.0
    scale_reg: float = 0.0
    # Per-image affine colour correction (mean over training images held at identity).
    appearance: bool = True
    lr_appearance: float = 1e-3
    # Bake into each Gaussian's colour the mean correction of the training photos that see it, so
    # a new view renders the look of the photos around it (the corrections average to identity only
    # over all photos: a region seen only by darker photos keeps brightened colours). Measured
    # neutral on brighton_beach's validation split and the thinned sample (bench/results/): off.
    appearance_bake: bool = False
    # Geometry prior (see aerosplat.mvs): plane-sweep depth of every training view, confirmed
    # across views. `mvs` computes it; `none` trains from the photos alone.
    depth_prior: str = "mvs"
    # Weight of the relative-L1 loss between rendered expected depth and the prior (0 = off).
    depth_weight: float = 0.1
    # Weight of the same loss where the prior is unconfirmed, against its filled depth (the nearest
    # confirmed pixel's): what only one training photo sees (flight edges, water, shadow) is pulled
    # to the surrounding surface's depth instead of anywhere along its rays. 0 = off (0.05 cost
    # 0.8 dB held-out on the validation split: bench/results/).
    fill_depth_weight: float = 0.0
    # Seed the Gaussians from the prior's fused points (one per voxel of `dense_init_voxel_px`
    # ground pixels) as well as from the SfM points. Off by default: on brighton_beach's validation
    # split it lowers depth error by a third but costs 1.2-1.6 dB held-out PSNR (bench/results/).
    dense_init: bool = False
    dense_init_voxel_px: float = 2.0
    # Without dense_init: seed only every `fill_seed_stride`-th pixel the prior could not confirm,
    # at its nearest confirmed depth (0 = off) - covers water and view edges, adds few Gaussians.
    fill_seed_stride: int = 0
    # Backdrop (aerosplat.backdrop): seed points on the ground every `backdrop_px` ground pixels over
    # the photos' footprints where no SfM point is near (water, shadow, flight edges); 0 = off.
    backdrop_px: float = 0.0
    # Longest side of the images the plane sweep runs on.
    mvs_max_size: int = 480
    # Weight of the multi-view photometric consistency of the rendered depth (aerosplat.consistency):
    # each step, the best of `multiview_neighbours` overlapping photos warped into the training view
    # through its rendered depth must match it (windowed NCC). 0 = off.
    multiview_weight: float = 0.0
    multiview_neighbours: int = 2
    # Penalty on Gaussians longer than `max_anisotropy` times their width (needles); 0 = off.
    anisotropy_weight: float = 0.0
    max_anisotropy: float = 10.0
    # Height band: Gaussians stay within the seed points' heights (0.5-99.5 %) grown by this fraction
    # of the flying height; any that leave it are made transparent (and pruned at the next
    # refinement). Sparse nadir views otherwise explain what one photo shows with blobs hanging
    # between the ground and the camera that the neighbouring photos do not see. 0 = off.
    height_band: float = 0.0
    # Largest Gaussian axis as a fraction of the flying height (0 = no cap).
    max_scale: float = 0.0
    # Gaussian dropout (DropGaussian): each step every Gaussian is left out with this probability and
    # the others' opacity scaled by 1 / (1 - p), so no few Gaussians can each explain one training
    # photo on their own; evaluation renders all of them. 0 = off.
    dropout: float = 0.0
    # Composite each training render over a random colour (gsplat simple_trainer's random_bkgd): a
    # nadir photo sees opaque ground everywhere, and over a black background the optimiser darkens
    # colours by leaving the surface part transparent, which a new view sees through differently
    # (held-out alpha 0.77-0.94 over black, 0.98-0.99 with it). Measured: brighton_beach validation
    # +0.53 dB and a sixth less depth error, thinned sample +0.07 dB, full sample +0.03 dB.
    random_background: bool = True
    # classic or antialiased (gsplat's rasterize_mode).
    rasterize_mode: str = "classic"
    # Per-image camera pose refinement.
    pose_refinement: bool = False
    lr_pose: float = 1e-5
    # Steps between checkpoints (0 = only on SIGTERM).
    checkpoint_every: int = 500
    # Steps between progress lines in the log.
    log_every: int = 100
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict) -> "TrainConfig":
        """From the validated `train:` section; checks what the schema cannot express."""
        known = {f for f in cls.__dataclass_fields__}
        cfg = cls(**{k: v for k, v in section.items() if k in known})
        starts = [s for s, _ in cfg.resolution_schedule]
        if cfg.resolution_schedule and (starts[0] != 0 or starts != sorted(starts)
                                        or not all(0 < f <= 1 for _, f in cfg.resolution_schedule)):
            raise InputError(
                f"train.resolution_schedule {cfg.resolution_schedule}: the first level must start at 0, "
                "starts must increase and scales lie in (0, 1]",
                hint="e.g. [[0.0, 0.25], [0.15, 0.5], [0.4, 1.0]], or [] for full resolution throughout")
        return cfg

    def fingerprint(self, extra: object = None) -> str:
        """Hash of everything that changes the result; a checkpoint only resumes a matching run."""
        cfg = asdict(self)
        cfg.pop("device"), cfg.pop("log_every"), cfg.pop("checkpoint_every")
        text = json.dumps([cfg, extra], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("train.device is 'cuda' but no CUDA device is visible to this job",
                         hint="set train.device: auto (or cpu), or run the job on a GPU node")
    return torch.device(requested)


# ----------------------------------------------------------------------------- data


@dataclass
class Camera:
    name: str
    K: np.ndarray  # [3, 3] at the undistorted photo's size
    w2c: np.ndarray  # [4, 4]
    width: int
    height: int

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in the world frame [3]."""
        return -self.w2c[:3, :3].T @ self.w2c[:3, 3]

    def scaled(self, scale: float) -> tuple[np.ndarray, int, int]:
        """Intrinsics and size at `scale` of the photo."""
        w = max(1, round(self.width * scale))
        h = max(1, round(self.height * scale))
        K = self.K.copy()
        K[0] *= w / self.width
        K[1] *= h / self.height
        return K, w, h


def load_cameras(manifest: dict, names: list[str]) -> list[Camera]:
    cams = []
    for n in names:
        c = manifest["cameras"][n]
        w2c = np.eye(4)
        w2c[:3] = np.asarray(c["w2c"], float)
        cams.append(Camera(n, np.asarray(c["K"], float), w2c, int(c["width"]), int(c["height"])))
    return cams


def load_image(path: Path, width: int, height: int) -> torch.Tensor:
    """Photo as float [H, W, 3] in [0, 1], area-downscaled to (width, height)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BOX)
            return torch.from_numpy(np.asarray(im, np.float32) / 255.0)
    except OSError as exc:
        raise InputError(f"cannot read image: {exc}", path=str(path),
                         hint="re-run the partition stage to regenerate the undistorted images")


class ImageCache:
    """Training photos at each resolution level, loaded once per level."""

    def __init__(self, image_dir: Path, cameras: list[Camera], device: torch.device):
        self.image_dir, self.cameras, self.device = image_dir, cameras, device
        self.level_scale = None
        self.images: list[torch.Tensor] = []
        self.Ks: list[np.ndarray] = []

    def at(self, scale: float):
        if scale != self.level_scale:
            self.images, self.Ks = [], []
            for cam in self.cameras:
                K, w, h = cam.scaled(scale)
                self.images.append(load_image(self.image_dir / cam.name, w, h).to(self.device))
                self.Ks.append(K)
            self.level_scale = scale
        return self.images, self.Ks


def in_view(xyz: np.ndarray, cameras: list[Camera]) -> np.ndarray:
    """Whether each camera sees each point (in front, inside the photo; no occlusion): [N, cameras]."""
    hom = np.concatenate([xyz, np.ones((xyz.shape[0], 1))], 1)
    seen = []
    for cam in cameras:
        pc = hom @ cam.w2c[:3].T
        z = pc[:, 2]
        uv = pc[:, :2] @ cam.K[:2, :2].T / np.maximum(z, 1e-9)[:, None] + cam.K[:2, 2]
        seen.append((z > 0.01) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width)
                    & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height))
    return np.stack(seen, 1) if seen else np.zeros((len(xyz), 0), bool)


def visible_count(xyz: np.ndarray, cameras: list[Camera]) -> np.ndarray:
    """How many of `cameras` see each point (in front, inside the photo): [N]."""
    return in_view(xyz, cameras).sum(1)


def load_points(points_file: Path, partition: dict, max_reproj_px: float,
                cameras: list[Camera] | None = None, min_views: int = 2):
    """SfM points that seed the partition: those of its expanded cell (and z range) and, given its
    training `cameras`, every other point at least `min_views` of them see (VastGaussian's
    coverage-based selection). A partition's photos show more than its cell (obliques, the edges
    of nadir shots); with nothing there to explain those pixels, the optimiser bends the cell's own
    Gaussians into floaters. merge keeps only the Gaussians centred in the cell."""
    data = np.load(points_file)
    xyz, rgb, err = data["xyz"], data["rgb"], data["error"]
    b = partition["expanded_bounds"]
    z0, z1 = partition["z_range"]
    margin = 0.2 * max(z1 - z0, 1.0)
    keep = ((xyz[:, 0] >= b[0]) & (xyz[:, 0] <= b[2]) & (xyz[:, 1] >= b[1]) & (xyz[:, 1] <= b[3])
            & (xyz[:, 2] >= z0 - margin) & (xyz[:, 2] <= z1 + margin))
    if cameras:
        keep |= visible_count(xyz, cameras) >= min_views
    keep &= err <= max_reproj_px
    return xyz[keep], rgb[keep]


# ----------------------------------------------------------------------------- model


def knn_mean_distance(xyz: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean distance to the k nearest other points ([N]), by k-d tree (dense seeds run to 10^5-10^6)."""
    from scipy.spatial import cKDTree

    pts = xyz.detach().cpu().numpy().astype(np.float64)
    k = min(k, max(len(pts) - 1, 1))
    d, _ = cKDTree(pts).query(pts, k=k + 1)
    return torch.as_tensor(np.asarray(d).reshape(len(pts), -1)[:, 1:].mean(1), dtype=torch.float32)


def init_splats(xyz: np.ndarray, rgb: np.ndarray, cfg: TrainConfig, device) -> dict:
    """Gaussians at the SfM points: kNN-sized, isotropic, SH DC from the point colours."""
    if xyz.shape[0] < 4:
        raise InputError(f"only {xyz.shape[0]} SfM points inside the partition; cannot initialise",
                         hint="lower partition.min_points or choose a coarser grid")
    g = torch.Generator().manual_seed(cfg.seed)
    means = torch.as_tensor(xyz, dtype=torch.float32)
    dist = knn_mean_distance(means).clamp_min(1e-4)
    scales = torch.log(dist * cfg.init_scale)[:, None].repeat(1, 3)
    quats = torch.rand((means.shape[0], 4), generator=g)
    opac = torch.logit(torch.full((means.shape[0],), cfg.init_opacity))
    colors = torch.as_tensor(rgb, dtype=torch.float32) / 255.0
    sh0 = ((colors - 0.5) / SH_C0)[:, None, :]
    shN = torch.zeros((means.shape[0], (cfg.sh_degree + 1) ** 2 - 1, 3))
    params = {"means": means, "scales": scales, "quats": quats, "opacities": opac,
              "sh0": sh0, "shN": shN}
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device)) for k, v in params.items()})


def make_optimizers(splats, cfg: TrainConfig, scene_scale: float) -> dict:
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    return {k: torch.optim.Adam([{"params": splats[k], "lr": lr, "name": k}], eps=1e-15)
            for k, lr in lrs.items()}


def make_strategy(cfg: TrainConfig):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    start = min(cfg.refine_start, max(1, int(0.1 * cfg.steps)))
    stop = max(start + 1, int(cfg.refine_stop_fraction * cfg.steps))
    if cfg.strategy == "mcmc":
        if not torch.cuda.is_available():
            from .strategy_cpu import use_cpu_kernels

            use_cpu_kernels()
        return MCMCStrategy(cap_max=cfg.cap_max, refine_start_iter=start, refine_stop_iter=stop,
                            refine_every=cfg.refine_every)
    if cfg.strategy == "default":
        return DefaultStrategy(refine_start_iter=start, refine_stop_iter=stop,
                               refine_every=cfg.refine_every, reset_every=cfg.reset_every,
                               grow_grad2d=cfg.grow_grad2d)
    raise InputError(f"train.strategy '{cfg.strategy}' is not one of default, mcmc")


class Appearance(torch.nn.Module):
    """Per-training-image affine colour map, zero-mean over images so the splats hold the mean look."""

    def __init__(self, n: int):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.zeros(n, 3))
        self.bias = torch.nn.Parameter(torch.zeros(n, 3))

    def corrections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image's (gain, bias) [n, 3], zero mean over the images."""
        return self.gain - self.gain.mean(0), self.bias - self.bias.mean(0)

    def forward(self, img: torch.Tensor, i: int) -> torch.Tensor:
        gain, bias = self.corrections()
        return img * (1.0 + gain[i]) + bias[i]


def bake_appearance(splats, appearance: Appearance, cameras: list[Camera]) -> int:
    """Fold the per-image colour correction into the splats' colours, in place: each Gaussian gets
    the mean gain and bias of the training cameras whose view its centre lies in (none: identity).
    The DC colour maps affinely, the view-dependent SH terms scale by the gain. Returns how many
    Gaussians no camera sees."""
    with torch.no_grad():
        means = splats["means"].detach().cpu().numpy().astype(np.float64)
        dev = splats["sh0"].device
        vis = torch.as_tensor(in_view(means, cameras), dtype=torch.float32, device=dev)  # [N, images]
        gain, bias = (x.detach().to(dev) for x in appearance.corrections())
        count = vis.sum(1, keepdim=True)
        g = (vis @ gain) / count.clamp_min(1)
        b = (vis @ bias) / count.clamp_min(1)
        dc = splats["sh0"][:, 0] * SH_C0 + 0.5
        splats["sh0"][:, 0] = (dc * (1 + g) + b - 0.5) / SH_C0
        splats["shN"].mul_((1 + g)[:, None, :])
        return int((count == 0).sum())


class PoseDelta(torch.nn.Module):
    """Per-training-image small rigid correction (axis-angle, translation) to world-to-camera."""

    def __init__(self, n: int):
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros(n, 6))

    def forward(self, w2c: torch.Tensor, i: int) -> torch.Tensor:
        rot = self.delta[i, :3]
        theta = rot.norm() + 1e-12
        k = rot / theta
        Kx = torch.zeros(3, 3, device=w2c.device)
        Kx[0, 1], Kx[0, 2], Kx[1, 0] = -k[2], k[1], k[2]
        Kx[1, 2], Kx[2, 0], Kx[2, 1] = -k[0], -k[1], k[0]
        R = torch.eye(3, device=w2c.device) + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * Kx @ Kx
        d = torch.eye(4, device=w2c.device)
        d = torch.cat([torch.cat([R, self.delta[i, 3:, None]], 1), d[3:]], 0)
        return d @ w2c


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b).item()
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of two [H, W, 3] images (pytorch_msssim, 11 px Gaussian window)."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None], data_range=1.0,
                 size_average=True)


def dense_seed(prior: DepthPrior, images, cameras, xyz, rgb, voxel_px: float):
    """The SfM seed points plus the depth prior's confirmed pixels, one per voxel of `voxel_px`
    ground pixels (the ground sampling distance at the views' median depth), plus every 4th
    unconfirmed pixel at its nearest confirmed depth: water, foliage and the edges of the flight
    would otherwise start empty and render as background in views that see more of them."""
    dense_xyz, dense_rgb = prior.points([im.cpu() for im in images], [c.w2c for c in cameras],
                                        fill_stride=4)
    if len(dense_xyz) == 0:
        log.warning("depth prior confirmed no pixel: seeding from the SfM points only")
        return xyz, rgb
    depth = float(np.median(np.concatenate([d[d > 0].numpy() for d in prior.depths])))
    gsd = depth / float(np.median([K[0, 0] for K in prior.Ks]))
    dense_xyz, dense_rgb = voxel_downsample(dense_xyz, dense_rgb, voxel_px * gsd)
    log.info("dense seed: %d points from the depth prior (voxel %.3f m) + %d SfM points",
             len(dense_xyz), voxel_px * gsd, len(xyz))
    return (np.concatenate([xyz, dense_xyz]).astype(np.float32),
            np.concatenate([rgb, dense_rgb]).astype(np.float32))


def photo_neighbours(cameras: list[Camera], xyz: np.ndarray, n: int) -> list[list[int]]:
    """For each training photo, the `n` others that share most of its SfM points (mvs' choice)."""
    covis, _ = covisibility(xyz, [c.K for c in cameras], [c.w2c for c in cameras],
                            [(c.width, c.height) for c in cameras])
    centers = np.array([c.centre for c in cameras])
    axes = np.array([c.w2c[2, :3] for c in cameras])
    return choose_neighbours(centers, axes, covis, n)


def depth_loss(rendered: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Relative L1 between rendered expected depth and the prior where the prior is known."""
    mask = prior > 0
    if not bool(mask.any()):
        return rendered.sum() * 0
    return ((rendered[mask] - prior[mask]).abs() / prior[mask]).mean()


def anisotropy_penalty(log_scales: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Mean excess of longest/shortest axis over `max_ratio` (needle-like Gaussians)."""
    ratio = torch.exp(log_scales.max(-1).values - log_scales.min(-1).values)
    return (ratio - max_ratio).clamp_min(0).mean()


# ----------------------------------------------------------------------------- loop


def level_scale(cfg: TrainConfig, step: int) -> float:
    """Training resolution (fraction of the photo size) at `step`."""
    scale = cfg.resolution_schedule[0][1] if cfg.resolution_schedule else 1.0
    for start, s in cfg.resolution_schedule:
        if step >= start * cfg.steps:
            scale = s
    return cfg.image_scale * scale


class Checkpoint:
    """`ckpt/last.pt` beside the outputs; written atomically, resumed only by a matching run."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, **state}, tmp)
        log.info("checkpoint: step %d -> %s", state["step"], self.path)

    def load(self, device) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a checkpoint we cannot read is not worth failing over
            log.warning("checkpoint %s unreadable (%s): starting over", self.path, exc)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint %s belongs to another configuration: starting over", self.path)
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def cached_depth_prior(cache_dir: Path, images, Ks, cameras: list[Camera], xyz: np.ndarray,
                       mvs_cfg: MVSConfig, device) -> DepthPrior:
    """The plane-sweep prior (minutes on a CPU), kept in `cache_dir` under a hash of its inputs, so a
    resumed job or another configuration on the same photos does not sweep again."""
    key = hashlib.sha256(json.dumps([
        [c.name for c in cameras], [np.round(K, 6).tolist() for K in Ks],
        [np.round(c.w2c, 9).tolist() for c in cameras], [list(im.shape) for im in images],
        float(np.asarray(xyz, np.float64).sum()), len(xyz), asdict(mvs_cfg)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"depth_prior_{key}.pt"
    if path.exists():
        try:
            state = torch.load(path, weights_only=False)
            log.info("depth prior: reusing %s", path)
            return DepthPrior(state["depths"], state["Ks"], state["seconds"])
        except Exception as exc:  # an unreadable cache is only a lost shortcut
            log.warning("depth prior cache %s unreadable (%s): sweeping again", path, exc)
    prior = compute_depth_prior([im.cpu() for im in images], Ks, [c.w2c for c in cameras], xyz,
                                mvs_cfg, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"depths": [d.cpu() for d in prior.depths], "Ks": prior.Ks,
                    "seconds": prior.seconds, "names": [c.name for c in cameras]}, tmp)
    return prior


def train_partition(manifest_path, pid: str, cfg: TrainConfig, splats_out, metrics_out,
                    threads: int | None = None, prior_cache: Path | None = None) -> dict:
    """Train partition `pid` of the manifest; write the splats PLY and a metrics JSON.
    `prior_cache`: folder for the depth prior (default: the checkpoint folder beside the outputs)."""
    t_start = time.time()
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    part = find_partition(manifest, pid)
    if threads:
        torch.set_num_threads(threads)
    device = choose_device(cfg.device)
    rasterize = get_rasterizer(device.type)
    torch.manual_seed(cfg.seed)
    root = manifest_path.parent
    cameras = load_cameras(manifest, part["images"])
    if len(cameras) < 1:
        raise InputError(f"partition {pid} has no training images", path=str(manifest_path))
    xyz, rgb = load_points(root / manifest["points"], part, cfg.init_max_reproj_px,
                           cameras if cfg.init_points == "visible" else None)
    centers = np.array([c.centre for c in cameras])
    scene_scale = float(np.linalg.norm(centers - centers.mean(0), axis=1).max() * 1.1) or 1.0
    flying_height = max(float(np.median(centers[:, 2]) - np.median(xyz[:, 2])), 1e-3)
    band = None
    if cfg.height_band > 0:
        lo, hi = np.percentile(xyz[:, 2], [0.5, 99.5])
        band = (lo - cfg.height_band * flying_height, hi + cfg.height_band * flying_height)
        log.info("height band: Gaussians kept between z %.1f and %.1f m", *band)
    max_log_scale = math.log(cfg.max_scale * flying_height) if cfg.max_scale > 0 else None
    cache = ImageCache(root / manifest["images_dir"], cameras, device)
    prior = None
    if cfg.depth_prior == "mvs" and (cfg.depth_weight > 0 or cfg.fill_depth_weight > 0
                                     or cfg.dense_init or cfg.fill_seed_stride):
        images, Ks = cache.at(cfg.image_scale)
        prior = cached_depth_prior(prior_cache or Path(splats_out).parent / "ckpt", images, Ks,
                                   cameras, xyz, MVSConfig(max_size=cfg.mvs_max_size), device)
        if cfg.dense_init:
            xyz, rgb = dense_seed(prior, images, cameras, xyz, rgb, cfg.dense_init_voxel_px)
        elif cfg.fill_seed_stride:
            fill_xyz, fill_rgb = prior.points([im.cpu() for im in images], [c.w2c for c in cameras],
                                              stride=None, fill_stride=cfg.fill_seed_stride)
            log.info("fill seed: %d points where the prior is unconfirmed + %d SfM points",
                     len(fill_xyz), len(xyz))
            xyz = np.concatenate([xyz, fill_xyz]).astype(np.float32)
            rgb = np.concatenate([rgb, fill_rgb]).astype(np.float32)
    elif cfg.depth_prior not in ("mvs", "none"):
        raise InputError(f"train.depth_prior '{cfg.depth_prior}' is not one of mvs, none")

    if cfg.backdrop_px > 0:
        images, _ = cache.at(cfg.image_scale)
        fx = float(np.median([c.K[0, 0] for c in cameras])) * cfg.image_scale
        spacing = cfg.backdrop_px * flying_height / fx
        bxyz, brgb = backdrop_points(xyz, rgb, cameras, [im.cpu().numpy() for im in images], spacing)
        log.info("backdrop: %d ground points every %.2f m where no SfM point is", len(bxyz), spacing)
        xyz = np.concatenate([xyz, bxyz]).astype(np.float32)
        rgb = np.concatenate([rgb, brgb]).astype(np.float32)
    splats = init_splats(xyz, rgb, cfg, device)
    optimizers = make_optimizers(splats, cfg, scene_scale)
    strategy = make_strategy(cfg)
    strategy.check_sanity(splats, optimizers)
    if cfg.strategy == "mcmc":
        strat_state = strategy.initialize_state()
    else:
        strat_state = strategy.initialize_state(scene_scale=scene_scale)
    extras = torch.nn.ModuleDict()
    if cfg.appearance:
        extras["appearance"] = Appearance(len(cameras))
    if cfg.pose_refinement:
        extras["pose"] = PoseDelta(len(cameras))
    extras.to(device)
    extra_opts = {}
    if cfg.appearance:
        extra_opts["appearance"] = torch.optim.Adam(extras["appearance"].parameters(),
                                                    lr=cfg.lr_appearance)
    if cfg.pose_refinement:
        extra_opts["pose"] = torch.optim.Adam(extras["pose"].parameters(), lr=cfg.lr_pose)
    gen = torch.Generator().manual_seed(cfg.seed)
    bg_gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: the view order stays the same
    w2cs = torch.as_tensor(np.stack([c.w2c for c in cameras]), dtype=torch.float32, device=device)

    ckpt = Checkpoint(Path(splats_out).parent / "ckpt" / "last.pt",
                      cfg.fingerprint([part["images"], part["expanded_bounds"], xyz.shape[0]]))
    start_step, resumed_from = 0, None
    state = ckpt.load(device)
    if state is not None:
        for k in splats.keys():
            splats[k] = torch.nn.Parameter(state["splats"][k].to(device))
        optimizers = make_optimizers(splats, cfg, scene_scale)
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        strat_state = {k: (v.to(device) if torch.is_tensor(v) else v)
                       for k, v in state["strategy"].items()}
        extras.load_state_dict(state["extras"])
        for k, opt in extra_opts.items():
            opt.load_state_dict(state["extra_opts"][k])
        gen.set_state(state["rng"])
        bg_gen.set_state(state["bg_rng"])
        torch.set_rng_state(state["torch_rng"])  # densification samples from the global generator
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        start_step = resumed_from = int(state["step"])
        log.info("resumed %s from checkpoint at step %d/%d (%d Gaussians)", pid, start_step,
                 cfg.steps, splats["means"].shape[0])

    def save_checkpoint(step):
        ckpt.save({"step": step, "splats": {k: v.detach() for k, v in splats.items()},
                   "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                   "strategy": strat_state, "extras": extras.state_dict(),
                   "extra_opts": {k: o.state_dict() for k, o in extra_opts.items()},
                   "rng": gen.get_state(), "bg_rng": bg_gen.get_state(), "torch_rng": torch.get_rng_state(),
                   **({"cuda_rng": torch.cuda.get_rng_state()} if device.type == "cuda" else {})})

    stop_requested = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    means_decay = 0.01 ** (1.0 / max(cfg.steps, 1))  # the checkpoint's optimizer state holds the decayed lr
    use_depth = prior is not None and (cfg.depth_weight > 0 or cfg.fill_depth_weight > 0)
    fill_targets = None
    if prior is not None and cfg.fill_depth_weight > 0:
        fill_targets = prior.fill_only()
    neighbours = photo_neighbours(cameras, xyz, cfg.multiview_neighbours) \
        if cfg.multiview_weight > 0 else None
    log.info("training %s on %s: %d images, %d initial Gaussians, %d steps, scene scale %.1f m",
             pid, device, len(cameras), splats["means"].shape[0], cfg.steps, scene_scale)
    t_loop, steps_done, recent = time.time(), 0, []
    step = start_step
    try:
        for step in range(start_step, cfg.steps):
            if stop_requested:
                save_checkpoint(step)
                raise SystemExit(f"stopped by SIGTERM at step {step}; checkpoint saved, re-run to resume")
            scale = level_scale(cfg, step)
            images, Ks = cache.at(scale)
            i = int(torch.randint(len(cameras), (1,), generator=gen))
            gt = images[i]
            h, w = gt.shape[:2]
            sh_degree = min(step // cfg.sh_degree_interval, cfg.sh_degree)
            viewmat = w2cs[i]
            if cfg.pose_refinement:
                viewmat = extras["pose"](viewmat, i)
            keep = None
            if cfg.dropout > 0:
                keep = (torch.rand(splats["means"].shape[0], generator=gen) >= cfg.dropout).to(device)
                keep = keep.float() / (1.0 - cfg.dropout)
            background = torch.rand(3, generator=bg_gen).to(device) if cfg.random_background else None
            out, alpha, info = render_view(splats, Ks[i], viewmat, w, h, sh_degree=sh_degree,
                                           rasterizer=rasterize,
                                           render_mode="RGB+ED" if use_depth or neighbours else "RGB",
                                           rasterize_mode=cfg.rasterize_mode, opacity_scale=keep,
                                           background=background)
            img = out[..., :3]
            if cfg.appearance:
                img = extras["appearance"](img, i)
            strategy.step_pre_backward(splats, optimizers, strat_state, step, info)
            l1 = F.l1_loss(img, gt)
            loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt))
            if use_depth and cfg.depth_weight > 0:
                loss = loss + cfg.depth_weight * depth_loss(out[..., 3], prior.at(i, w, h).to(device))
            if fill_targets is not None:
                loss = loss + cfg.fill_depth_weight * depth_loss(out[..., 3],
                                                                 fill_targets.at(i, w, h).to(device))
            if neighbours and neighbours[i]:
                Kt = torch.as_tensor(Ks[i], dtype=torch.float32, device=device)
                srcs = [(images[j], torch.as_tensor(Ks[j], dtype=torch.float32, device=device), w2cs[j])
                        for j in neighbours[i]]
                loss = loss + cfg.multiview_weight * multiview_loss(out[..., 3], alpha[..., 0], gt, Kt,
                                                                    viewmat, srcs)
            if cfg.opacity_reg > 0:
                loss = loss + cfg.opacity_reg * torch.sigmoid(splats["opacities"]).mean()
            if cfg.scale_reg > 0:
                loss = loss + cfg.scale_reg * torch.exp(splats["scales"]).mean()
            if cfg.anisotropy_weight > 0:
                loss = loss + cfg.anisotropy_weight * anisotropy_penalty(splats["scales"],
                                                                         cfg.max_anisotropy)
            loss.backward()
            for opt in list(optimizers.values()) + list(extra_opts.values()):
                opt.step()
                opt.zero_grad(set_to_none=True)
            for g in optimizers["means"].param_groups:
                g["lr"] *= means_decay
            with torch.no_grad():
                if band is not None:
                    z = splats["means"][:, 2]
                    splats["opacities"][(z < band[0]) | (z > band[1])] = OUT_OF_BAND_LOGIT
                if max_log_scale is not None:
                    splats["scales"].clamp_(max=max_log_scale)
            if cfg.strategy == "mcmc":
                strategy.step_post_backward(splats, optimizers, strat_state, step, info,
                                            lr=optimizers["means"].param_groups[0]["lr"])
            else:
                strategy.step_post_backward(splats, optimizers, strat_state, step, info,
                                            packed=False)
            steps_done += 1
            recent.append(psnr(img.detach(), gt))
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                rate = steps_done / (time.time() - t_loop)
                eta = (cfg.steps - step - 1) / max(rate, 1e-9)
                log.info("%s step %d/%d  %dx%d  loss %.4f  psnr %.2f dB  %d Gaussians  "
                         "%.1f it/s  eta %.0f s", pid, step + 1, cfg.steps, w, h, loss.item(),
                         float(np.mean(recent)), splats["means"].shape[0], rate, eta)
                recent = []
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps:
                save_checkpoint(step + 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    train_seconds = time.time() - t_loop

    # Final figures on the partition's own training views, at full training resolution.
    with torch.no_grad():
        images, Ks = cache.at(cfg.image_scale)
        scores = []
        for i in range(len(cameras)):
            h, w = images[i].shape[:2]
            img, _, _ = render_view(splats, Ks[i], w2cs[i], w, h, sh_degree=cfg.sh_degree,
                                    rasterizer=rasterize, rasterize_mode=cfg.rasterize_mode)
            if cfg.appearance:
                img = extras["appearance"](img, i)
            scores.append(psnr(img, images[i]))
        if cfg.appearance and cfg.appearance_bake:
            unseen = bake_appearance(splats, extras["appearance"], cameras)
            log.info("appearance baked into the colours (%d Gaussians outside every photo)", unseen)
    write_ply(splats_out, {k: v.detach() for k, v in splats.items()})
    metrics = {
        "partition": pid,
        "device": str(device),
        "steps": cfg.steps,
        "resumed_from_step": resumed_from,
        "steps_this_run": steps_done,
        "num_gaussians": int(splats["means"].shape[0]),
        "num_images": len(cameras),
        "num_init_points": int(xyz.shape[0]),
        "train_psnr": float(np.mean(scores)),
        "image_size": [int(images[0].shape[1]), int(images[0].shape[0])],
        "train_seconds": round(train_seconds, 2),
        "depth_prior": None if prior is None else {
            "seconds": round(prior.seconds, 2), "confirmed_pixel_share": round(prior.valid_share(), 4)},
        "iterations_per_second": round(steps_done / max(train_seconds, 1e-9), 3),
        "seconds": round(time.time() - t_start, 2),
        "config": asdict(cfg),
    }
    if cfg.appearance:  # each training photo's correction (zero mean), for rendering new views in its look
        gains, biases = (x.tolist() for x in extras["appearance"].corrections())
        metrics["appearance"] = {c.name: {"gain": [round(x, 5) for x in g], "bias": [round(x, 5) for x in b]}
                                 for c, g, b in zip(cameras, gains, biases)}
    write_json(metrics_out, metrics)
    # The depth prior stays beside it: a resumed or re-configured run reuses it, and the products
    # stage scores its photogrammetry-only DSM with it (`products.mvs_reference`) instead of sweeping again.
    ckpt.remove()
    log.info("%s done: train PSNR %.2f dB, %d Gaussians, %.0f s", pid, metrics["train_psnr"],
             metrics["num_gaussians"], metrics["seconds"])
    return metrics
