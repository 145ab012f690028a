"""Gaussian-splat rasterization in pure torch, with gsplat 1.5.3's `rasterization` signature.

Why: gsplat's kernels are CUDA only, yet the trainer also has to run on laptops and in CI. This module is a
drop-in for `gsplat.rasterization` on the CPU, so one training loop serves both (`aerosplat.splats.
get_rasterizer` picks), and gsplat's DefaultStrategy reads its `meta` unchanged.

Conventions (gsplat 1.5.3's, checked against its CUDA kernels, not only its torch reference):

- Cameras: `viewmats` [C, 4, 4] world-to-camera in OpenCV axes (x right, y down, z forward), `Ks` [C, 3, 3].
  "pinhole": u = fx·x/z + cx; "ortho": u = fx·x + cx (constant Jacobian). Pixel centres at (x + 0.5, y + 0.5).
- Projection (EWA): Σ2d = J·W·Σ·Wᵀ·Jᵀ, x/z and y/z clamped inside the pinhole Jacobian to the image edges plus
  0.3 half fields of view, plus `eps2d` on the diagonal; "antialiased" multiplies opacity by the compensation
  √(max(0, det Σ2d / det(Σ2d + eps2d·I))). Quaternions are wxyz and normalised here.
- Culling (radii 0): depth < near_plane or > far_plane, det ≤ 0, opacity (times compensation) < 1/255, both
  radii ≤ radius_clip, or mean ± radius outside the image. Radii are per axis, [C, N, 2] int32:
  ceil(k·√Σ2d_ii) with the opacity-aware k = min(3.33, √(2·ln(255·opacity))) of the CUDA kernel.
- Compositing: alpha = min(0.999, opacity·exp(−σ)), σ = ½·dᵀ·Σ2d⁻¹·d; a pair with σ < 0 or alpha < 1/255 is
  skipped; front to back by depth (ties by Gaussian index); a pixel stops before the Gaussian that would take
  its transmittance to ≤ 1e-4. render_alphas = 1 − final transmittance; backgrounds add T_final·background.
  A clamped alpha (opacity·exp(−σ) > 0.999) passes no gradient, as in gsplat's backward.
- SH colors: view direction = mean − camera centre, colour = max(SH(dir) + 0.5, 0).
- render_mode "RGB", "D", "ED", "RGB+D", "RGB+ED": depth is composited as one more channel (with a zero
  background); ED divides it by max(alpha, 1e-10).

How: projection and SH run under autograd. Rasterization is one autograd Function with a hand-written
backward over the (pixel, Gaussian) pairs that pass the alpha threshold: each Gaussian's ellipse
{σ ≤ ln(255·opacity)} is cut into row spans, spans are expanded to pairs keyed (pixel, depth rank) in one
integer, the keys are sorted, transmittance comes from a segmented float64 cumulative sum of log(1 − alpha),
and sums per pixel and per Gaussian are bincounts. For opacity ≤ 1 that ellipse lies inside gsplat's box, so
the pairs are exactly those gsplat's tiles composite. On the CPU the cost is memory traffic, so per-pair arrays
are updated in place, and the first CPU call tunes glibc's malloc to keep freed memory (see
`_keep_freed_memory`): otherwise a quarter of a step goes to page faults.

Differences from gsplat: no batch dimensions (means [N, 3]); camera_model "fisheye"/"ftheta", with_ut,
with_eval3d, segmented, covars, distortion, rolling shutter, distributed and sparse_grad raise
NotImplementedError. packed defaults to False here (gsplat: True); packed=True returns gsplat's packed meta
(camera_ids, gaussian_ids, [nnz, ...] tensors) but projects densely first. `channel_chunk` and `tile_size`
do not change the result (tile_size only sets tile_width/tile_height in meta). meta has no isect_ids/
flatten_ids/isect_offsets/tiles_per_gauss but adds n_pairs (pairs composited), and entries of means2d/conics/
depths whose radii are 0 hold finite computed values where gsplat leaves them undefined. Gaussians with
opacity > 1 (outside gsplat's domain) may lose a few faint pixels that gsplat's tiles would keep.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
MIN_TRANSMITTANCE = 1e-4
# Candidate pairs come from the ellipse σ <= ln(255·opacity) + _LEVEL_MARGIN, so that rounding never drops a
# pair the exact per-pair test (alpha >= 1/255) keeps.
_LEVEL_MARGIN = 1e-4
_RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3] SH coefficients
    viewmats: Tensor,  # [C, 4, 4] world to camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    **unsupported,
) -> tuple[Tensor, Tensor, dict]:
    """Render C images of N Gaussians like `gsplat.rasterization` (see the module docstring).

    Returns (render_colors [C, H, W, D'], render_alphas [C, H, W, 1], meta); D' is D, 1 or D + 1 by
    render_mode. `channel_chunk` is accepted for compatibility and has no effect.
    """
    _check_supported(sparse_grad, distributed, camera_model, render_mode, rasterize_mode, unsupported)
    if means.device.type == "cpu":
        _keep_freed_memory()
    N, C = means.shape[0], viewmats.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,):
        shapes = ", ".join(str(tuple(t.shape)) for t in (means, quats, scales, opacities))
        raise ValueError(f"expected means [N,3], quats [N,4], scales [N,3], opacities [N] (no batch dims), "
                         f"got {shapes}")
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(f"expected viewmats [C,4,4], Ks [C,3,3]; got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    per_camera = colors.dim() == (4 if sh_degree is not None else 3)
    if colors.shape[int(per_camera)] != N or (per_camera and colors.shape[0] != C):
        raise ValueError(f"colors {tuple(colors.shape)} does not match N={N}, C={C}")
    if sh_degree is not None and (not 0 <= sh_degree <= 4 or colors.shape[-1] != 3
                                  or (sh_degree + 1) ** 2 > colors.shape[-2]):
        raise ValueError(f"SH degree {sh_degree} (0..4) needs colors [(C,) N, >={(sh_degree + 1) ** 2}, 3], "
                         f"got {tuple(colors.shape)}")

    antialiased = rasterize_mode == "antialiased"
    radii, means2d, depths, conics, comps = _project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        radius_clip, antialiased, camera_model)
    opacities_c = opacities[None].expand(C, N)  # [C, N]
    if comps is not None:
        opacities_c = opacities_c * comps

    # Visible (camera, Gaussian) pairs in (camera, Gaussian) order: gsplat's packed layout.
    cam_ids, gs_ids = torch.nonzero((radii > 0).all(-1), as_tuple=True)  # [M], [M]
    flat_ids = cam_ids * N + gs_ids  # [M]
    means2d_v = means2d.reshape(C * N, 2)[flat_ids]  # [M, 2]
    depths_v = depths.reshape(-1)[flat_ids]  # [M]
    conics_v = conics.reshape(C * N, 3)[flat_ids]  # [M, 3]
    opacities_v = opacities_c.reshape(-1)[flat_ids]  # [M]
    radii_v = radii.reshape(C * N, 2)[flat_ids]  # [M, 2]
    colors_c = _colors(colors, sh_degree, means, viewmats)  # [C, N, D] or [N, D]
    colors_v = colors_c[cam_ids, gs_ids] if colors_c.dim() == 3 else colors_c[gs_ids]  # [M, D]

    if render_mode in ("RGB+D", "RGB+ED"):
        colors_v = torch.cat([colors_v, depths_v[:, None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors_v = depths_v[:, None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    if packed:
        means2d_meta = means2d_v
        absgrad_target, absgrad_rows = means2d_v, None
    else:
        means2d_meta = means2d
        absgrad_target, absgrad_rows = means2d, flat_ids
    geom = _Geometry(cam_ids, depths_v.detach(), radii_v, width, height, C,
                     absgrad_target if absgrad else None, absgrad_rows)
    render_colors, render_alphas = _RasterizePairs.apply(means2d_v, conics_v, colors_v, opacities_v,
                                                         backgrounds, geom)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)

    meta = {
        "batch_ids": None,
        "camera_ids": cam_ids if packed else None,
        "gaussian_ids": gs_ids if packed else None,
        "radii": radii_v if packed else radii,
        "means2d": means2d_meta,
        "depths": depths_v if packed else depths,
        "conics": conics_v if packed else conics,
        "opacities": opacities_v if packed else opacities_c,
        "tile_width": math.ceil(width / float(tile_size)),
        "tile_height": math.ceil(height / float(tile_size)),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
        "n_pairs": geom.n_pairs,  # (pixel, Gaussian) pairs composited, all cameras (not in gsplat)
    }
    return render_colors, render_alphas, meta


_MALLOC_TUNED = False


def _keep_freed_memory():
    """Once per process, on glibc: serve allocations up to 32 MiB from the heap and keep up to 1 GiB of freed
    heap mapped (mallopt), so that each call's per-pair arrays reuse memory instead of being page-faulted in
    anew (a quarter of a training step on a 2-core VM). A no-op where mallopt does not exist."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def _check_supported(sparse_grad, distributed, camera_model, render_mode, rasterize_mode, unsupported):
    """Raise for the gsplat options this CPU path does not implement."""
    if camera_model not in ("pinhole", "ortho"):
        raise NotImplementedError(f"camera_model={camera_model!r}: the CPU rasterizer has 'pinhole' and 'ortho'")
    if distributed:
        raise NotImplementedError("distributed rasterization is not supported by the CPU rasterizer")
    if sparse_grad:
        raise NotImplementedError("sparse_grad is not supported by the CPU rasterizer (gradients are dense)")
    if render_mode not in _RENDER_MODES:
        raise ValueError(f"render_mode={render_mode!r}: expected one of {_RENDER_MODES}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode={rasterize_mode!r}: expected 'classic' or 'antialiased'")
    defaults = {"segmented": False, "covars": None, "with_ut": False, "with_eval3d": False,
                "radial_coeffs": None, "tangential_coeffs": None, "thin_prism_coeffs": None,
                "ftheta_coeffs": None, "viewmats_rs": None}
    for key, value in unsupported.items():
        if key == "rolling_shutter":
            if getattr(value, "name", value) != "GLOBAL":
                raise NotImplementedError("rolling shutter is not supported by the CPU rasterizer")
        elif key not in defaults:
            raise TypeError(f"rasterization() got an unexpected keyword argument {key!r}")
        elif value is not defaults[key] and value is not None:
            raise NotImplementedError(f"{key}={value!r} is not supported by the CPU rasterizer")


def _project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
             radius_clip, antialiased, camera_model):
    """EWA projection of every (camera, Gaussian), differentiable, plus gsplat's culling as radii.

    Returns radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], compensations
    [C, N] (None unless antialiased).
    """
    qw, qx, qy, qz = F.normalize(quats, dim=-1).unbind(-1)  # [N]
    rot = torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
                       2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
                       2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1)
    shape = rot.view(-1, 3, 3) * scales[:, None, :]  # [N, 3, 3] R·S, covariance = (R·S)(R·S)ᵀ
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    x, y, z = means_c.unbind(-1)  # [C, N]
    in_depth = (z >= near_plane) & (z <= far_plane)  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # [C, 1]
    if camera_model == "ortho":
        jx, jy = fx[..., None] * R[:, None, 0], fy[..., None] * R[:, None, 1]  # rows of J·R, [C, 1, 3]
        jx, jy = jx.expand(-1, len(means), -1), jy.expand(-1, len(means), -1)  # [C, N, 3]
        means2d = torch.stack([fx * x + cx, fy * y + cy], -1)  # [C, N, 2]
    else:
        z = torch.where(in_depth, z, torch.ones_like(z))  # culled anyway; keeps gradients finite
        # Inside the Jacobian, x/z and y/z are clamped to the image edges plus 0.3 half fields of view.
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy  # [C, 1]
        u = torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)  # [C, N]
        v = torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
        # J = [[fx/z, 0, -fx·u/z], [0, fy/z, -fy·v/z]]; rows of J·R, [C, N, 3]:
        jx = (fx / z)[..., None] * (R[:, None, 0] - u[..., None] * R[:, None, 2])
        jy = (fy / z)[..., None] * (R[:, None, 1] - v[..., None] * R[:, None, 2])
        means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)  # [C, N, 2]
    # covariance2d = V·Vᵀ with V = J·R·(R_q·S): rows vx, vy [C, N, 3]
    vx = jx[..., 0:1] * shape[:, 0] + jx[..., 1:2] * shape[:, 1] + jx[..., 2:3] * shape[:, 2]
    vy = jy[..., 0:1] * shape[:, 0] + jy[..., 1:2] * shape[:, 1] + jy[..., 2:3] * shape[:, 2]
    c00, c11, c01 = vx.square().sum(-1), vy.square().sum(-1), (vx * vy).sum(-1)  # [C, N]
    det_orig = c00 * c11 - c01 * c01
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = c00 * c11 - c01 * c01  # [C, N]
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], -1)  # [C, N, 3]
    comps = torch.sqrt(torch.clamp(det_orig / det, min=0.0)) if antialiased else None  # [C, N]

    with torch.no_grad():
        opac = opacities[None] * comps if comps is not None else opacities[None].expand_as(det)  # [C, N]
        valid = valid & (opac >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(opac.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        radius = torch.ceil(extend[..., None] * torch.stack([c00, c11], -1).clamp(min=0).sqrt())  # [C, N, 2]
        valid = valid & (radius > radius_clip).any(-1)
        lo, hi = means2d - radius, means2d + radius  # [C, N, 2]
        valid = valid & (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height)
        radii = (radius * valid[..., None]).to(torch.int32)  # [C, N, 2]
    return radii, means2d, means_c[..., 2], conics, comps


def _colors(colors, sh_degree, means, viewmats):
    """Colors per (camera, Gaussian), [C, N, D] or [N, D] (direct colors shared by all cameras)."""
    if sh_degree is None:
        return colors
    k = (sh_degree + 1) ** 2
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    bases = _sh_bases(sh_degree, means[None] - campos[:, None])  # [C, N, k]
    rgb = _ShContract.apply(bases, colors if colors.shape[-2] == k else colors[..., :k, :])  # [C, N, 3]
    return torch.clamp_min(rgb + 0.5, 0.0)


class _ShContract(torch.autograd.Function):
    """rgb = Σ_k bases_k·coeffs_k: bases [C, N, k], coeffs [(C,) N, k, 3] -> [C, N, 3]. Autograd's batched
    matmul backward over millions of tiny matrices is slow on the CPU; this one is elementwise."""

    @staticmethod
    def forward(ctx, bases, coeffs):
        ctx.save_for_backward(bases, coeffs)
        return (bases[..., None, :] @ coeffs)[..., 0, :]

    @staticmethod
    def backward(ctx, v_rgb):
        bases, coeffs = ctx.saved_tensors
        v_bases = v_coeffs = None
        if ctx.needs_input_grad[0]:
            v_bases = sum(coeffs[..., d] * v_rgb[..., d, None] for d in range(3))  # [C, N, k]
        if ctx.needs_input_grad[1]:
            v_coeffs = bases[..., :, None] * v_rgb[..., None, :]  # [C, N, k, 3]
            if coeffs.dim() == 3:  # shared by all cameras
                v_coeffs = v_coeffs[0] if len(v_coeffs) == 1 else v_coeffs.sum(0)
        return v_bases, v_coeffs


def _sh_bases(degree, dirs):
    """Real SH bases up to `degree` (<= 4) at the directions [..., 3], [..., (degree + 1)²]; gsplat's
    ordering and constants (Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013)."""
    x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
    b = {0: torch.full_like(x, 0.2820947917738781)}
    if degree >= 1:
        b.update({1: -0.48860251190292 * y, 2: 0.48860251190292 * z, 3: -0.48860251190292 * x})
    if degree >= 2:
        z2, fc1, fs1 = z * z, x * x - y * y, 2 * x * y
        tb = -1.092548430592079 * z
        b.update({4: 0.5462742152960395 * fs1, 5: tb * y, 6: 0.9461746957575601 * z2 - 0.3153915652525201,
                  7: tb * x, 8: 0.5462742152960395 * fc1})
    if degree >= 3:
        tc, tb = -2.285228997322329 * z2 + 0.4570457994644658, 1.445305721320277 * z
        fc2, fs2 = x * fc1 - y * fs1, x * fs1 + y * fc1
        b.update({9: -0.5900435899266435 * fs2, 10: tb * fs1, 11: tc * y,
                  12: z * (1.865881662950577 * z2 - 1.119528997770346), 13: tc * x, 14: tb * fc1,
                  15: -0.5900435899266435 * fc2})
    if degree >= 4:
        td = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tc, tb = 3.31161143515146 * z2 - 0.47308734787878, -1.770130769779931 * z
        fc3, fs3 = x * fc2 - y * fs2, x * fs2 + y * fc2
        b.update({16: 0.6258357354491763 * fs3, 17: tb * fs2, 18: tc * fs1, 19: td * y,
                  20: 1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
                  - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
                  21: td * x, 22: tc * fc1, 23: tb * fc2, 24: 0.6258357354491763 * fc3})
    return torch.stack([b[i] for i in range(len(b))], -1)


@dataclass
class _Geometry:
    """The non-differentiable inputs of `_RasterizePairs` for M visible (camera, Gaussian) pairs."""

    camera_ids: Tensor  # [M] int64
    depths: Tensor  # [M], sort key (front to back)
    radii: Tensor  # [M, 2] int32, the box the pairs are searched in
    width: int
    height: int
    n_cameras: int
    absgrad_target: Tensor | None = None  # gets .absgrad [Q, 2] in backward (gsplat's AbsGS output)
    absgrad_rows: Tensor | None = None  # [M] row of each splat in absgrad_target.view(-1, 2); None: identity
    n_pairs: int = 0  # set by the forward: (pixel, Gaussian) pairs composited


class _RasterizePairs(torch.autograd.Function):
    """Front-to-back alpha compositing of M projected splats onto C images.

    Inputs: means2d [M, 2], conics [M, 3], colors [M, D], opacities [M], backgrounds [C, D] or None, and a
    `_Geometry`. Outputs: render_colors [C, H, W, D], render_alphas [C, H, W, 1]. Per-pair arrays are
    updated in place where possible: on the CPU a fresh large array costs more (page faults) than the math.
    """

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, geom):
        C, H, W, M = geom.n_cameras, geom.height, geom.width, colors.shape[0]
        layout = _PixelCodes(C, H, W, M)
        order = torch.sort(geom.depths, stable=True).indices  # [M] depth rank -> input row
        splats = torch.cat([means2d, conics, opacities[:, None]], -1)[order].t().contiguous()  # [6, M]
        s, code = _sorted_pairs(splats, geom.radii[order], geom.camera_ids[order], layout)  # [P] int32 each
        raw, dx, dy = _pair_alpha(splats, s, code, layout)  # [P] opacity * exp(-sigma) (0: skipped), offsets
        alpha = raw.clamp(max=MAX_ALPHA)  # [P]

        # Transmittance before each pair: exclusive segmented sum of log(1 - alpha) per pixel, in float64.
        # Skipped pairs (raw = 0) have alpha = 0: they change nothing and get no gradient.
        log1m = alpha.neg().log1p_()  # [P]
        counts = torch.bincount(code, minlength=layout.size)  # [codes]
        excl = log1m.to(torch.float64, copy=True).cumsum_(0).sub_(log1m)  # [P] running sum before each pair
        log_t = excl.sub_(_segment_first(excl, counts).index_select(0, code)).to(alpha.dtype)  # [P] log T
        log_final = _sum_by(code, log1m, layout.size)  # [codes] log T_final
        if bool((log_final <= math.log(MIN_TRANSMITTANCE)).any()):
            # Some pixels stop early: keep the prefix before the pair that would take T to <= 1e-4.
            keep = (torch.add(log_t, log1m) > math.log(MIN_TRANSMITTANCE)).to(raw.dtype)  # [P] 1 or 0
            for v in (raw, alpha, log1m):  # zero alpha zeroes a pair's weight and gradients
                v.mul_(keep)
            if torch.count_nonzero(raw) < 0.75 * len(raw):  # many pairs behind opaque layers: drop them
                idx = torch.nonzero(raw).squeeze(1)
                s, code, raw, alpha, dx, dy, log1m, log_t = (
                    v.index_select(0, idx) for v in (s, code, raw, alpha, dx, dy, log1m, log_t))
                counts = torch.bincount(code, minlength=layout.size)
            log_final = _sum_by(code, log1m, layout.size)
        geom.n_pairs = int(torch.count_nonzero(raw))
        trans = log_t.exp_()  # [P] T before the pair
        t_final = log_final.exp_()  # [codes]
        weight = alpha * trans  # [P]

        colors_s = colors[order].t().contiguous()  # [D, M]
        pair_colors = [row.index_select(0, s) for row in colors_s]  # D x [P]
        image = torch.stack([_sum_by(code, pc * weight, layout.size) for pc in pair_colors])  # [D, codes]
        if backgrounds is not None:
            image += layout.per_pixel(backgrounds.t()) * t_final
        render_colors = layout.to_images(image)  # [C, H, W, D]
        render_alphas = layout.to_images(1.0 - t_final[None])  # [C, H, W, 1]

        ctx.geom, ctx.layout, ctx.has_bg = geom, layout, backgrounds is not None
        ctx.save_for_backward(order, s, code, counts, raw, alpha, dx, dy, trans, t_final, weight, splats,
                              backgrounds if backgrounds is not None else colors.new_zeros(0), *pair_colors)
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        (order, s, code, counts, raw, alpha, dx, dy, trans, t_final, weight, splats, backgrounds,
         *pair_colors) = ctx.saved_tensors
        geom, layout = ctx.geom, ctx.layout
        M = splats.shape[1]
        g = layout.from_images(v_render_colors)  # [D, codes]
        g_pair = [row.index_select(0, code) for row in g]  # D x [P]
        cg = torch.zeros_like(weight)  # [P] c_i.g
        for pc, gp in zip(pair_colors, g_pair):
            cg.addcmul_(pc, gp)
        v_colors = torch.stack([_sum_by(s, gp.mul_(weight), M) for gp in g_pair])  # [D, M]

        # dL/dalpha_i = T_i c_i.g - (sum_{j behind i} w_j c_j.g - T_final (g_alpha - bg.g)) / (1 - alpha_i)
        incl = (weight * cg).double().cumsum_(0)  # [P] running sum of w c.g, all pixels
        rest = t_final * layout.from_images(v_render_alphas)[0]  # [codes]
        if ctx.has_bg:
            rest -= t_final * (layout.per_pixel(backgrounds.t()) * g).sum(0)
        seg_end = _segment_first(incl, counts, last=True) - rest  # [codes]
        behind = seg_end.index_select(0, code).sub_(incl).to(weight.dtype)  # [P]
        v_alpha = cg.mul_(trans).sub_(behind.div_(1.0 - alpha))  # [P]
        # dsigma = -raw·dalpha where alpha = raw <= 0.999; clamped pairs pass no gradient (gsplat's rule).
        v_sigma = v_alpha.mul_(F.threshold(raw.neg(), _below(-MAX_ALPHA, raw.dtype), 0.0))  # [P]

        # Per-splat moments of v_sigma (1, dx, dy, dx², dx·dy, dy²) give the conic, mean and opacity gradients.
        m0 = _sum_by(s, v_sigma, M)
        vx, vy = v_sigma * dx, v_sigma * dy  # [P]
        m1, m2, m4 = _sum_by(s, vx, M), _sum_by(s, vy, M), _sum_by(s, vx * dy, M)
        m3, m5 = _sum_by(s, vx.mul_(dx), M), _sum_by(s, vy.mul_(dy), M)
        a, b, c, opac = splats[2], splats[3], splats[4], splats[5]  # [M]
        v_splats = torch.stack([a * m1 + b * m2, b * m1 + c * m2,  # means2d
                                0.5 * m3, m4, 0.5 * m5,  # conics
                                torch.where(opac > 0, -m0 / opac.clamp(min=1e-30), torch.zeros_like(opac))])
        v_in = torch.empty_like(v_splats).index_copy_(1, order, v_splats).t()  # [M, 6] back to input rows
        v_colors_in = torch.empty_like(v_colors).index_copy_(1, order, v_colors).t()  # [M, D]
        if geom.absgrad_target is not None:
            _set_absgrad(geom, splats, s, v_sigma, dx, dy, order)
        v_backgrounds = None
        if ctx.has_bg and ctx.needs_input_grad[4]:
            v_backgrounds = (g * t_final).view(len(g), -1, layout.ny * layout.nx).sum(-1).t()  # [C, D]
        return v_in[:, :2], v_in[:, 2:5], v_colors_in, v_in[:, 5], v_backgrounds, None


def _set_absgrad(geom, splats, s, v_sigma, dx, dy, order):
    """gsplat's AbsGS output: the sum over pixels of |dL/dmeans2d| per pixel, on geom.absgrad_target."""
    a, b, c = (splats[i].index_select(0, s) for i in (2, 3, 4))  # [P]
    per_pair = [(v_sigma * (a * dx + b * dy)).abs_(), (v_sigma * (b * dx + c * dy)).abs_()]  # 2 x [P]
    m = torch.stack([_sum_by(s, v, splats.shape[1]) for v in per_pair])  # [2, M]
    v_abs = torch.empty_like(m).index_copy_(1, order, m).t()  # [M, 2] input rows
    target = geom.absgrad_target
    if geom.absgrad_rows is None:
        target.absgrad = v_abs
    else:
        full = v_abs.new_zeros(target.numel() // 2, 2)
        full[geom.absgrad_rows] = v_abs
        target.absgrad = full.view(target.shape)


def _sum_by(index, values, size):
    """Sums of values [P] per index [P] in 0..size-1 -> [size], in the dtype of values."""
    return torch.bincount(index, weights=values, minlength=size).to(values)


def _segment_first(values, counts, last=False):
    """values [P] at the first (or last) position of each segment of `counts` [S]; 0 for empty segments."""
    ends = counts.cumsum(0)  # [S]
    pos = (ends - 1) if last else (ends - counts)
    if len(values) == 0:
        return values.new_zeros(len(counts))
    return values.index_select(0, pos.clamp_(0, len(values) - 1)).masked_fill_(counts == 0, 0.0)


class _PixelCodes:
    """Bit-packed pixel ids, camera | y | x, so that (pixel, depth rank) sorts as one integer.

    Images are addressed in a padded [C, 2^ybits, 2^xbits] grid of `size` codes; a pair's sort key is
    code << sbits | depth rank, int32 when it fits (faster to sort).
    """

    def __init__(self, n_cameras, height, width, n_splats):
        self.C, self.H, self.W = n_cameras, height, width
        self.xbits, self.ybits = max(width - 1, 1).bit_length(), max(height - 1, 1).bit_length()
        self.sbits = max(n_splats - 1, 1).bit_length()
        self.nx, self.ny = 1 << self.xbits, 1 << self.ybits
        self.size = n_cameras * self.ny * self.nx
        bits = self.sbits + self.xbits + self.ybits + (n_cameras - 1).bit_length()
        self.key_dtype = torch.int32 if bits <= 31 else torch.int64

    def to_images(self, per_code):
        """[K, codes] -> [C, H, W, K]."""
        K = per_code.shape[0]
        return per_code.view(K, self.C, self.ny, self.nx)[:, :, : self.H, : self.W].permute(1, 2, 3, 0)

    def from_images(self, images):
        """[C, H, W, K] -> [K, codes], zero in the padding."""
        K = images.shape[-1]
        out = images.new_zeros(K, self.C, self.ny, self.nx)
        out[:, :, : self.H, : self.W] = images.permute(3, 0, 1, 2)
        return out.view(K, -1)

    def per_pixel(self, per_camera):
        """[K, C] -> [K, codes], each camera's value on all its codes."""
        K = per_camera.shape[0]
        return per_camera[:, :, None].expand(K, self.C, self.ny * self.nx).reshape(K, -1)


def _sorted_pairs(splats, radii, camera_ids, layout):
    """(depth rank, pixel code) of candidate pairs, sorted by pixel then depth.

    splats [6, M] rows mx, my, a, b, c, opacity, columns front to back; radii [M, 2] bound the search.
    Each splat's rows are cut to the x interval of its ellipse {σ ≤ ln(255·opacity) + _LEVEL_MARGIN}: a
    superset of the pairs with alpha ≥ 1/255, which the caller tests exactly.
    Returns s [P] (column of `splats`) and code [P], int32 when the packed key is, else int64.
    """
    H, W = layout.H, layout.W
    mx, my, a, b, c, opac = splats.double()
    rx, ry = radii.double().unbind(-1)  # [M]
    y0 = torch.ceil(my - ry - 0.5).clamp(min=0).long()  # rows with centres y + 0.5 within my ± ry
    y1 = torch.floor(my + ry - 0.5).clamp(max=H - 1).long()
    nrows = (y1 - y0 + 1).clamp(min=0)  # [M]
    g = torch.repeat_interleave(nrows)  # [R] splat of each row span
    y = torch.arange(len(g), device=g.device) - (nrows.cumsum(0) - nrows - y0).index_select(0, g)  # [R]
    ga, gb, gx = a.index_select(0, g), b.index_select(0, g), mx.index_select(0, g)  # [R]
    dy = my.index_select(0, g) - (y + 0.5)  # [R]

    # ½a·dx² + b·dy·dx + ½c·dy² <= level, dx = mx - (x + 0.5): x + 0.5 in centre ± half.
    level = torch.log(opac / ALPHA_THRESHOLD) + _LEVEL_MARGIN  # [M]
    disc = (gb * dy) ** 2 - ga * (c.index_select(0, g) * dy * dy - 2.0 * level.index_select(0, g))  # [R]
    half = torch.sqrt(disc.clamp(min=0)) / ga
    centre = gx + gb * dy / ga - 0.5  # [R]
    box0, box1 = torch.ceil(mx - rx - 0.5).index_select(0, g), torch.floor(mx + rx - 0.5).index_select(0, g)
    x0 = torch.maximum(torch.ceil(centre - half), box0).clamp(min=0).long()  # [R] first column
    x1 = torch.minimum(torch.floor(centre + half), box1).clamp(max=W - 1).long()  # [R] last column
    ncols = torch.where(disc >= 0, (x1 - x0 + 1).clamp(min=0), torch.zeros_like(x1))  # [R]

    # key = code << sbits | s; consecutive columns of a span differ by 1 << sbits.
    code0 = ((camera_ids.index_select(0, g) << layout.ybits) | y) << layout.xbits | x0  # [R]
    base = ((code0 << layout.sbits) | g) - ((ncols.cumsum(0) - ncols) << layout.sbits)  # [R]
    n = int(ncols.sum())
    key = torch.arange(n, device=base.device).bitwise_left_shift_(layout.sbits)
    key += torch.repeat_interleave(base, ncols, output_size=n)  # [P]
    key = torch.sort(key.to(layout.key_dtype)).values  # [P]
    return key & ((1 << layout.sbits) - 1), key.bitwise_right_shift_(layout.sbits)


def _pair_alpha(splats, s, code, layout):
    """Per pair: raw alpha opacity·exp(−σ), 0 where gsplat skips the pair (σ < 0 or alpha < 1/255), and
    dx = mean_x − (x + 0.5), dy = mean_y − (y + 0.5); [P] each."""
    mx, my, a, b, c, opac = (row.index_select(0, s) for row in splats)  # [P]
    dx = mx.sub_((code & (layout.nx - 1)).to(mx.dtype).add_(0.5))
    dy = my.sub_(((code >> layout.xbits) & (layout.ny - 1)).to(mx.dtype).add_(0.5))
    sigma = a.mul_(dx).mul_(dx).add_(c.mul_(dy).mul_(dy)).mul_(0.5).add_(b.mul_(dx).mul_(dy))  # [P]
    # F.threshold(x, t, v) keeps x > t (fast, unlike masked_fill_): σ < 0 -> inf -> alpha 0; alpha < 1/255 -> 0.
    raw = opac.mul_(F.threshold_(sigma, _below(0.0, sigma.dtype), math.inf).neg_().exp_())
    return F.threshold_(raw, _below(ALPHA_THRESHOLD, raw.dtype), 0.0), dx, dy


def _below(value, dtype):
    """The largest number of `dtype` below `value`, so that x > _below(v) means x >= v."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype)).item()
