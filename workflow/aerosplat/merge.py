"""Merge partition models into one: each partition keeps only the Gaussians centred in its own cell.

Why crop to the un-expanded cell: the overlap margins exist so that a partition's border is trained
with context; both neighbours reconstruct the margin, and keeping both copies would double-count it.
Cells on the outer edge of the grid keep everything beyond that edge (background, outliers the SfM
extent left out), so nothing that was trained disappears from the outside of the scene.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .fileio import read_json, write_json
from .manifest import load_manifest
from .splats import read_ply, write_ply

log = logging.getLogger(__name__)


def crop_mask(means: torch.Tensor, cell: list[float], extent: list[float]) -> torch.Tensor:
    """Gaussians whose centre lies in the cell [xmin, ymin, xmax, ymax), edges on the grid's
    outside open. Half-open on the inside so a centre on a shared edge belongs to exactly one cell."""
    x, y = means[:, 0], means[:, 1]
    eps = 1e-6
    lo_x = torch.full_like(x, True, dtype=torch.bool) if cell[0] <= extent[0] + eps else x >= cell[0]
    lo_y = torch.full_like(y, True, dtype=torch.bool) if cell[1] <= extent[1] + eps else y >= cell[1]
    hi_x = torch.full_like(x, True, dtype=torch.bool) if cell[2] >= extent[2] - eps else x < cell[2]
    hi_y = torch.full_like(y, True, dtype=torch.bool) if cell[3] >= extent[3] - eps else y < cell[3]
    return lo_x & lo_y & hi_x & hi_y


def merge(manifest_path, partition_plys: dict[str, str], frame_json, splats_out, frame_out,
          report_out) -> dict:
    """Rule `merge`: crop, concatenate, write the merged PLY, its frame reference and a report."""
    manifest = load_manifest(manifest_path)
    extent = manifest["extent"]
    parts, report = [], []
    for p in manifest["partitions"]:
        splats = read_ply(partition_plys[p["id"]])
        keep = crop_mask(splats["means"], p["cell_bounds"], extent)
        parts.append({k: v[keep] for k, v in splats.items()})
        report.append({"id": p["id"], "gaussians": int(keep.numel()), "kept": int(keep.sum())})
        log.info("%s: kept %d of %d Gaussians (centre inside its cell)", p["id"], int(keep.sum()),
                 keep.numel())
    degrees = {v["shN"].shape[1] for v in parts}
    if len(degrees) > 1:
        k = max(degrees)
        for v in parts:  # pad lower SH degrees with zeros so every row has the same layout
            pad = k - v["shN"].shape[1]
            v["shN"] = torch.cat([v["shN"], torch.zeros(v["shN"].shape[0], pad, 3)], 1)
    merged = {k: torch.cat([v[k] for v in parts], 0) for k in parts[0]}
    write_ply(splats_out, merged)
    frame = read_json(frame_json)
    write_json(frame_out, {
        "epsg": frame["epsg"], "crs_wkt": frame["crs_wkt"], "origin": frame["origin"],
        "frame": frame.get("frame", "local = delivery CRS - origin; Z up; metres"),
        "file": Path(splats_out).name,
        "note": "splat positions are in the local frame: add `origin` to get delivery-CRS coordinates",
    })
    out = {"num_gaussians": int(merged["means"].shape[0]), "partitions": report}
    write_json(report_out, out)
    return out


def partition_ids(manifest_path) -> list[str]:
    return [p["id"] for p in load_manifest(manifest_path)["partitions"]]
