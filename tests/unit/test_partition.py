"""Partitioning on constructed scenes: grid choice, what-it-sees assignment, sparse cells, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from aerosplat import partition as P


def look_at(center, target, f=500.0, w=640, h=480) -> P.View:
    """Pinhole view at `center` looking at `target` (OpenCV axes, image 'up' towards +y world)."""
    center, target = np.asarray(center, float), np.asarray(target, float)
    z = target - center
    z /= np.linalg.norm(z)
    up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    return P.View("v", K, np.concatenate([R, (-R @ center)[:, None]], 1), w, h)


def make_geometry(views: dict, xyz: np.ndarray) -> P.SceneGeometry:
    """Observers = every view whose image contains the point within 120 m (SIFT stops matching
    far away, at grazing angles); no occlusion."""
    train = sorted(views)
    observers = []
    for p in xyz:
        seen = []
        for i, n in enumerate(train):
            v = views[n]
            pc = v.w2c[:, :3] @ p + v.w2c[:, 3]
            if pc[2] <= 0 or np.linalg.norm(p - v.center) > 120:
                continue
            u, w_ = (v.K @ pc)[:2] / pc[2]
            if 0 <= u < v.width and 0 <= w_ < v.height:
                seen.append(i)
        observers.append(np.array(seen, int))
    return P.SceneGeometry(views, train, xyz, observers, (-5.0, 25.0))


def ground_points(x0, x1, y0, y1, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n), rng.uniform(0, 10, n)], 1)


@pytest.fixture()
def strip():
    """A 200 x 60 m strip flown nadir at 60 m every 10 m, plus one oblique looking east from the west end."""
    views = {}
    for k, x in enumerate(range(-95, 100, 10)):
        v = look_at([x, 0, 60], [x, 0.001, 0])
        v.name = f"n{k:02d}"
        views[v.name] = v
    obl = look_at([-130, 0, 40], [50, 0, 0], f=400)
    obl.name = "oblique"
    views["oblique"] = obl
    return make_geometry(views, ground_points(-100, 100, -30, 30, 3000))


def test_box_coverage_nadir_and_looking_away():
    box_min, box_max = np.array([-100.0, -100, 0]), np.array([100.0, 100, 10])
    assert P.box_coverage(look_at([0, 0, 50], [0, 0.001, 0]), box_min, box_max) == 1.0
    assert P.box_coverage(look_at([0, 0, 50], [0, 0.001, 100]), box_min, box_max) == 0.0
    # Half the image over the box: a nadir camera above the box's edge.
    half = P.box_coverage(look_at([100, 0, 50], [100, 0.001, 0]), box_min, box_max)
    assert 0.4 < half < 0.6


def test_fixed_grid_assigns_nadir_by_footprint_and_oblique_by_what_it_sees(strip):
    opts = P.PartitionOptions(grid=(1, 4), overlap=0.1)
    part, warnings = P.build_partitions(strip, opts)
    assert not warnings
    cells = part["partitions"]
    assert [c["id"] for c in cells] == ["p00", "p01", "p02", "p03"]
    # Cells tile the extent exactly, west to east; expanded bounds contain the cell.
    for a, b in zip(cells, cells[1:]):
        assert a["cell_bounds"][2] == pytest.approx(b["cell_bounds"][0])
    for c in cells:
        e, b = c["expanded_bounds"], c["cell_bounds"]
        assert e[0] < b[0] and e[2] > b[2] and c["num_points"] > 100
    # The oblique stands west of the whole scene yet looks across the two western cells.
    assert "oblique" in cells[0]["images"] and "oblique" in cells[1]["images"]
    assert "oblique" not in cells[3]["images"]
    # A nadir photo joins the cells its ~77 m footprint covers enough of, not the far end.
    assert "n00" in cells[0]["images"] and "n00" not in cells[3]["images"]
    assert "n19" in cells[3]["images"] and "n19" not in cells[0]["images"]
    # Every training image trains at least one partition.
    assert set().union(*[c["images"] for c in cells]) == set(strip.train)


def test_assignment_by_position_only_would_miss_the_oblique(strip):
    """Counter-check: with coverage and point-share thresholds disabled, only standing inside counts."""
    opts = P.PartitionOptions(grid=(1, 4), overlap=0.1, min_coverage=1.01, min_point_share=1.01)
    part, _ = P.build_partitions(strip, opts)
    assert all("oblique" not in c["images"] for c in part["partitions"])


def test_auto_grid_respects_max_images(strip):
    part, _ = P.build_partitions(strip, P.PartitionOptions(max_images_per_partition=14))
    assert max(len(c["images"]) for c in part["partitions"]) <= 14
    assert len(part["partitions"]) >= 2
    rows, cols = part["grid"]
    assert cols > rows  # the strip is long east-west
    one, _ = P.build_partitions(strip, P.PartitionOptions(max_images_per_partition=1000))
    assert one["grid"] == [1, 1]


def test_empty_cell_is_merged_into_a_neighbour_with_a_warning(strip):
    # A lake: no SfM point in the third quarter (and its margins); that cell has views, nothing to train.
    keep = (strip.xyz[:, 0] < -8) | (strip.xyz[:, 0] > 58)
    geo = make_geometry(strip.views, strip.xyz[keep])
    geo.xyz = strip.xyz[keep]
    opts = P.PartitionOptions(grid=(1, 4), overlap=0.1)
    part, warnings = P.build_partitions(geo, opts)
    assert len(part["partitions"]) == 3
    assert len(warnings) == 1 and "merged into its neighbour" in warnings[0]
    widths = sorted(c["cell_bounds"][2] - c["cell_bounds"][0] for c in part["partitions"])
    assert widths[-1] == pytest.approx(2 * widths[0], rel=0.01)  # one neighbour took the lake's cell


def test_lone_empty_cell_is_dropped_not_fatal():
    views = {f"n{k}": look_at([x, 0, 60], [x, 0.001, 0]) for k, x in enumerate([0, 10, 20])}
    for n, v in views.items():
        v.name = n
    geo = make_geometry(views, ground_points(-20, 40, -20, 20, 500))
    cells = [P.Cell([-20, -20, 10, 20]), P.Cell([500, 500, 600, 600])]  # second far away, not adjacent
    opts = P.PartitionOptions()
    for c in cells:
        P.assign_cell(c, geo, opts)
    kept, warnings = P.merge_sparse_cells(cells, geo, opts)
    assert len(kept) == 1 and "dropped" in warnings[0]


def test_heldout_every_eighth_sorted_starting_with_first():
    names = [f"DJI_{i:04d}.JPG" for i in range(18, 36)]
    assert P.heldout_names(list(reversed(names)), 8) == ["DJI_0018.JPG", "DJI_0026.JPG", "DJI_0034.JPG"]
    assert P.heldout_names(names, 0) == []


def test_monolithic_entry_covers_every_training_image(strip):
    part, _ = P.build_partitions(strip, P.PartitionOptions(grid=(1, 2), monolithic=True))
    mono = part["monolithic"]
    assert mono["id"] == "monolithic" and sorted(mono["images"]) == sorted(strip.train)
    assert mono["num_points"] == strip.xyz.shape[0]
