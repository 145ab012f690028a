"""Writing GIS deliverables that open in QGIS, GDAL and PDAL as they are: LAZ point clouds and
Cloud-Optimized GeoTIFF rasters, in the delivery CRS, with the CRS inside the file.

Geometry lives in the local frame (delivery CRS minus `frame.json`'s origin, see `georef`);
these writers take delivery-CRS coordinates in float64 and store them the way each format
keeps precision: LAS as integers at 1 mm with the origin in the header offsets, GeoTIFF as a
north-up grid whose transform carries the real coordinates.
"""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import rasterio
import rasterio.shutil as rio_shutil
from affine import Affine
from rasterio.enums import ColorInterp
from pyproj import CRS

from .errors import InputError
from .fileio import atomic_path

LAS_SCALE_M = 0.001
"""LAS coordinate resolution: 1 mm, far below any photogrammetric accuracy."""

GROUND_CLASS = 2
"""ASPRS LAS class of ground points (a DTM is made of them)."""


def _projected(crs: CRS | str | int, what: str) -> CRS:
    crs = CRS.from_user_input(crs)
    if not crs.is_projected:
        raise InputError(f"{what} needs a projected CRS in metres, got {crs.name}",
                         hint="set `crs` in the scene YAML to a projected CRS (or `auto` for the UTM zone)")
    return crs


def write_laz(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None, crs: CRS | str | int, *,
              classification: np.ndarray | None = None) -> None:
    """LAS 1.4, point format 7 (XYZ, RGB, 16-bit colour), LAZ-compressed, written atomically.

    `xyz` [N, 3] float64 in the delivery CRS; `rgb` [N, 3] in 0..1 (float) or 0..255 (uint8), or
    None (white); `classification` [N] ASPRS classes (default 1, unclassified). The CRS goes in as
    an OGC WKT VLR (LAS 1.4's way, which PDAL, QGIS and laspy read); offsets are the rounded
    minimum so the integers stay small.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    crs = _projected(crs, "a LAS point cloud")
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.full(3, LAS_SCALE_M)
    header.offsets = np.floor(xyz.min(axis=0)) if len(xyz) else np.zeros(3)
    header.add_crs(crs)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is None:
        colour = np.full((len(xyz), 3), 65535, np.uint16)
    else:
        rgb = np.asarray(rgb)
        unit = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb.astype(np.float64), 0, 1)
        colour = np.round(unit * 65535).astype(np.uint16)
    las.red, las.green, las.blue = colour[:, 0], colour[:, 1], colour[:, 2]
    las.classification = (np.ones(len(xyz), np.uint8) if classification is None
                          else np.asarray(classification, np.uint8))
    with atomic_path(path) as tmp:
        las.write(tmp.with_suffix(".laz"))
        tmp.with_suffix(".laz").rename(tmp)


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
