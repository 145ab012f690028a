"""Multi-view photometric consistency: on a ray-cast synthetic heightfield, the true depth scores
best, and descending the loss moves a wrong depth towards the truth."""

import numpy as np
import torch

from aerosplat.consistency import multiview_loss, warp_from
from test_mvs import nadir_camera, render_scene


def _tensors(cam):
    K, w2c, _, _ = cam
    return torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(w2c, dtype=torch.float32)


def _setup():
    cams = [nadir_camera(0, 0, 40), nadir_camera(6, 0, 40), nadir_camera(0, 5, 40)]
    images, truths = render_scene(cams)
    K, w2c = _tensors(cams[0])
    neighbours = [(images[j], *_tensors(cams[j])) for j in (1, 2)]
    truth = torch.as_tensor(truths[0], dtype=torch.float32)
    return images[0], K, w2c, neighbours, truth


def test_warp_through_the_true_depth_reproduces_the_photo():
    image, K, w2c, neighbours, truth = _setup()
    src, sK, sw2c = neighbours[0]
    warped, valid = warp_from(src, truth, K, w2c, sK, sw2c)
    err = (warped - image).abs()[valid].mean().item()
    wrong, _ = warp_from(src, truth * 1.1, K, w2c, sK, sw2c)
    assert valid.float().mean() > 0.5
    assert err < 0.03
    assert (wrong - image).abs()[valid].mean().item() > 3 * err


def test_loss_is_lowest_at_the_true_depth_and_its_gradient_points_there():
    image, K, w2c, neighbours, truth = _setup()
    alpha = torch.ones_like(truth)
    losses = {s: multiview_loss(truth * s, alpha, image, K, w2c, neighbours).item()
              for s in (0.9, 0.97, 1.0, 1.03, 1.1)}
    assert min(losses, key=losses.get) == 1.0, losses
    assert losses[1.0] < 0.1
    # Gradient descent from a depth 3 % too far (about 3 px of parallax) recovers most of the error.
    depth = (truth * 1.03).clone().requires_grad_(True)
    opt = torch.optim.Adam([depth], lr=0.05)
    before = (depth - truth).abs().median().item()
    for _ in range(150):
        opt.zero_grad()
        multiview_loss(depth, alpha, image, K, w2c, neighbours).backward()
        opt.step()
    after = (depth.detach() - truth).abs().median().item()
    assert after < 0.4 * before, (before, after)


def test_uncovered_or_unseen_pixels_do_not_count():
    image, K, w2c, neighbours, truth = _setup()
    empty = torch.zeros_like(truth)
    loss = multiview_loss(truth * 1.1, empty, image, K, w2c, neighbours)
    assert loss.item() == 0.0
    assert multiview_loss(truth, torch.ones_like(truth), image, K, w2c, []).item() == 0.0
