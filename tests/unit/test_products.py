"""The products stage's geometry: one scene grid tiled exactly by the cells' windows, orthographic
cameras that put each Gaussian in its grid cell, and depth fusion that drops floaters."""

import re

import numpy as np
import pytest
import torch

from aerosplat import products
from aerosplat.errors import InputError
from aerosplat.products import ProductOptions, View


def _manifest(extent=(-73.3, -57.4, 71.0, 60.8), grid=(2, 3)):
    rows, cols = grid
    xs = np.linspace(extent[0], extent[2], cols + 1)
    ys = np.linspace(extent[1], extent[3], rows + 1)
    parts = [{"id": f"p{r * cols + c:02d}", "cell_bounds": [xs[c], ys[r], xs[c + 1], ys[r + 1]]}
             for r in range(rows) for c in range(cols)]
    return {"frame": {"epsg": 32632, "origin": [465892.0, 5249293.0, 500.0]},
            "extent": list(extent), "partitions": parts}


@pytest.mark.parametrize("resolution", [0.3, 0.25, 1.7])
def test_cell_windows_tile_the_scene_grid_exactly_once(resolution):
    manifest = _manifest()
    grid = products.scene_grid(manifest, resolution, budget_mb=1000)
    hits = np.zeros((grid.height, grid.width), int)
    for part in manifest["partitions"]:
        r0, c0, rows, cols = products.cell_window(grid, manifest, part["id"])
        hits[r0:r0 + rows, c0:c0 + cols] += 1
    assert (hits == 1).all()


def test_grid_covers_the_extent_on_a_snapped_lattice():
    manifest = _manifest()
    grid = products.scene_grid(manifest, 0.3, budget_mb=1000)
    o = manifest["frame"]["origin"]
    assert grid.west <= manifest["extent"][0] + o[0] and grid.north >= manifest["extent"][3] + o[1]
    assert abs(grid.west / 0.3 - round(grid.west / 0.3)) < 1e-6


def test_a_resolution_over_the_memory_budget_is_refused_with_the_numbers():
    with pytest.raises(InputError) as exc:
        products.scene_grid(_manifest(), 0.01, budget_mb=100)
    text = str(exc.value)
    assert re.search(r"\d{4,} x \d{4,} cells, [\d,]+ MB", text), text
    assert "memory_budget_mb" in text and "resolution_m" in text


def test_a_geographic_crs_is_refused_for_rasters():
    manifest = _manifest()
    manifest["frame"]["epsg"] = 4326
    with pytest.raises(InputError, match="projected CRS"):
        products.delivery_crs(manifest)


def test_orthographic_render_puts_a_gaussian_in_its_grid_cell_at_its_height():
    # One small opaque Gaussian at a known local position, rendered straight down onto a 1 m grid.
    origin = np.array([1000.0, 2000.0, 100.0])
    grid = products.Grid(west=1000.0 - 10, north=2000.0 + 10, cell=1.0, width=20, height=20)
    x, y, z = 3.5, -4.5, 7.0  # local: the cell 13.5 m east of west, 14.5 m south of north
    splats = {"means": torch.tensor([[x, y, z]]), "quats": torch.tensor([[1.0, 0, 0, 0]]),
              "scales": torch.log(torch.full((1, 3), 0.6)), "opacities": torch.tensor([8.0]),
              "sh0": torch.ones(1, 1, 3), "shN": torch.zeros(1, 0, 3)}
    rgb, alpha, height = products.render_ortho(splats, grid, origin, max_tile_pixels=100)
    r, c = np.unravel_index(np.argmax(alpha), alpha.shape)
    assert (r, c) == (14, 13)
    assert abs(height[r, c] - (z + origin[2])) < 0.05
    assert np.isnan(height[0, 0]) and alpha[0, 0] < 0.01


def _view(K, centre, surface_z, w=64, h=48, floater=None):
    """A nadir view of the plane z = surface_z (and an optional floater patch in its depth)."""
    R = np.diag([1.0, -1.0, -1.0])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ centre
    depth = np.full((h, w), centre[2] - surface_z, np.float32)
    if floater is not None:
        depth[floater] = 0.5 * (centre[2] - surface_z)
    return View("v", depth, np.full((h, w, 3), 120, np.uint8), K, w2c)


def test_fusion_keeps_the_surface_and_drops_a_floater_only_one_view_sees():
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    views = [_view(K, np.array([dx, dy, 30.0]), 0.0) for dx in (-3, 0, 3) for dy in (-2, 2)]
    views[0] = _view(K, np.array([-3.0, -2.0, 30.0]), 0.0, floater=(slice(10, 20), slice(10, 20)))
    xyz, rgb, stats = products.fuse_views(views, ProductOptions(), (-50, -50, 50, 50))
    assert len(xyz) > 5000
    assert np.abs(xyz[:, 2]).max() < 0.05  # every kept point lies on the surface: the floater is gone
    assert stats["consistent_share"] < 1.0


def test_thinning_snaps_to_one_scene_wide_lattice():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 10, (20000, 3))
    rgb = rng.integers(0, 255, (20000, 3)).astype(np.uint8)
    a, _ = products.thin(xyz[:10000], rgb[:10000], 1.0)
    b, _ = products.thin(xyz, rgb, 1.0)
    assert len(b) <= 1000 and len(a) <= 1000
    # The same voxels whichever subset a cell holds: voxel keys of the part are a subset of the whole.
    keys_a = {tuple(k) for k in np.floor(a).astype(int)}
    keys_b = {tuple(k) for k in np.floor(b).astype(int)}
    assert keys_a <= keys_b


def test_no_merged_model_names_the_missing_stage_and_the_command(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "depth").mkdir()
    with pytest.raises(InputError) as exc:
        products.cell_products("p00", tmp_path / "merged/splats.ply", tmp_path / "manifest.json",
                               tmp_path / "depth", ProductOptions(), tmp_path / "out")
    text = str(exc.value)
    assert "merge stage has not run" in text and "snakemake --cores N" in text and "splats.ply" in text
    assert not (tmp_path / "out").exists()
