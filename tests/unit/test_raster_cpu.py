"""The CPU rasterizer against a dense float64 reference (every pixel x every Gaussian, plain autograd),
against gsplat's own torch projection, against gsplat's CUDA rasterizer (GPU only), and with gsplat's
densification strategies."""

import math

import pytest
import torch
import torch.nn.functional as F
from aerosplat import raster_cpu
from aerosplat.raster_cpu import rasterization
from gsplat.cuda._torch_impl import _fully_fused_projection, _spherical_harmonics
from gsplat.strategy import DefaultStrategy

F64 = torch.float64


def _rotation(axis_angle):
    """Rodrigues: [3] -> [3, 3]."""
    theta = axis_angle.norm()
    k = axis_angle / theta
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=axis_angle.dtype)
    return torch.eye(3, dtype=axis_angle.dtype) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def _scene(seed=0, n=150, cams=2, width=24, height=18, dtype=F64, sh_degree=None, channels=3):
    """Random Gaussians around the origin seen by `cams` cameras from about 4 m (OpenCV axes)."""
    g = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    viewmats = []
    for c in range(cams):
        vm = torch.eye(4, dtype=dtype)
        vm[:3, :3] = _rotation(0.1 * randn(3))
        vm[:3, 3] = torch.tensor([0.3 * c, -0.2 * c, 4.0], dtype=dtype)
        viewmats.append(vm)
    f = 0.8 * width
    K = torch.tensor([[f, 0, width / 2 + 0.3], [0, 1.1 * f, height / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    colors = randn(n, (sh_degree + 1) ** 2, 3) * 0.4 if sh_degree is not None else rand(n, channels)
    return {
        "means": (rand(n, 3) - 0.5) * torch.tensor([4.0, 3.0, 2.0], dtype=dtype),
        "quats": randn(n, 4),
        "scales": torch.exp(randn(n, 3) * 0.5 - 1.9),
        "opacities": rand(n) * 0.9 + 0.05,
        "colors": colors,
        "viewmats": torch.stack(viewmats),
        "Ks": K.expand(cams, 3, 3).clone(),
        "width": width,
        "height": height,
    }


DIFF_KEYS = ("means", "quats", "scales", "opacities", "colors", "viewmats")


def _quat_to_rotmat(q):
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def _dense_project(means, quats, scales, opacities, viewmats, Ks, width, height, camera_model="pinhole",
                   near_plane=0.01, far_plane=1e10, eps2d=0.3, radius_clip=0.0, antialiased=False):
    """Straightforward EWA projection with gsplat 1.5.3's culling; [C, N, ...] tensors."""
    M = _quat_to_rotmat(quats) * scales[:, None, :]
    R = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    cov_c = R @ (M @ M.transpose(-1, -2))[None] @ R.transpose(-1, -2)
    means_c = torch.einsum("cij,nj->cni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    O = torch.zeros_like(z)
    if camera_model == "pinhole":
        tanx, tany = 0.5 * width / fx, 0.5 * height / fy
        tx = z * torch.clamp(x / z, -(cx / fx + 0.3 * tanx), (width - cx) / fx + 0.3 * tanx)
        ty = z * torch.clamp(y / z, -(cy / fy + 0.3 * tany), (height - cy) / fy + 0.3 * tany)
        J = torch.stack([fx / z, O, -fx * tx / z**2, O, fy / z, -fy * ty / z**2], -1)
        means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    else:
        J = torch.stack([fx + O, O, O, O, fy + O, O], -1)
        means2d = torch.stack([fx * x + cx, fy * y + cy], -1)
    J = J.reshape(J.shape[:-1] + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    conics = torch.stack([cov2d[..., 1, 1] / det, -cov2d[..., 0, 1] / det, cov2d[..., 0, 0] / det], -1)
    opac = opacities[None].expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp(det_orig / det, min=0))
    with torch.no_grad():
        extend = torch.sqrt(2 * torch.log(opac.clamp(min=1 / 255) * 255)).clamp(max=3.33)
        radius = torch.ceil(extend[..., None] * torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], -1).sqrt())
        visible = ((z >= near_plane) & (z <= far_plane) & (det > 0) & (opac >= 1 / 255)
                   & (radius > radius_clip).any(-1)
                   & (means2d[..., 0] + radius[..., 0] > 0) & (means2d[..., 0] - radius[..., 0] < width)
                   & (means2d[..., 1] + radius[..., 1] > 0) & (means2d[..., 1] - radius[..., 1] < height))
        radii = (radius * visible[..., None]).int()
    return radii, means2d, z, conics, opac


def _dense_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=None,
                  backgrounds=None, render_mode="RGB", rasterize_mode="classic", camera_model="pinhole",
                  near_plane=0.01, far_plane=1e10):
    """Reference rasterization: every pixel against every visible Gaussian, front to back, plain autograd.

    Returns gsplat's (colors, alphas) plus means2d [C, N, 2] (grad retained) and per-pixel copies of the
    visible 2D means (for absgrad: the sum over pixels of |dL/dmean2d| in each pixel).
    """
    C = len(viewmats)
    radii, means2d, depths, conics, opac = _dense_project(
        means, quats, scales, opacities, viewmats, Ks, width, height, camera_model, near_plane, far_plane,
        antialiased=rasterize_mode == "antialiased")
    means2d.retain_grad()
    if sh_degree is not None:
        dirs = means[None] - torch.inverse(viewmats)[:, None, :3, 3]
        sh = colors.expand((C,) + colors.shape[-3:])[..., : (sh_degree + 1) ** 2, :]
        col = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, sh) + 0.5, 0)
    else:
        col = colors.expand((C,) + colors.shape[-2:])
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        col = torch.cat([col, depths[..., None]], -1)
        bg = None if bg is None else torch.cat([bg, bg.new_zeros(C, 1)], -1)
    elif render_mode in ("D", "ED"):
        col = depths[..., None]
        bg = None if bg is None else bg.new_zeros(C, 1)
    py, px = torch.meshgrid(torch.arange(height, dtype=means.dtype) + 0.5,
                            torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij")
    pix = torch.stack([px.reshape(-1), py.reshape(-1)], -1)  # [HW, 2]
    images, alphas, per_pixel = [], [], []
    for c in range(C):
        ids = torch.nonzero((radii[c] > 0).all(-1)).squeeze(1)
        ids = ids[torch.sort(depths[c, ids].detach(), stable=True).indices]
        m2 = means2d[c, ids][None].expand(len(pix), -1, -1).clone()  # [HW, V, 2]
        m2.retain_grad()
        d = m2 - pix[:, None]
        a, b, cc = conics[c, ids].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + cc * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(opac[c, ids] * torch.exp(-sigma), 0.999)
        alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
        with torch.no_grad():  # stop before the Gaussian that takes T to <= 1e-4
            stopped = torch.cumsum((torch.cumprod(1 - alpha, 1) <= 1e-4).int(), 1) > 0
        alpha = torch.where(stopped, torch.zeros_like(alpha), alpha)
        T = torch.cat([torch.ones_like(alpha[:, :1]), torch.cumprod(1 - alpha, 1)[:, :-1]], 1)
        image = ((alpha * T)[..., None] * col[c, ids][None]).sum(1)
        t_final = torch.prod(1 - alpha, 1)
        if bg is not None:
            image = image + t_final[:, None] * bg[c]
        images.append(image.reshape(height, width, -1))
        alphas.append((1 - t_final).reshape(height, width, 1))
        per_pixel.append((ids, m2))
    render_colors, render_alphas = torch.stack(images), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], depth], -1)
    return render_colors, render_alphas, {"means2d": means2d, "radii": radii, "per_pixel": per_pixel}


def _run(fn, scene, seed=1, **kwargs):
    """Render with fresh leaf copies, backprop a fixed random linear loss; returns outputs, meta, grads."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items() if k in DIFF_KEYS}
    args = {**scene, **leaves}
    render_colors, render_alphas, meta = fn(**args, **kwargs)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    weights, weights_a = (torch.randn(x.shape, generator=g, dtype=F64).to(x)
                          for x in (render_colors, render_alphas))
    ((render_colors * weights).sum() + (render_alphas * weights_a).sum()).backward()
    return render_colors, render_alphas, meta, {k: v.grad for k, v in leaves.items()}


def _assert_close_rel(actual, expected, rel, what):
    scale = expected.abs().max().clamp(min=1e-12)
    err = (actual - expected).abs().max() / scale
    assert err <= rel, f"{what}: max error {err:.3g} of max |expected| {scale:.3g}"


def _compare_with_dense(scene, rel=1e-9, **kwargs):
    ours = _run(rasterization, scene, **kwargs)
    ref = _run(_dense_render, scene, **kwargs)
    assert ours[0].shape == ref[0].shape and ours[1].shape == ref[1].shape
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(ours[1], ref[1], rtol=0, atol=1e-10)
    assert torch.equal(ours[2]["radii"], ref[2]["radii"])
    for key in DIFF_KEYS:
        if ref[3][key] is None:  # unused input (colors in depth-only modes)
            assert ours[3][key] is None or not ours[3][key].any(), key
        else:
            _assert_close_rel(ours[3][key], ref[3][key], rel, f"d/d{key}")
    _assert_close_rel(ours[2]["means2d"].grad, ref[2]["means2d"].grad, rel, "d/dmeans2d")
    return ours, ref


CASES = {
    "pinhole": {},
    "antialiased_bg_rgbed": {"rasterize_mode": "antialiased", "render_mode": "RGB+ED", "backgrounds": "bg"},
    "ortho_rgbd": {"camera_model": "ortho", "render_mode": "RGB+D"},
    "ortho_antialiased_ed_bg": {"camera_model": "ortho", "render_mode": "ED", "rasterize_mode": "antialiased",
                                "backgrounds": "bg"},
    "sh3_d": {"sh_degree": 3, "render_mode": "D"},
    "sh2_bg": {"sh_degree": 2, "backgrounds": "bg"},
}


@pytest.mark.parametrize("case", CASES)
def test_matches_dense_reference(case):
    kwargs = dict(CASES[case])
    scene = _scene(seed=len(case), sh_degree=kwargs.get("sh_degree"))
    if kwargs.get("camera_model") == "ortho":
        scene["Ks"][:, 0, 0] = scene["Ks"][:, 1, 1] = 5.0
    if kwargs.get("backgrounds") == "bg":
        kwargs["backgrounds"] = torch.rand(2, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    ours, _ = _compare_with_dense(scene, **kwargs)
    assert ours[2]["n_pairs"] > 2 * scene["width"] * scene["height"]  # a scene that actually overlaps


def test_per_camera_colors_and_many_channels():
    scene = _scene(seed=5, channels=5)
    scene["colors"] = torch.rand(2, 150, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    _compare_with_dense(scene, backgrounds=torch.rand(2, 5, dtype=F64))


def test_per_camera_sh_with_more_bands_than_used():
    scene = _scene(seed=15)
    scene["colors"] = torch.randn(2, 150, 16, 3, dtype=F64, generator=torch.Generator().manual_seed(4)) * 0.3
    ours, _ = _compare_with_dense(scene, sh_degree=2)
    assert (ours[3]["colors"][..., 9:, :] == 0).all() and ours[3]["colors"][..., :9, :].abs().sum() > 0


def test_opaque_stack_terminates_like_gsplat():
    """A stack of nearly opaque Gaussians: each pixel stops before the layer that takes T to <= 1e-4.
    Covering the whole image drops most pairs (compaction); a small stack zeroes a few (masking)."""
    for coverage in (3.0, 0.2):
        scene = _scene(seed=11, n=80)
        stack = torch.arange(12, dtype=F64)
        scene["means"][:12] = torch.stack([0.05 * stack, 0.03 * stack, -1.0 + 0.1 * stack], -1)
        scene["scales"][:12] = coverage
        scene["opacities"][:12] = 0.6 + 0.03 * stack
        ours, _ = _compare_with_dense(scene)
        assert 1 - 1e-3 < ours[1].max() < 1 - 1e-4  # opaque, yet transmittance never reaches 1e-4


def _world_from_camera(scene, points_c, cam=0):
    """Points given in camera `cam`'s frame [K, 3] -> world."""
    R, t = scene["viewmats"][cam, :3, :3], scene["viewmats"][cam, :3, 3]
    return (points_c - t) @ R


def test_near_and_far_plane_culling():
    scene = _scene(seed=2, n=60)
    depths = torch.tensor([-0.5, 1e-3, 0.005, 50.0, 60.0, 0.011], dtype=F64)  # near 0.01, far 20 below
    scene["means"][:6] = _world_from_camera(scene, torch.stack([0.001 * depths, 0.001 * depths, depths], -1))
    ours, _ = _compare_with_dense(scene, far_plane=20.0)
    assert (ours[2]["radii"][0, :5] == 0).all() and (ours[2]["radii"][0, 5] > 0).all()
    assert ours[2]["depths"][0, :6].detach().allclose(depths)


def test_gaussian_on_the_camera_plane_keeps_gradients_finite():
    scene = _scene(seed=2, n=60)
    scene["means"][:2] = _world_from_camera(scene, torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    ours = _run(rasterization, scene)
    assert (ours[2]["radii"][0, :2] == 0).all()
    assert all(torch.isfinite(g).all() for g in ours[3].values())


def test_empty_scene_renders_background():
    scene = _scene(seed=3, n=10)
    scene["means"][:, 2] = -10.0  # all behind the cameras
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    colors, alphas, meta, grads = _run(rasterization, scene, backgrounds=bg)
    assert torch.equal(colors, bg[:, None, None, :].expand_as(colors)) and (alphas == 0).all()
    assert meta["n_pairs"] == 0 and all((g == 0).all() for g in grads.values())


def test_float32_matches_float64_reference():
    scene = _scene(seed=21, n=400, width=64, height=48, sh_degree=1)
    ref = _run(_dense_render, scene, sh_degree=1, render_mode="RGB+ED")
    ours = _run(rasterization, {k: v.float() if torch.is_tensor(v) else v for k, v in scene.items()},
                sh_degree=1, render_mode="RGB+ED")
    torch.testing.assert_close(ours[0].double(), ref[0], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(ours[1].double(), ref[1], rtol=0, atol=2e-5)
    for key in DIFF_KEYS:
        _assert_close_rel(ours[3][key].double(), ref[3][key], 1e-3, f"float32 d/d{key}")


def test_int64_sort_keys(monkeypatch):
    """Large images x many Gaussians x cameras do not fit the packed key in int32; the int64 path agrees."""
    init = raster_cpu._PixelCodes.__init__

    def wide(self, *args):
        init(self, *args)
        self.key_dtype = torch.int64

    monkeypatch.setattr(raster_cpu._PixelCodes, "__init__", wide)
    _compare_with_dense(_scene(seed=8), render_mode="RGB+D")


def test_means2d_grad_and_absgrad_match_per_pixel_reference():
    scene = _scene(seed=13)
    ref = _run(_dense_render, scene)
    absgrad = torch.zeros_like(ref[2]["means2d"])  # [C, N, 2]
    for c, (ids, per_pixel_means) in enumerate(ref[2]["per_pixel"]):
        absgrad[c, ids] = per_pixel_means.grad.abs().sum(0)
    for packed in (False, True):
        ours = _run(rasterization, scene, absgrad=True, packed=packed)
        meta = ours[2]
        if packed:
            cam, gs = meta["camera_ids"], meta["gaussian_ids"]
            assert meta["means2d"].shape == (len(cam), 2) and meta["radii"].shape == (len(cam), 2)
            _assert_close_rel(meta["means2d"].grad, ref[2]["means2d"].grad[cam, gs], 1e-9, "packed means2d.grad")
            _assert_close_rel(meta["means2d"].absgrad, absgrad[cam, gs], 1e-9, "packed absgrad")
        else:
            assert meta["gaussian_ids"] is None and meta["camera_ids"] is None
            _assert_close_rel(meta["means2d"].grad, ref[2]["means2d"].grad, 1e-9, "means2d.grad")
            _assert_close_rel(meta["means2d"].absgrad, absgrad, 1e-9, "absgrad")
            assert (absgrad >= meta["means2d"].grad.abs() - 1e-12).all()


def test_backward_twice_gives_the_same_gradients():
    """The backward must not modify what the forward saved (retain_graph, double loss terms)."""
    scene = {k: v.float() if torch.is_tensor(v) else v for k, v in _scene(seed=12).items()}
    means = scene.pop("means").requires_grad_()
    colors, alphas, _ = rasterization(means, **scene, render_mode="RGB+ED", backgrounds=torch.ones(2, 3))
    loss = colors.square().sum() + alphas.sum()
    first = torch.autograd.grad(loss, means, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(loss, means)[0]) and first.abs().sum() > 0


def test_meta_layout():
    scene = _scene(seed=4, dtype=torch.float32)
    colors, alphas, meta = rasterization(**scene, tile_size=16)
    C, N = 2, scene["means"].shape[0]
    assert colors.shape == (C, 18, 24, 3) and alphas.shape == (C, 18, 24, 1)
    assert meta["radii"].shape == (C, N, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (C, N, 2) and meta["depths"].shape == (C, N)
    assert meta["conics"].shape == (C, N, 3) and meta["opacities"].shape == (C, N)
    assert (meta["width"], meta["height"], meta["n_cameras"], meta["tile_size"]) == (24, 18, 2, 16)
    assert (meta["tile_width"], meta["tile_height"]) == (2, 2)
    packed = rasterization(**scene, packed=True)
    torch.testing.assert_close(packed[0], colors, rtol=0, atol=1e-6)
    visible = (meta["radii"] > 0).all(-1)
    assert torch.equal(packed[2]["radii"], meta["radii"][visible])
    assert torch.equal(packed[2]["gaussian_ids"], torch.nonzero(visible)[:, 1])


def test_projection_agrees_with_gsplat_torch_reference():
    """The dense reference's projection is itself checked against gsplat's `_fully_fused_projection`."""
    scene = _scene(seed=6)
    for model in ("pinhole", "ortho"):
        M = _quat_to_rotmat(scene["quats"]) * scene["scales"][:, None, :]
        _, means2d, depths, conics, _ = _fully_fused_projection(
            scene["means"], M @ M.transpose(-1, -2), scene["viewmats"], scene["Ks"], 24, 18, camera_model=model)
        radii, m2, z, con, _ = _dense_project(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                              scene["viewmats"], scene["Ks"], 24, 18, camera_model=model)
        ok = (radii > 0).all(-1)
        assert ok.sum() > 50
        for a, b in ((m2, means2d), (z, depths), (con, conics)):
            torch.testing.assert_close(a[ok], b[ok], rtol=1e-10, atol=1e-10)


def test_gradcheck_rasterize_function():
    g = torch.Generator().manual_seed(9)
    M, C, W, H = 7, 2, 9, 7
    means2d = torch.rand(M, 2, generator=g, dtype=F64) * torch.tensor([W, H], dtype=F64)
    L = torch.rand(M, 2, 2, generator=g, dtype=F64) * 2.0 + torch.eye(2, dtype=F64)
    cov = L @ L.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=F64)
    inv = torch.inverse(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    colors = torch.rand(M, 4, generator=g, dtype=F64)
    opacities = torch.rand(M, generator=g, dtype=F64) * 0.6 + 0.3
    backgrounds = torch.rand(C, 4, generator=g, dtype=F64)
    radii = torch.ceil(3.33 * torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1).sqrt()).int()
    geom = raster_cpu._Geometry(torch.arange(M) % C, torch.rand(M, generator=g, dtype=F64), radii, W, H, C)
    inputs = [t.requires_grad_() for t in (means2d, conics, colors, opacities, backgrounds)]
    assert torch.autograd.gradcheck(lambda *x: raster_cpu._RasterizePairs.apply(*x, geom), inputs, eps=1e-6,
                                    atol=1e-6)


def _splats(n, seed=0):
    """Trainer-style parameters (log scales, logit opacities, SH degree 1) on a 1 m patch."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.ParameterDict({
        "means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([2.0, 1.5, 0.5]),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.05 + 0.005),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.cat([torch.full((5,), -8.0), torch.randn(n - 5, generator=g)]),  # 5 to prune
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.3,
        "shN": torch.zeros(n, 3, 3),
    })


def _train(strategy, params, steps):
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmats = torch.eye(4)[None].clone()
    viewmats[0, 2, 3] = 3.0
    Ks = torch.tensor([[[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]])
    target = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(1))
    counts = []
    for step in range(steps):
        colors, _, info = rasterization(
            params["means"], F.normalize(params["quats"], dim=-1), torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]), torch.cat([params["sh0"], params["shN"]], 1), viewmats, Ks, 64, 48,
            sh_degree=1, absgrad=getattr(strategy, "absgrad", False))
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (colors - target).abs().mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        counts.append(len(params["means"]))
    return counts


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_grows_and_prunes(absgrad):
    params = _splats(60)
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, reset_every=1000, grow_grad2d=1e-7,
                               grow_scale3d=0.02, prune_opa=0.005, absgrad=absgrad)
    counts = _train(strategy, params, steps=3)
    # Step 2 refines: the 55 visible Gaussians are duplicated (small) or split (large), the 5 faint ones pruned.
    assert counts == [60, 60, 60 + 55 - 5]
    assert torch.sigmoid(params["opacities"]).min() >= 0.005


@pytest.mark.parametrize("kwargs", [
    {"camera_model": "fisheye"}, {"camera_model": "ftheta"}, {"distributed": True}, {"with_ut": True},
    {"segmented": True}, {"covars": torch.eye(3).expand(150, 3, 3)}, {"sparse_grad": True},
])
def test_unsupported_options_raise(kwargs):
    with pytest.raises(NotImplementedError):
        rasterization(**_scene(dtype=torch.float32), **kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        rasterization(**_scene(dtype=torch.float32), not_an_option=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares with gsplat's CUDA rasterizer")
def test_matches_gsplat_cuda():
    """Same scene through our CPU rasterizer and gsplat's CUDA one (float32, fast math on the GPU): a pair
    whose alpha sits within rounding of 1/255 may flip, so colours are judged by the 99.9th percentile."""
    import gsplat

    scene = _scene(seed=17, n=3000, cams=2, width=96, height=64, dtype=torch.float32, sh_degree=2)
    scene["scales"] = scene["scales"] * 0.5
    results = {}
    for device, fn in (("cpu", rasterization), ("cuda", gsplat.rasterization)):
        on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in scene.items()}
        colors, alphas, meta, grads = _run(fn, on_device, sh_degree=2, render_mode="RGB+ED", packed=False)
        results[device] = (colors.detach().cpu(), alphas.detach().cpu(), meta["radii"].cpu(),
                           {k: g.cpu() for k, g in grads.items() if g is not None})
    (c_cpu, a_cpu, r_cpu, g_cpu), (c_gpu, a_gpu, r_gpu, g_gpu) = results["cpu"], results["cuda"]
    rgb_diff = (c_cpu[..., :3] - c_gpu[..., :3]).abs()
    depth_diff = (c_cpu[..., 3:] - c_gpu[..., 3:]).abs()[a_gpu > 0.5]
    diffs = {
        "colors max": rgb_diff.max().item(),
        "colors p99.9": torch.quantile(rgb_diff.flatten(), 0.999).item(),
        "alphas max": (a_cpu - a_gpu).abs().max().item(),
        "ED depth max (alpha > 0.5)": depth_diff.max().item(),
        "ED depth p99.9": torch.quantile(depth_diff, 0.999).item(),
        "radii equal": (r_cpu == r_gpu).all(-1).float().mean().item(),
    }
    for key in ("means", "opacities"):
        diffs[f"d/d{key} max"] = (g_cpu[key] - g_gpu[key]).abs().max().item()
        diffs[f"d/d{key} rel. norm"] = ((g_cpu[key] - g_gpu[key]).norm() / g_gpu[key].norm()).item()
    print("CPU vs gsplat CUDA:", diffs)
    assert diffs["colors p99.9"] < 1e-3 and diffs["colors max"] < 1e-2 and diffs["alphas max"] < 1e-2
    assert diffs["ED depth p99.9"] < 1e-2 and diffs["radii equal"] > 0.99
    assert diffs["d/dmeans rel. norm"] < 2e-2 and diffs["d/dopacities rel. norm"] < 2e-2
