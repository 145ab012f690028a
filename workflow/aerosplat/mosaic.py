"""The scene's GIS products from its cells' tiles: Cloud-Optimized GeoTIFFs, LAZ and COPC, meshes,
and `products/metrics.json`.

Why a separate job: the cells render and fuse (the costly part) in parallel, each bounded by its own
cell; the mosaic only pastes windows of one shared grid (see `products`) and concatenates points
and faces, so deleting one cell's tiles re-runs that cell and this job, nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import laspy
import numpy as np
import rasterio

from . import accuracy, gisio, layout
from .errors import InputError
from .fileio import atomic_path, read_json, remove_paths, write_json
from .mesh import Mesh, dsm_mesh, write_mesh
from .products import ELEVATION_BANDS, FOOTPRINT_VIEWS, NODATA, ProductOptions, cell_outputs
from .rasterize import Grid

log = logging.getLogger(__name__)



def _grid_of(report: dict) -> Grid:
    g = report["grid"]
    return Grid(g["west"], g["north"], g["cell"], g["width"], g["height"])


def mosaic(manifest_path, cell_dirs: dict[str, str | Path], out_dir, opts: ProductOptions,
           truth_dir=None) -> dict:
    """Rule `mosaic`: paste every cell's tiles, write the scene's products and their metrics."""
    t0 = time.time()
    out_dir = Path(out_dir)
    reports = {pid: read_json(cell_outputs(d)["report"]) for pid, d in cell_dirs.items()}
    if not reports:
        raise InputError("no partition cell to mosaic", path=str(manifest_path or out_dir),
                         hint="re-run the partition stage")
    grids = {pid: _grid_of(r) for pid, r in reports.items()}
    grid = next(iter(grids.values()))
    if any(g != grid for g in grids.values()):
        raise InputError("the cells' tiles are on different grids (products options changed between cells?)",
                         path=str(out_dir), hint="delete products/ and re-run the products stage")
    first = next(iter(reports.values()))
    origin, epsg = np.asarray(first["origin"]), int(first["epsg"])
    crs = rasterio.crs.CRS.from_epsg(epsg)

    elevation = np.full((len(ELEVATION_BANDS), grid.height, grid.width), np.nan, np.float32)
    ortho = np.zeros((4, grid.height, grid.width), np.uint8)
    for pid, d in cell_dirs.items():
        w = reports[pid]["window"]
        rows, cols = slice(w["row"], w["row"] + w["rows"]), slice(w["col"], w["col"] + w["cols"])
        with rasterio.open(cell_outputs(d)["elevation"]) as src:
            tile = src.read().astype(np.float32)
            tile[tile == NODATA] = np.nan
            elevation[:, rows, cols] = tile
        with rasterio.open(cell_outputs(d)["ortho"]) as src:
            ortho[:, rows, cols] = src.read()
    bands = dict(zip(ELEVATION_BANDS, elevation))
    dsm_key = f"dsm_{opts.dsm_source}"
    dsm, dtm = bands[dsm_key], bands["dtm"]
    footprint = bands["views"] >= FOOTPRINT_VIEWS
    warnings = [w for r in reports.values() for w in r["warnings"]]

    gisio.write_cog(out_dir / "dsm.tif", np.where(np.isfinite(dsm), dsm, NODATA), grid.transform, crs,
                    nodata=NODATA, description=f"DSM from the splats ({opts.dsm_source}), metres, EPSG:{epsg}")
    dtm_path = out_dir / "dtm.tif"
    if np.isfinite(dtm).any():
        gisio.write_cog(dtm_path, np.where(np.isfinite(dtm), dtm, NODATA), grid.transform, crs,
                        nodata=NODATA, description=f"DTM (ground points interpolated), metres, EPSG:{epsg}")
    else:
        remove_paths([dtm_path])
        warnings.append("no ground points anywhere in the scene (water, one roof?): dtm.tif not written")
        log.warning(warnings[-1])
    gisio.write_cog(out_dir / "ortho.tif", ortho, grid.transform, crs, description="true orthophoto")

    xyz, rgb, cls = _read_points([cell_outputs(d)["points"] for d in cell_dirs.values()])
    gisio.write_laz(out_dir / "points.laz", xyz, rgb, crs, classification=cls)
    gisio.write_copc(out_dir / "points.copc.laz", xyz, rgb, crs, classification=cls)

    mesh3d = _concat_meshes([cell_outputs(d)["mesh"] for d in cell_dirs.values()])
    mesh_info = {"mesh": write_mesh(mesh3d, out_dir, "mesh", origin, epsg)}
    rgb_grid = np.moveaxis(ortho[:3], 0, -1)
    mesh25 = dsm_mesh(dsm.astype(np.float64), grid.transform, tuple(origin), opts.mesh_faces, colors=rgb_grid)
    mesh_info["mesh_25d"] = write_mesh(mesh25, out_dir, "mesh_25d", origin, epsg)

    pipelines = pdal_pipelines(out_dir, grid, epsg)
    pdal_run = run_pdal_pipelines(pipelines)
    data = np.isfinite(dsm)
    area_cell = grid.cell ** 2
    metrics = {
        "crs": f"EPSG:{epsg}", "origin": origin.tolist(),
        "gsd_m": first["gsd_m"], "resolution_m": first["resolution_m"],
        "grid": {"width": grid.width, "height": grid.height, "west": grid.west, "north": grid.north},
        "dsm_source": opts.dsm_source,
        "completeness": round(float((data & footprint).sum() / max(1, footprint.sum())), 4),
        "footprint_m2": round(float(footprint.sum() * area_cell), 1),
        "points": {"count": int(len(xyz)), "ground": int((cls == gisio.GROUND_CLASS).sum()),
                   "spacing_m": first["point_spacing_m"],
                   "density_per_m2": round(len(xyz) / max(area_cell, float(data.sum() * area_cell)), 3),
                   "ground_filter": first["ground_filter"]},
        "meshes": mesh_info,
        "pdal": {"pipelines": [p.name for p in pipelines.values()], **pdal_run},
        "cells": {pid: {k: r[k] for k in ("window", "views", "gaussians", "points", "ground_points",
                                           "fusion", "mesh", "seconds")} for pid, r in reports.items()},
        "warnings": warnings,
    }
    if truth_dir:
        metrics["accuracy"] = score(Path(truth_dir), grid, crs, bands, ortho, footprint, opts.dsm_source)
    metrics["files"] = {name: {"bytes": (out_dir / name).stat().st_size, "what": what}
                        for name, what in {**layout.PRODUCT_FILES, **layout.OPTIONAL_FILES}.values()
                        if (out_dir / name).exists() and name != "metrics.json"}
    metrics["seconds"] = round(time.time() - t0, 1)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def score(truth_dir: Path, grid: Grid, crs, bands: dict, ortho: np.ndarray, footprint: np.ndarray,
          dsm_source: str) -> dict:
    """Every product against the truth rasters that exist, over the flight's footprint."""
    out: dict = {"truth": str(truth_dir.name), "over": f"cells seen by >= {FOOTPRINT_VIEWS} training photos"}
    if (truth_dir / "dsm.tif").exists():
        true_dsm = accuracy.resample_to(truth_dir / "dsm.tif", grid, crs, "average")[0]
        for key in ("dsm_ortho", "dsm_cloud", "dsm_mvs"):
            if np.isfinite(bands[key]).any():
                out[key] = accuracy.elevation_errors(bands[key], true_dsm, footprint)
        out["dsm"] = out[f"dsm_{dsm_source}"]
    if (truth_dir / "dtm.tif").exists():
        true_dtm = accuracy.resample_to(truth_dir / "dtm.tif", grid, crs, "average")[0]
        out["dtm"] = accuracy.elevation_errors(bands["dtm"], true_dtm, footprint)
    if (truth_dir / "ortho.tif").exists():
        true_rgb = np.moveaxis(accuracy.resample_to(truth_dir / "ortho.tif", grid, crs, "average")[:3], 0, -1)
        valid = footprint & (ortho[3] > 0)
        out["ortho"] = accuracy.ortho_errors(np.moveaxis(ortho[:3], 0, -1), true_rgb, valid, grid.cell)
    return out


def _read_points(paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz, rgb, cls = [np.zeros((0, 3))], [np.zeros((0, 3), np.uint8)], [np.zeros(0, np.uint8)]
    for p in paths:
        las = laspy.read(p)
        xyz.append(np.stack([las.x, las.y, las.z], 1))
        rgb.append((np.stack([las.red, las.green, las.blue], 1) // 257).astype(np.uint8))
        cls.append(np.asarray(las.classification, np.uint8))
    return np.concatenate(xyz), np.concatenate(rgb), np.concatenate(cls)


def _concat_meshes(paths) -> Mesh:
    verts, faces, cols, n = [], [], [], 0
    for p in paths:
        with np.load(p) as m:
            verts.append(m["vertices"])
            faces.append(m["faces"] + n)
            cols.append(m["colors"])
            n += len(m["vertices"])
    if not verts:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), None)
    return Mesh(np.concatenate(verts), np.concatenate(faces), np.concatenate(cols))


def pdal_pipelines(out_dir: Path, grid: Grid, epsg: int) -> dict[str, Path]:
    """PDAL pipelines that make the DSM and the DTM from `points.laz` on the products' own grid,
    written beside them so a user with PDAL (envs/gis.yaml) can re-run or vary them with
    `pdal pipeline <file>`; run here too where PDAL is importable."""
    bounds = f"([{grid.west}, {grid.west + grid.width * grid.cell}], " \
             f"[{grid.north - grid.height * grid.cell}, {grid.north}])"
    common = {"type": "writers.gdal", "resolution": grid.cell, "bounds": bounds, "gdaldriver": "GTiff",
              "data_type": "float32", "nodata": NODATA, "override_srs": f"EPSG:{epsg}"}
    stages = {
        "dsm": [{"type": "readers.las", "filename": "points.laz"},
                {**common, "filename": "pdal_dsm.tif", "output_type": "max"}],
        "dtm": [{"type": "readers.las", "filename": "points.laz"},
                {"type": "filters.range", "limits": "Classification[2:2]"},
                {**common, "filename": "pdal_dtm.tif", "output_type": "idw", "window_size": 10}],
    }
    paths = {}
    for name, pipeline in stages.items():
        paths[name] = out_dir / f"pdal_{name}.json"
        with atomic_path(paths[name]) as tmp:
            tmp.write_text(json.dumps({"pipeline": pipeline}, indent=2) + "\n")
    return paths


def run_pdal_pipelines(paths: dict[str, Path]) -> dict:
    """Run the pipelines with PDAL's Python bindings where they import; say why not otherwise."""
    try:
        import pdal
    except ImportError:
        return {"ran": False, "why": "PDAL is not importable here (no wheel or Debian package; envs/gis.yaml has it)"}
    out = {"ran": True}
    for name, path in paths.items():
        cwd = os.getcwd()
        os.chdir(path.parent)  # the pipelines name their files relative to the products folder
        try:
            out[name] = int(pdal.Pipeline(path.read_text()).execute())
        finally:
            os.chdir(cwd)
    return out
