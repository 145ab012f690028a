"""CPU versions of the two CUDA kernels gsplat's MCMCStrategy calls, so `strategy: mcmc` runs on CPU.

gsplat's `strategy.ops` imports `compute_relocation` (the 3DGS-MCMC relocation rule, Eq. 9 of
Kheradmand et al. 2024) and `quat_scale_to_covar_preci` (used by the position noise) from its CUDA
wrapper. On a machine without CUDA we point those two names at torch implementations: gsplat's own
torch reference for the covariance, and the relocation formula below, written after the kernel.
DefaultStrategy needs neither.
"""

from __future__ import annotations

import math

import torch


def compute_relocation(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor,
                       binoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scale of each of `ratios[i]` copies of Gaussian i that together look like it.

    opacities [N], scales [N, 3], ratios [N] (clamped to [1, n_max]), binoms [n_max, n_max].
    """
    n_max = binoms.shape[0]
    ratios.clamp_(min=1, max=n_max)
    n = ratios.int().to(opacities.dtype)  # [N]
    new_opacities = 1.0 - torch.pow(1.0 - opacities, 1.0 / n)
    denom = torch.zeros_like(opacities)
    for i in range(1, int(n.max().item()) + 1 if n.numel() else 1):
        active = n >= i
        for k in range(i):
            term = ((-1.0) ** k / math.sqrt(k + 1)) * torch.pow(new_opacities, k + 1)
            denom = denom + torch.where(active, binoms[i - 1, k] * term, torch.zeros_like(term))
    coeff = opacities / denom
    return new_opacities, coeff[:, None] * scales


def quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=True, triu=False):
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def use_cpu_kernels() -> None:
    """Route gsplat's strategy ops to the CPU versions (idempotent; call only without CUDA)."""
    from gsplat.strategy import ops

    ops.compute_relocation = compute_relocation
    ops.quat_scale_to_covar_preci = quat_scale_to_covar_preci
