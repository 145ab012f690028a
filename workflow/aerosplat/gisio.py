"""Writing GIS deliverables that open in QGIS, GDAL and PDAL as they are: LAZ point clouds, Cloud
Optimized Point Clouds (COPC) and Cloud-Optimized GeoTIFF rasters, in the delivery CRS, with the CRS
inside the file.

Geometry lives in the local frame (delivery CRS minus `frame.json`'s origin, see `georef`);
these writers take delivery-CRS coordinates in float64 and store them the way each format
keeps precision: LAS as integers at 1 mm with the origin in the header offsets, GeoTIFF as a
north-up grid whose transform carries the real coordinates.

COPC (https://copc.io) is a LAZ 1.4 file whose chunks are the nodes of an octree, with the
hierarchy in an EVLR: any LAZ reader opens it whole, while PDAL, QGIS and web viewers read only the
nodes a view needs. It is written with copclib; the octree is `ept.build_octree`'s (one point per
cell of a `span`³ grid per node, at most `max_node_points` per node), the same as our EPT output.
"""

from __future__ import annotations

from pathlib import Path

import copclib
import laspy
import numpy as np
import rasterio
import rasterio.shutil as rio_shutil
from affine import Affine
from rasterio.enums import ColorInterp
from pyproj import CRS

from .ept import build_octree
from .errors import InputError
from .fileio import atomic_path

LAS_SCALE_M = 0.001
"""LAS coordinate resolution: 1 mm, far below any photogrammetric accuracy."""

GROUND_CLASS = 2
"""ASPRS LAS class of ground points (a DTM is made of them)."""

COPC_MAX_NODE_POINTS = 100_000
"""Most points in one COPC node: a viewer fetches a node whole, so nodes stay a few MB."""

COPC_SPAN = 128
"""Grid cells per axis of a COPC node: the root keeps at most one point per 1/128 of the cube."""


def _projected(crs: CRS | str | int, what: str) -> CRS:
    crs = CRS.from_user_input(crs)
    if not crs.is_projected:
        raise InputError(f"{what} needs a projected CRS in metres, got {crs.name}",
                         hint="set `crs` in the scene YAML to a projected CRS (or `auto` for the UTM zone)")
    return crs


def _colour16(rgb: np.ndarray | None, n: int) -> np.ndarray:
    """RGB as LAS's 16-bit colour [n, 3]: uint8 scaled to 0..65535, uint16 kept, floats read as 0..1."""
    if rgb is None:
        return np.full((n, 3), 65535, np.uint16)
    rgb = np.asarray(rgb).reshape(-1, 3)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.uint16) * 257  # 255 -> 65535 exactly
    if rgb.dtype == np.uint16:
        return rgb
    return np.round(np.clip(rgb.astype(np.float64), 0, 1) * 65535).astype(np.uint16)


def write_laz(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None, crs: CRS | str | int, *,
              classification: np.ndarray | None = None) -> None:
    """LAS 1.4, point format 7 (XYZ, RGB, 16-bit colour), LAZ-compressed, written atomically.

    `xyz` [N, 3] float64 in the delivery CRS; `rgb` [N, 3] in 0..1 (float), 0..255 (uint8) or
    0..65535 (uint16), or None (white); `classification` [N] ASPRS classes (default 1,
    unclassified). The CRS goes in as an OGC WKT VLR (LAS 1.4's way, which PDAL, QGIS and laspy
    read); offsets are the rounded minimum so the integers stay small.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    crs = _projected(crs, "a LAS point cloud")
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.full(3, LAS_SCALE_M)
    header.offsets = np.floor(xyz.min(axis=0)) if len(xyz) else np.zeros(3)
    header.add_crs(crs)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    colour = _colour16(rgb, len(xyz))
    las.red, las.green, las.blue = colour[:, 0], colour[:, 1], colour[:, 2]
    las.classification = (np.ones(len(xyz), np.uint8) if classification is None
                          else np.asarray(classification, np.uint8))
    with atomic_path(path) as tmp:
        las.write(tmp.with_suffix(".laz"))
        tmp.with_suffix(".laz").rename(tmp)



def checked_cloud(xyz, rgb, classification, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyz [N, 3] float64, 16-bit colour [N, 3] and classes [N] of a cloud to write as `what`,
    refused with the reason when empty, not finite or of mismatched lengths."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    n = len(xyz)
    if n == 0:
        raise InputError(f"no points to write as {what}")
    if not np.isfinite(xyz).all():
        raise InputError(f"{int((~np.isfinite(xyz)).any(axis=1).sum())} point(s) with non-finite coordinates")
    colour = _colour16(rgb, n)
    classes = np.ones(n, np.uint8) if classification is None else np.asarray(classification, np.uint8).reshape(-1)
    if not (len(colour) == len(classes) == n):
        raise InputError(f"xyz ({n}), rgb ({len(colour)}) and classification ({len(classes)}) differ in length")
    return xyz, colour, classes


def write_copc(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None, crs: CRS | str | int, *,
               classification: np.ndarray | None = None, max_node_points: int = COPC_MAX_NODE_POINTS,
               span: int = COPC_SPAN, seed: int = 0) -> dict:
    """A Cloud Optimized Point Cloud (`.copc.laz`), written atomically; return a summary.

    Same inputs and point record as `write_laz` (LAS 1.4 point format 7, 1 mm, WKT CRS). The octree
    cube starts at the data's minimum corner and its side is the longest extent plus 1 mm, so every
    point lies inside its node's cube (COPC's `center` ± `halfsize`); the root's `spacing` is the
    cube side / `span`. Summary: points, nodes, depth, largest node, cube.
    """
    crs = _projected(crs, "a COPC point cloud")
    xyz, colour, classes = checked_cloud(xyz, rgb, classification, "COPC")
    n = len(xyz)

    offset = np.floor(xyz.min(axis=0))
    ints = np.round((xyz - offset) / LAS_SCALE_M).astype(np.int64)  # [N, 3] LAS integers, all >= 0
    if ints.max() >= 2**31:
        raise InputError(f"the cloud spans {float(np.ptp(xyz, axis=0).max()):.0f} m: too large for 32-bit "
                         f"integers at {LAS_SCALE_M} m")
    imin, imax = ints.min(axis=0), ints.max(axis=0)
    side = int((imax - imin).max()) + 1  # integer units; the +1 keeps the maximum inside the cube
    nodes = build_octree(ints, imin, side, span=span, max_node_points=max_node_points, seed=seed)

    record = laspy.PackedPointRecord.zeros(n, laspy.PointFormat(7))
    record["X"], record["Y"], record["Z"] = ints[:, 0], ints[:, 1], ints[:, 2]
    record["return_number"] = np.ones(n, np.uint8)
    record["number_of_returns"] = np.ones(n, np.uint8)
    record["classification"] = classes
    record["red"], record["green"], record["blue"] = colour[:, 0], colour[:, 1], colour[:, 2]

    scale = copclib.Vector3(LAS_SCALE_M, LAS_SCALE_M, LAS_SCALE_M)
    config = copclib.CopcConfigWriter(7, scale, copclib.Vector3(*offset), crs.to_wkt())
    header = config.las_header
    header.min = copclib.Vector3(*(imin * LAS_SCALE_M + offset))
    header.max = copclib.Vector3(*(imax * LAS_SCALE_M + offset))
    header.points_by_return = [n] + [0] * 14
    header.generating_software = "aerosplat"
    info = config.copc_info
    half = side * LAS_SCALE_M / 2.0
    info.center_x, info.center_y, info.center_z = (float(v) for v in imin * LAS_SCALE_M + offset + half)
    info.halfsize = half
    info.spacing = 2.0 * half / span
    extents = config.copc_extents
    for name, values in (("classification", classes), ("red", colour[:, 0]), ("green", colour[:, 1]),
                         ("blue", colour[:, 2]), ("return_number", np.ones(1)), ("number_of_returns", np.ones(1))):
        v = values.astype(np.float64)
        extent = getattr(extents, name)
        extent.minimum, extent.maximum, extent.mean, extent.var = v.min(), v.max(), v.mean(), v.var()

    with atomic_path(path) as tmp:
        writer = copclib.FileWriter(str(tmp), config)
        for (d, x, y, z), idx in nodes:
            raw = np.frombuffer(record.array[idx].tobytes(), np.int8)  # the node's LAS records, uncompressed
            writer.AddNode(copclib.VoxelKey(d, x, y, z), copclib.VectorChar(raw))
        writer.Close()
    cube_min = imin * LAS_SCALE_M + offset
    return {"path": str(path), "points": n, "nodes": len(nodes), "depth": max(k[0] for k, _ in nodes),
            "max_node_points": max(len(i) for _, i in nodes),
            "cube": [float(v) for v in np.r_[cube_min, cube_min + 2 * half]], "spacing": info.spacing}


def read_copc_summary(path: str | Path) -> dict:
    """What a COPC file's header and hierarchy say: points, bounds, WKT and EPSG, nodes, depth, cube."""
    reader = copclib.FileReader(str(path))
    try:
        config = reader.copc_config
        header, info = config.las_header, config.copc_info
        nodes = reader.GetAllNodes()
        wkt = config.wkt
        counts = [node.point_count for node in nodes]
        return {
            "points": int(header.point_count),
            "point_format": int(header.point_format_id),
            "bounds": [header.min.x, header.min.y, header.min.z, header.max.x, header.max.y, header.max.z],
            "wkt": wkt,
            "epsg": CRS.from_wkt(wkt).to_epsg() if wkt else None,
            "nodes": len(nodes),
            "node_points": int(sum(counts)),
            "max_node_points": int(max(counts, default=0)),
            "depth": int(reader.GetMaxDepth()),
            "center": [info.center_x, info.center_y, info.center_z],
            "halfsize": info.halfsize,
            "spacing": info.spacing,
        }
    finally:
        reader.Close()

def write_cog(path: str | Path, bands: np.ndarray, transform: Affine, crs: CRS | str | int, *,
              nodata: float | None = None, description: str | None = None) -> None:
    """A Cloud-Optimized GeoTIFF (GDAL's COG driver: tiled, deflate, overviews), written atomically.

    `bands` [H, W] or [B, H, W]; row 0 is the northern edge of a north-up `transform`. Float
    rasters (DSM, DTM) keep their nodata value; an RGBA orthophoto passes 4 uint8 bands, the
    fourth becoming the alpha band.
    """
    crs = _projected(crs, "a GeoTIFF raster")
    data = np.asarray(bands)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    layout = {"width": width, "height": height, "count": count, "dtype": data.dtype.name, "crs": crs,
              "transform": transform, "nodata": nodata}
    creation = {"compress": "deflate", "blocksize": 256, "bigtiff": "IF_SAFER",
                "overview_resampling": "average" if data.dtype.kind == "f" else "nearest"}
    with atomic_path(path) as tmp:
        # The COG driver copies from a finished dataset: build it in memory first.
        with rasterio.MemoryFile() as mem:
            with mem.open(driver="GTiff", **layout) as src:
                src.write(data)
                if count == 4 and data.dtype == np.uint8:
                    src.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
                if description:
                    src.update_tags(DESCRIPTION=description)
                rio_shutil.copy(src, tmp, driver="COG", **creation)
