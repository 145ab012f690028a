"""Splat PLY round trip (3DGS layout) and the merge crop that keeps each Gaussian exactly once."""

from __future__ import annotations

import numpy as np
import torch

from aerosplat.merge import crop_mask
from aerosplat.splats import read_ply, sh_degree_of, write_ply


def random_splats(n=100, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g) * 10,
        "scales": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
    }


def test_ply_round_trip_is_exact_and_viewer_layout(tmp_path):
    splats = random_splats()
    write_ply(tmp_path / "s.ply", splats)
    back = read_ply(tmp_path / "s.ply")
    for k, v in splats.items():
        assert torch.equal(back[k], v), k
    assert sh_degree_of(back) == 3
    header = (tmp_path / "s.ply").read_bytes().split(b"end_header")[0].decode()
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    # The order 3DGS viewers expect: position, normal, DC, rest (channel-major), opacity, scale, rot.
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert props[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # f_rest is channel-major: f_rest_0..14 are the red coefficients of bands 1..3.
    raw = np.frombuffer((tmp_path / "s.ply").read_bytes()[len(header) + len("end_header\n"):],
                        dtype="<f4").reshape(100, -1)
    assert np.allclose(raw[:, 9:24], splats["shN"][:, :, 0].numpy())


def test_ply_degree_zero(tmp_path):
    splats = random_splats(degree=0)
    write_ply(tmp_path / "s.ply", splats)
    assert sh_degree_of(read_ply(tmp_path / "s.ply")) == 0


def test_crop_keeps_every_centre_in_exactly_one_cell():
    extent = [0.0, 0.0, 100.0, 50.0]
    cells = [[0, 0, 50, 25], [50, 0, 100, 25], [0, 25, 50, 50], [50, 25, 100, 50]]
    g = torch.Generator().manual_seed(1)
    means = torch.rand(20000, 3, generator=g) * torch.tensor([140.0, 90.0, 10.0]) - torch.tensor([20.0, 20.0, 0])
    means[:10, 0] = 50.0  # on a shared edge
    means[10:20, 1] = 25.0
    owners = torch.stack([crop_mask(means, c, extent) for c in cells]).sum(0)
    assert torch.all(owners == 1)  # beyond the extent: owned by the outer cell; edges: by one cell
    inner = crop_mask(means, [50, 0, 100, 25], [0, 0, 200, 50])  # not on the outside any more
    assert not inner[means[:, 0] >= 100].any()
