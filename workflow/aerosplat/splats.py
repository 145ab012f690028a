"""Gaussian splat models on disk: the standard 3DGS PLY layout, plus render helpers.

Why: every stage after training (merge, evaluate, later the products) reads and writes the same
layout the 3DGS viewers understand - x y z, nx ny nz, f_dc_0..2, f_rest_* (channel-major, as the
original 3DGS code writes them), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz). Coordinates are
in the local frame; the frame reference (EPSG, origin) travels in a JSON beside the PLY.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_path

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def write_ply(path: str | Path, splats: dict[str, torch.Tensor]) -> None:
    """Write splats (means [N,3], scales [N,3] log, quats [N,4], opacities [N] logit,
    sh0 [N,1,3], shN [N,K-1,3]) as a binary little-endian 3DGS PLY, atomically."""
    means = splats["means"].detach().cpu().numpy().astype(np.float32)
    n = means.shape[0]
    sh0 = splats["sh0"].detach().cpu().numpy().astype(np.float32).reshape(n, -1, 3)
    shN = splats["shN"].detach().cpu().numpy().astype(np.float32).reshape(n, -1, 3)
    f_dc = sh0.transpose(0, 2, 1).reshape(n, -1)  # [N, 3]
    f_rest = shN.transpose(0, 2, 1).reshape(n, -1)  # [N, 3*(K-1)] channel-major
    cols = {
        **{k: means[:, i] for i, k in enumerate("xyz")},
        **{k: np.zeros(n, np.float32) for k in ("nx", "ny", "nz")},
        **{f"f_dc_{i}": f_dc[:, i] for i in range(f_dc.shape[1])},
        **{f"f_rest_{i}": f_rest[:, i] for i in range(f_rest.shape[1])},
        "opacity": splats["opacities"].detach().cpu().numpy().astype(np.float32).reshape(n),
        **{f"scale_{i}": splats["scales"].detach().cpu().numpy().astype(np.float32)[:, i]
           for i in range(3)},
        **{f"rot_{i}": splats["quats"].detach().cpu().numpy().astype(np.float32)[:, i]
           for i in range(4)},
    }
    data = np.empty(n, dtype=[(k, "<f4") for k in cols])
    for k, v in cols.items():
        data[k] = v
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {k}" for k in cols]
    header += ["end_header"]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(data.tobytes())


def read_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a 3DGS PLY written by `write_ply` (or any viewer-compatible float PLY)."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        names, n, fmt = [], 0, None
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            parts = line.decode("ascii").split()
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element" and parts[1] == "vertex":
                n = int(parts[2])
            elif parts[0] == "property":
                if parts[1] != "float":
                    raise ValueError(f"{path}: property {parts[-1]} is {parts[1]}, expected float")
                names.append(parts[2])
            elif parts[0] == "end_header":
                break
        if fmt != "binary_little_endian":
            raise ValueError(f"{path}: PLY format {fmt} is not supported (binary_little_endian only)")
        data = np.frombuffer(fh.read(n * 4 * len(names)), dtype=[(k, "<f4") for k in names], count=n)
    n_rest = sum(1 for k in names if k.startswith("f_rest_"))
    f_dc = np.stack([data[f"f_dc_{i}"] for i in range(3)], 1)
    f_rest = (np.stack([data[f"f_rest_{i}"] for i in range(n_rest)], 1) if n_rest
              else np.zeros((n, 0), np.float32))
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return {
        "means": t(np.stack([data[k] for k in "xyz"], 1)),
        "scales": t(np.stack([data[f"scale_{i}"] for i in range(3)], 1)),
        "quats": t(np.stack([data[f"rot_{i}"] for i in range(4)], 1)),
        "opacities": t(data["opacity"]),
        "sh0": t(f_dc.reshape(n, 3, 1).transpose(0, 2, 1)),
        "shN": t(f_rest.reshape(n, 3, n_rest // 3).transpose(0, 2, 1)),
    }


def sh_degree_of(splats: dict[str, torch.Tensor]) -> int:
    k = 1 + splats["shN"].shape[1]
    return int(round(np.sqrt(k))) - 1


def get_rasterizer(device: str):
    """gsplat's CUDA rasterizer on a GPU, our pure-torch one (same signature) on the CPU."""
    if str(device).startswith("cuda"):
        from gsplat import rasterization
        return rasterization
    from .raster_cpu import rasterization
    return rasterization


def render_view(splats: dict[str, torch.Tensor], K, w2c, width: int, height: int,
                sh_degree: int | None = None, render_mode: str = "RGB", rasterizer=None,
                background=None, camera_model: str = "pinhole", rasterize_mode: str = "classic",
                colors: torch.Tensor | None = None, opacity_scale: torch.Tensor | None = None):
    """Render one camera. K [3,3] and w2c [3,4] or [4,4] as arrays or tensors (a tensor w2c keeps
    its autograd graph, e.g. for pose refinement). `colors` [N, D] replaces the splats' SH colours
    with D plain channels (sh_degree is then ignored). `opacity_scale` [N] multiplies the opacities
    (clamped below 1), e.g. Gaussian dropout in training.

    Returns (image [H, W, C], alpha [H, W, 1], meta).
    """
    device = splats["means"].device
    rasterizer = rasterizer or get_rasterizer(device.type)
    K = torch.as_tensor(K, dtype=torch.float32, device=device)
    w2c = torch.as_tensor(w2c, dtype=torch.float32, device=device)
    if w2c.shape[0] == 3:
        w2c = torch.cat([w2c, torch.tensor([[0, 0, 0, 1.0]], device=device)], 0)
    if colors is not None:
        sh_degree = None
    else:
        colors = torch.cat([splats["sh0"], splats["shN"]], 1)
        if sh_degree is None:
            sh_degree = sh_degree_of(splats)
    bg = None if background is None else torch.as_tensor(background, dtype=torch.float32,
                                                         device=device).reshape(1, -1)
    opacities = torch.sigmoid(splats["opacities"])
    if opacity_scale is not None:
        opacities = (opacities * opacity_scale).clamp(max=0.999)
    img, alpha, meta = rasterizer(
        means=splats["means"], quats=splats["quats"], scales=torch.exp(splats["scales"]),
        opacities=opacities, colors=colors,
        viewmats=w2c[None], Ks=K[None], width=width, height=height,
        sh_degree=sh_degree, packed=False, render_mode=render_mode, backgrounds=bg,
        camera_model=camera_model, rasterize_mode=rasterize_mode)
    return img[0], alpha[0], meta
