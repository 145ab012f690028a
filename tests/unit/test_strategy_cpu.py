"""The CPU relocation rule against its defining property and gsplat's kernel on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from aerosplat.strategy_cpu import compute_relocation


def binoms(n_max=51):
    b = torch.zeros(n_max, n_max)
    for n in range(n_max):
        for k in range(n + 1):
            b[n, k] = math.comb(n, k)
    return b


def test_one_copy_is_the_identity():
    o = torch.rand(50) * 0.9 + 0.05
    s = torch.rand(50, 3)
    new_o, new_s = compute_relocation(o, s, torch.ones(50), binoms())
    assert torch.allclose(new_o, o) and torch.allclose(new_s, s, rtol=1e-5)


def test_n_copies_keep_the_opacity_seen_through_them():
    # n copies of opacity o' stacked along a ray let through (1 - o')^n = 1 - o.
    o = torch.tensor([0.3, 0.6, 0.9, 0.95])
    ratios = torch.tensor([2.0, 3.0, 5.0, 8.0])
    new_o, new_s = compute_relocation(o, torch.ones(4, 3), ratios.clone(), binoms())
    assert torch.allclose((1 - new_o) ** ratios, 1 - o, atol=1e-6)
    assert torch.all(new_o < o) and torch.all(new_s > 0)


@pytest.mark.gpu
def test_matches_gsplat_cuda_kernel():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: gsplat's relocation kernel cannot run here")
    from gsplat.relocation import compute_relocation as cuda_relocation

    g = torch.Generator().manual_seed(0)
    o = torch.rand(1000, generator=g) * 0.98 + 0.01
    s = torch.rand(1000, 3, generator=g)
    r = torch.randint(1, 20, (1000,), generator=g).float()
    ref_o, ref_s = cuda_relocation(o.cuda(), s.cuda(), r.clone().cuda(), binoms().cuda())
    new_o, new_s = compute_relocation(o, s, r.clone(), binoms())
    assert torch.allclose(new_o, ref_o.cpu(), atol=1e-5)
    assert torch.allclose(new_s, ref_s.cpu(), rtol=1e-4, atol=1e-5)
