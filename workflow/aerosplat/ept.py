"""Entwine Point Tiles (EPT): the dense point cloud as an octree of small LAZ files.

QGIS opens EPT with its built-in `ept` provider; a LAS/LAZ or COPC file needs the PDAL provider,
which many QGIS builds (Debian's among them) lack. EPT is also what web viewers (Potree, iTowns)
and PDAL's `readers.ept` stream from, a node at a time, so a city-scale cloud never has to be
loaded whole to be looked at.

Layout (EPT 1.1, https://entwine.io/en/latest/entwine-point-tile.html):

- `ept.json`: the cube `bounds` of the octree, the data's `boundsConforming`, `span`, the
  `schema` (X/Y/Z int32 with the scale and offset every node shares), `srs`, `points`;
- `ept-data/D-X-Y-Z.laz`: one LAZ per node, all with the schema's scale and offset, as LAS 1.2 point
  format 3 (XYZ, intensity, class, GPS time, 16-bit RGB): QGIS 3.22's EPT
  decoder reads formats 0-3 only (a layer of format 7 nodes opens valid but draws nothing);
- `ept-hierarchy/0-0-0-0.json`: the point count of every node;
- `ept-sources/manifest.json`: where the points came from.

The octree: each node keeps at most one point per cell of a `span`³ grid over its cube (the point
nearest the cell centre), so every level is an even-density preview of the cloud; a node whose
cube holds no more than `max_node_points` points keeps them all and is a leaf. Every point is in
exactly one node, at the LAS resolution (1 mm).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import laspy
import numpy as np
from pyproj import CRS

from .errors import InputError
from .fileio import atomic_path

log = logging.getLogger(__name__)

EPT_VERSION = "1.1.0"
LAS_SCALE_M = 0.001
DEFAULT_SPAN = 128
DEFAULT_MAX_NODE_POINTS = 100_000
MAX_DEPTH = 24
"""Deepest level; only identical points (more than `max_node_points` of them) get this far."""


def _srs(crs: CRS) -> dict:
    wkt = crs.to_wkt("WKT1_GDAL") or crs.to_wkt()
    srs = {"wkt": wkt}
    epsg = crs.to_epsg()
    if epsg is not None:
        srs.update(authority="EPSG", horizontal=str(epsg))
    return srs


def _stats(values: np.ndarray) -> dict:
    v = values.astype(np.float64)
    return {"count": int(v.size), "minimum": float(v.min()), "maximum": float(v.max()),
            "mean": float(v.mean()), "stddev": float(v.std()), "variance": float(v.var())}


def _schema(real_xyz: np.ndarray, offset: np.ndarray, scale: float, intensity: np.ndarray,
            classification: np.ndarray, colour: np.ndarray) -> list[dict]:
    schema = [{"name": axis, "type": "signed", "size": 4, "scale": scale, "offset": float(offset[i]),
               **_stats(real_xyz[:, i])} for i, axis in enumerate("XYZ")]
    schema.append({"name": "Intensity", "type": "unsigned", "size": 2, **_stats(intensity)})
    values, counts = np.unique(classification, return_counts=True)
    schema.append({"name": "Classification", "type": "unsigned", "size": 1, **_stats(classification),
                   "counts": [{"value": int(v), "count": int(c)} for v, c in zip(values, counts)]})
    for i, band in enumerate(("Red", "Green", "Blue")):
        schema.append({"name": band, "type": "unsigned", "size": 2, **_stats(colour[:, i])})
    return schema


def _pack(keys: np.ndarray, bits: int) -> np.ndarray | None:
    """Non-negative int [M, 3] rows below 2**bits as one int64 each (None when they do not fit)."""
    if 3 * bits > 62:
        return None
    return (keys[:, 0] << (2 * bits)) | (keys[:, 1] << bits) | keys[:, 2]


def _group(keys: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of an int [M, 3] array: (rows, index of each input row's group, counts)."""
    packed = _pack(keys, bits)
    if packed is None:
        rows, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        return rows, inverse.reshape(-1), counts
    uniq, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    mask = (1 << bits) - 1
    rows = np.column_stack([uniq >> (2 * bits), (uniq >> bits) & mask, uniq & mask])
    return rows, inverse.reshape(-1), counts


def build_octree(ints: np.ndarray, cube_min: np.ndarray, side: int, *, span: int = DEFAULT_SPAN,
                 max_node_points: int = DEFAULT_MAX_NODE_POINTS, seed: int = 0) -> list[tuple[tuple, np.ndarray]]:
    """Assign every point to one octree node: [((depth, x, y, z), point indices)], root first.

    `ints` [N, 3] are the points in LAS integer units, `cube_min` and `side` the octree cube in the
    same units. Integer arithmetic throughout: a point's node is exact, never a rounding's guess.
    """
    rel = ints.astype(np.int64) - cube_min.astype(np.int64)
    if len(rel) and (rel.min() < 0 or rel.max() >= side):
        raise ValueError("points outside the octree cube")
    priority = np.random.default_rng(seed).random(len(ints))
    nodes: list[tuple[tuple, np.ndarray]] = []
    remaining = np.arange(len(ints))
    depth = 0
    while len(remaining):
        cells = (1 << depth) * span  # grid cells per axis at this depth
        scaled = rel[remaining] * cells  # exact: side * cells < 2**62 (checked one level up)
        vox = scaled // side
        frac = scaled % side - side / 2.0  # offset from the cell centre (in 1/side of a cell)
        node = vox // span
        node_rows, node_of, node_counts = _group(node, depth)
        # The last level keeps whatever is left (only identical points get this far).
        last = depth >= MAX_DEPTH or side * cells * 2 >= 2**62
        leaf = (node_counts <= max_node_points) | last
        keep = leaf[node_of].copy()
        inner = ~keep
        if inner.any():
            idx = np.flatnonzero(inner)
            dist = np.einsum("ij,ij->i", frac[idx], frac[idx])
            packed = _pack(vox[idx], (cells - 1).bit_length())
            if packed is None:
                order = idx[np.lexsort((dist, vox[idx, 2], vox[idx, 1], vox[idx, 0]))]
                sv = vox[order]
                first = np.ones(len(order), bool)
                first[1:] = np.any(sv[1:] != sv[:-1], axis=1)
            else:
                o = np.lexsort((dist, packed))
                order, sv = idx[o], packed[o]
                first = np.r_[True, sv[1:] != sv[:-1]]
            chosen = order[first]
            # A node keeps at most `max_node_points` of its cells' points (a random share); the rest go down.
            by_node = chosen[np.lexsort((priority[remaining[chosen]], node_of[chosen]))]
            g = node_of[by_node]
            starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
            rank = np.arange(len(by_node)) - np.repeat(starts, np.diff(np.r_[starts, len(by_node)]))
            keep[by_node[rank < max_node_points]] = True
        kept = np.flatnonzero(keep)
        groups = kept[np.argsort(node_of[kept], kind="stable")]
        g = node_of[groups]
        bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, len(groups)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                x, y, z = (int(v) for v in node_rows[g[a]])
                nodes.append(((depth, x, y, z), remaining[groups[a:b]]))
        remaining = remaining[~keep]
        depth += 1
    return nodes


def _write_node(path: Path, ints: np.ndarray, offset: np.ndarray, scale: float, intensity: np.ndarray,
                classification: np.ndarray, colour: np.ndarray) -> None:
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales = np.full(3, scale)
    header.offsets = offset
    las = laspy.LasData(header)
    las.X, las.Y, las.Z = ints[:, 0], ints[:, 1], ints[:, 2]
    las.intensity = intensity
    las.classification = classification
    las.red, las.green, las.blue = colour[:, 0], colour[:, 1], colour[:, 2]
    las.write(path)


def write_ept(out_dir: str | Path, xyz: np.ndarray, rgb: np.ndarray | None, classification: np.ndarray | None,
              crs: CRS | str | int, *, intensity: np.ndarray | None = None,
              max_node_points: int = DEFAULT_MAX_NODE_POINTS, span: int = DEFAULT_SPAN,
              scale: float = LAS_SCALE_M, source: str | None = None, seed: int = 0) -> dict:
    """Write `xyz` [N, 3] (delivery CRS, float64) as an EPT folder `out_dir`; return a summary.

    `rgb` uint8 (0..255), uint16 (LAS 16-bit) or float (0..1), or None (white); `classification`
    ASPRS classes (default 1). The folder is built under a temporary name and renamed when complete,
    so a killed run never leaves an `ept.json` over missing nodes.
    """
    t0 = time.monotonic()
    crs = CRS.from_user_input(crs)
    if not crs.is_projected:
        raise InputError(f"an EPT point cloud needs a projected CRS in metres, got {crs.name}")
    from .gisio import checked_cloud  # gisio's COPC writer uses this module's octree
    xyz, colour, classification = checked_cloud(xyz, rgb, classification, "EPT")
    n = len(xyz)
    intensity = np.zeros(n, np.uint16) if intensity is None else np.asarray(intensity, np.uint16)
    if len(intensity) != n:
        raise InputError(f"xyz ({n}) and intensity ({len(intensity)}) differ in length")
    if classification.max() > 31:
        raise InputError(f"class {int(classification.max())} does not fit LAS point format 3 (classes 0-31)")

    # One scale and offset for every node (QGIS decodes a node with the header's, PDAL with the schema's).
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    offset = np.round((lo + hi) / 2.0)
    ints = np.round((xyz - offset) / scale).astype(np.int64)
    if np.abs(ints).max() >= 2**31:
        raise InputError(f"the cloud spans {float((hi - lo).max()):.0f} m: too large for 32-bit integers at "
                         f"{scale} m")
    real = ints * scale + offset
    conforming = np.r_[real.min(axis=0), real.max(axis=0)]
    # The cube: the conforming box's longest side plus a margin, centred on the data, in integer units.
    imin, imax = ints.min(axis=0), ints.max(axis=0)
    side = int(max((imax - imin).max() + 2, round(1.0 / scale)))
    cube_min = (imin + imax) // 2 - side // 2
    nodes = build_octree(ints, cube_min, side, span=span, max_node_points=max_node_points, seed=seed)
    cube = np.r_[cube_min * scale + offset, (cube_min + side) * scale + offset]

    out_dir = Path(out_dir)
    hierarchy: dict[str, int] = {}
    with atomic_path(out_dir) as tmp:
        (tmp / "ept-data").mkdir(parents=True)
        (tmp / "ept-hierarchy").mkdir()
        (tmp / "ept-sources").mkdir()
        for (d, x, y, z), idx in nodes:
            key = f"{d}-{x}-{y}-{z}"
            _write_node(tmp / "ept-data" / f"{key}.laz", ints[idx], offset, scale, intensity[idx],
                        classification[idx], colour[idx])
            hierarchy[key] = int(len(idx))
        (tmp / "ept-hierarchy" / "0-0-0-0.json").write_text(json.dumps(hierarchy))
        (tmp / "ept-sources" / "manifest.json").write_text(json.dumps(
            [{"path": source or "points", "bounds": [float(v) for v in conforming], "points": n, "inserted": True}],
            indent=1))
        meta = {
            "bounds": [float(v) for v in cube],
            "boundsConforming": [float(v) for v in conforming],
            "dataType": "laszip",
            "hierarchyType": "json",
            "points": n,
            "schema": _schema(real, offset, scale, intensity, classification, colour),
            "span": span,
            "srs": _srs(crs),
            "version": EPT_VERSION,
        }
        (tmp / "ept.json").write_text(json.dumps(meta, indent=1))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    summary = {"path": str(out_dir / "ept.json"), "points": n, "nodes": len(nodes),
               "depth": max(k[0] for k, _ in nodes), "max_node_points": max(len(i) for _, i in nodes),
               "span": span, "bounds": meta["bounds"], "boundsConforming": meta["boundsConforming"],
               "epsg": crs.to_epsg(), "bytes": size, "seconds": round(time.monotonic() - t0, 2)}
    log.info("EPT: %d points in %d nodes (depth %d, largest %d), %.1f MB, %.1f s", n, summary["nodes"],
             summary["depth"], summary["max_node_points"], size / 1e6, summary["seconds"])
    return summary


def ept_from_laz(laz: str | Path, out_dir: str | Path, *, crs: CRS | str | int | None = None, **options) -> dict:
    """The EPT of a LAS/LAZ file (its 16-bit colour, classes and intensity kept); CRS from the file
    unless given."""
    las = laspy.read(laz)
    if crs is None:
        crs = las.header.parse_crs()
        if crs is None:
            raise InputError("the point cloud carries no CRS", path=laz,
                             hint="write it with aerosplat.gisio.write_laz (WKT CRS VLR), or pass the CRS")
    xyz = np.column_stack([las.x, las.y, las.z]).astype(np.float64)
    names = set(las.point_format.dimension_names)
    rgb = (np.column_stack([las.red, las.green, las.blue]).astype(np.uint16) if "red" in names else None)
    return write_ept(out_dir, xyz, rgb, np.asarray(las.classification, np.uint8), crs,
                     intensity=np.asarray(las.intensity, np.uint16), source=Path(laz).name, **options)


def read_ept(ept_json: str | Path) -> dict[str, np.ndarray]:
    """All points of an EPT folder, node by node: xyz, rgb (16-bit), classification, node keys."""
    root = Path(ept_json).parent
    hierarchy = json.loads((root / "ept-hierarchy" / "0-0-0-0.json").read_text())
    parts = {"xyz": [], "rgb": [], "classification": [], "node": []}
    for key in hierarchy:
        las = laspy.read(root / "ept-data" / f"{key}.laz")
        parts["xyz"].append(np.column_stack([las.x, las.y, las.z]))
        parts["rgb"].append(np.column_stack([las.red, las.green, las.blue]))
        parts["classification"].append(np.asarray(las.classification))
        parts["node"].append(np.full(len(las.points), key, object))
    return {k: np.concatenate(v) for k, v in parts.items()}
