"""The scene's QGIS project (DESIGN stage 8): every product, styled, in the delivery CRS, with paths
relative to the project, so that the results folder opens the same on any machine it is copied to.

The project is written with QGIS's own API (QgsProject), not from templated XML: the program that
will read the file writes it, layer sources are resolved and checked by the providers that will
open them, and the file follows whatever QGIS version builds it.

What goes in (`results/<scene>/`): `products/{ortho,dsm,dtm}.tif` and `products/points.laz` (any may
be absent: DTM over water, say; that layer is then left out and the reason reported),
`georef/frame.json` (delivery CRS, origin, per-image and GCP residuals), `georef/sparse` (camera
poses, local frame), `partitions/manifest.json` (cells, local frame), `ingest/exif.csv` (where the
photos that did not register were taken) and, for GCP positions, the scene's `gcp_list.txt`.

What comes out (`report/`, beside the project):

- `<scene>.qgz`; `map.png`, the project's map drawn offscreen (orthophoto, cells, cameras,
  footprints, GCPs) for the HTML report; `qgis_project.json`, the layers and the reasons for any
  left out;
- `cameras.gpkg`: layer `cameras` (every photo: name, registered, residual_m from frame.json...) and
  layer `footprints` (each registered image's border rays met with the mean ground height);
- `survey.gpkg`: layers `partitions` (cells, labelled) and `gcps` (GCPs and check points with their
  residuals);
- `heights.tif`: DSM − DTM (heights above ground), computed by QGIS's raster calculator on the
  DSM's grid (nodata: the calculator's, -3.4e38); `ept/`: the point cloud as Entwine Point Tiles (`aerosplat.ept`), which QGIS reads
  without PDAL.

Styles are `resources/qgis/*.qml`, written by QGIS; the colour ramps there run over 0..1 and are
stretched to each raster's 2-98 % range when applied.

QGIS's Python bindings come from the system (Debian's python3-qgis) or a conda env
(`envs/qgis.yaml`), never from pip. This module imports qgis only inside the functions that draw
or write with it: its helpers (COLMAP reader, footprints, cells, GCP list) run in any interpreter.
`run` writes the EPT where laspy is, then builds the project in-process if qgis imports, else in
the QGIS interpreter (`AEROSPLAT_QGIS_PYTHON`, default `/usr/bin/python3`).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import read_json, write_json

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
STYLES_DIR = REPO / "resources" / "qgis"
SCRIPT = REPO / "scripts" / "qgis_project.py"
QGIS_PYTHON_ENV = "AEROSPLAT_QGIS_PYTHON"
DEFAULT_QGIS_PYTHON = "/usr/bin/python3"
INSTALL_HINT = ("install QGIS's Python bindings: `apt-get install python3-qgis qgis-providers` (Debian/Ubuntu; "
                "their interpreter is /usr/bin/python3), or create the conda env `envs/qgis.yaml` "
                "(`conda env create -f envs/qgis.yaml`); then name that interpreter in "
                f"{QGIS_PYTHON_ENV} (or --qgis-python) unless it runs this script itself")
MAP_WIDTH_PX = 1600
FOOTPRINT_EDGE_POINTS = 4
"""Points per image edge: distorted edges are curves on the ground."""
FOOTPRINT_MAX_RANGE = 10.0
"""A border ray that misses the ground within this many flying heights is cut there (obliques)."""
SUMMARY_NAME = "qgis_project.json"


class QgisUnavailable(InputError):
    """No interpreter at hand can import QGIS's Python bindings."""


# ----------------------------------------------------------------------------- interpreters

def qgis_python(configured: str | None = None) -> str:
    """The interpreter that has QGIS: `configured`, else $AEROSPLAT_QGIS_PYTHON, else /usr/bin/python3."""
    return configured or os.environ.get(QGIS_PYTHON_ENV) or DEFAULT_QGIS_PYTHON


def qgis_in_process() -> bool:
    """Whether this interpreter can import qgis."""
    return importlib.util.find_spec("qgis") is not None


@functools.lru_cache(maxsize=None)
def qgis_python_problem(python: str) -> str | None:
    """Why `python` cannot build the project (None when it can import qgis.core)."""
    if not shutil.which(python):
        return f"{python} does not exist"
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    try:
        proc = subprocess.run([python, "-c", "import qgis.core"], capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not be run: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"{python} cannot import qgis.core: {last}"
    return None


# ----------------------------------------------------------------------------- the scene's files

@dataclass(frozen=True)
class ScenePaths:
    """Where the project's inputs and outputs are, for `results/<scene>` and a project path."""

    root: Path
    qgz: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())
        object.__setattr__(self, "qgz", Path(self.qgz).resolve())

    frame = property(lambda self: self.root / "georef" / "frame.json")
    sparse = property(lambda self: self.root / "georef" / "sparse")
    manifest = property(lambda self: self.root / "partitions" / "manifest.json")
    exif = property(lambda self: self.root / "ingest" / "exif.csv")
    ortho = property(lambda self: self.root / "products" / "ortho.tif")
    dsm = property(lambda self: self.root / "products" / "dsm.tif")
    dtm = property(lambda self: self.root / "products" / "dtm.tif")
    points = property(lambda self: self.root / "products" / "points.laz")
    report = property(lambda self: self.qgz.parent)
    ept = property(lambda self: self.report / "ept")
    heights = property(lambda self: self.report / "heights.tif")
    cameras_gpkg = property(lambda self: self.report / "cameras.gpkg")
    survey_gpkg = property(lambda self: self.report / "survey.gpkg")
    map_png = property(lambda self: self.report / "map.png")
    summary = property(lambda self: self.report / SUMMARY_NAME)

    def rel(self, path: Path) -> str:
        """`path` relative to the results folder, for messages."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


# ----------------------------------------------------------------------------- COLMAP model

CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}


def read_colmap_cameras(sparse: str | Path) -> dict[int, dict]:
    """cameras.bin: {camera_id: {model, width, height, params}} (numpy only: QGIS's Python has no pycolmap)."""
    data = (Path(sparse) / "cameras.bin").read_bytes()
    (count,), pos, cams = struct.unpack_from("<Q", data), 8, {}
    for _ in range(count):
        cam_id, model_id, width, height = struct.unpack_from("<iiQQ", data, pos)
        pos += 24
        if model_id not in CAMERA_MODELS:
            raise InputError(f"unknown COLMAP camera model id {model_id}", path=Path(sparse) / "cameras.bin")
        name, n = CAMERA_MODELS[model_id]
        cams[cam_id] = {"model": name, "width": width, "height": height,
                        "params": np.array(struct.unpack_from(f"<{n}d", data, pos))}
        pos += 8 * n
    return cams


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """COLMAP quaternion (w, x, y, z) to a rotation matrix."""
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def read_colmap_images(sparse: str | Path) -> list[dict]:
    """images.bin: [{name, camera_id, R, t}] (world-to-camera; the model holds registered images only)."""
    data = (Path(sparse) / "images.bin").read_bytes()
    (count,), pos, images = struct.unpack_from("<Q", data), 8, []
    for _ in range(count):
        values = struct.unpack_from("<I4d3dI", data, pos)
        pos += 64
        end = data.index(b"\0", pos)
        name = data[pos:end].decode("utf-8")
        pos = end + 1
        (npts,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + 24 * npts
        images.append({"name": name, "camera_id": values[8], "R": qvec_to_rotmat(values[1:5]),
                       "t": np.array(values[5:8])})
    return images


def pixel_rays(camera: dict, pixels: np.ndarray) -> np.ndarray:
    """Camera-frame ray directions (x, y, 1) of image `pixels` [N, 2] (COLMAP convention: the image's
    top-left corner is (0, 0)), distortion removed by fixed-point iteration. Fisheye and thin-prism
    models are taken as pinhole with their focal length and principal point (footprints only)."""
    p = np.asarray(camera["params"], float)
    model = camera["model"]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:
        fx, fy, cx, cy = p[:4]
    k = np.zeros(6)
    tangential = np.zeros(2)
    if model == "SIMPLE_RADIAL":
        k[0] = p[3]
    elif model == "RADIAL":
        k[:2] = p[3:5]
    elif model in ("OPENCV", "FULL_OPENCV"):
        k[:2], tangential = p[4:6], p[6:8]
        if model == "FULL_OPENCV":
            k[2:6] = p[8:12]
    xd = (pixels[:, 0] - cx) / fx
    yd = (pixels[:, 1] - cy) / fy
    x, y = xd.copy(), yd.copy()
    for _ in range(100):
        r2 = x * x + y * y
        radial = (1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3) / (1 + k[3] * r2 + k[4] * r2**2 + k[5] * r2**3)
        dx = 2 * tangential[0] * x * y + tangential[1] * (r2 + 2 * x * x)
        dy = tangential[0] * (r2 + 2 * y * y) + 2 * tangential[1] * x * y
        x, y = (xd - dx) / radial, (yd - dy) / radial
    return np.column_stack([x, y, np.ones_like(x)])


def image_border(width: int, height: int, per_edge: int = FOOTPRINT_EDGE_POINTS) -> np.ndarray:
    """Pixels along the image border, clockwise from the top-left corner, corners included once."""
    s = np.linspace(0.0, 1.0, per_edge + 1)[:-1]
    top = np.column_stack([s * width, np.zeros_like(s)])
    right = np.column_stack([np.full_like(s, width), s * height])
    bottom = np.column_stack([(1 - s) * width, np.full_like(s, height)])
    left = np.column_stack([np.zeros_like(s), (1 - s) * height])
    return np.vstack([top, right, bottom, left])


def camera_footprint(R: np.ndarray, t: np.ndarray, camera: dict, ground_z: float, *,
                     max_range: float = FOOTPRINT_MAX_RANGE) -> tuple[np.ndarray, bool] | None:
    """Where the image's border rays meet the plane z = `ground_z`: ([M, 2] ring, clipped), in the
    frame of R, t (world-to-camera). A ray that misses the plane, or meets it beyond `max_range`
    flying heights, is cut at that distance (clipped = True). None when the camera is not above it."""
    centre = -R.T @ t
    height = centre[2] - ground_z
    if not height > 0:
        return None
    dirs = pixel_rays(camera, image_border(camera["width"], camera["height"])) @ R  # rows: R.T @ d
    reach = max_range * height
    down = dirs[:, 2] < 0
    s = np.where(down, -height / np.where(down, dirs[:, 2], -1.0), np.inf)
    horizontal = np.linalg.norm(dirs[:, :2], axis=1)
    far = ~np.isfinite(s) | (s * horizontal > reach)
    hit = centre[:2] + np.where(far, 0.0, s)[:, None] * dirs[:, :2]
    if far.any():
        unit = dirs[far, :2] / np.maximum(horizontal[far], 1e-12)[:, None]
        hit[far] = centre[:2] + reach * unit
    return hit, bool(far.any())


def read_frame(path: str | Path) -> dict:
    """frame.json, checked for what the project needs (the delivery CRS and the origin)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("frame.json not found: the project's CRS and the local frame's origin come from it",
                         path=path, hint="run the georef stage first")
    frame = read_json(path)
    if not (frame.get("epsg") or frame.get("crs_wkt")) or len(frame.get("origin") or []) != 3:
        raise InputError("frame.json lacks `epsg`/`crs_wkt` or a 3-value `origin`", path=path,
                         hint="re-run the georef stage")
    return frame


def residuals_by_image(frame: dict) -> dict[str, dict]:
    """Per-image georeferencing residuals from frame.json (metres, delivery CRS)."""
    out = {}
    for row in frame.get("per_image") or []:
        d = np.array([row.get("dx", 0.0), row.get("dy", 0.0), row.get("dz", 0.0)], float)
        out[row["image"]] = {"residual_m": float(np.linalg.norm(d)),
                             "residual_h_m": float(row.get("horizontal_m", np.hypot(d[0], d[1]))),
                             "residual_z_m": float(d[2]), "inlier": row.get("inlier"),
                             "position_source": row.get("source")}
    return out


def registered_cameras(sparse: str | Path, frame: dict, manifest: dict | None = None,
                       ground_z: float | None = None) -> list[dict]:
    """Registered cameras in the delivery CRS: name, xyz, residuals, role, and (with `ground_z`,
    delivery CRS) the footprint ring and whether it was clipped."""
    origin = np.asarray(frame["origin"], float)
    cams = read_colmap_cameras(sparse)
    res = residuals_by_image(frame)
    heldout = set((manifest or {}).get("heldout") or [])
    out = []
    for im in sorted(read_colmap_images(sparse), key=lambda i: i["name"]):
        centre = -im["R"].T @ im["t"]
        rec = {"name": im["name"], "registered": True, "xyz": centre + origin,
               "role": "heldout" if im["name"] in heldout else ("train" if manifest else None),
               **res.get(im["name"], {})}
        if ground_z is not None:
            fp = camera_footprint(im["R"], im["t"], cams[im["camera_id"]], ground_z - origin[2])
            if fp is not None:
                rec["footprint"] = fp[0] + origin[:2]
                rec["footprint_clipped"] = fp[1]
        out.append(rec)
    return out


def unregistered_photos(exif_csv: str | Path, registered: set[str]) -> list[dict]:
    """Photos of the image table that are not in the model, with where they were taken (WGS84
    lon/lat/alt; None when the photo had no position)."""
    path = Path(exif_csv)
    if not path.is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("name") in registered:
                continue
            try:
                lonlat = (float(row["lon"]), float(row["lat"]), float(row.get("alt") or 0.0))
            except (KeyError, TypeError, ValueError):
                lonlat = None
            out.append({"name": row.get("name"), "registered": False, "lonlatalt": lonlat,
                        "position_source": row.get("position_source") or None})
    return out


def partition_cells(manifest: dict, origin: np.ndarray) -> list[dict]:
    """The manifest's cells (local [xmin, ymin, xmax, ymax]) as delivery-CRS rectangles."""
    origin = np.asarray(origin, float)
    cells = []
    for part in manifest.get("partitions") or []:
        x0, y0, x1, y1 = np.asarray(part["cell_bounds"], float) + np.tile(origin[:2], 2)
        z = part.get("z_range") or [None, None]
        cells.append({"id": part["id"], "ring": np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]),
                      "expanded_bounds": [float(v) for v in
                                          np.asarray(part["expanded_bounds"]) + np.tile(origin[:2], 2)],
                      "num_images": len(part.get("images") or []), "num_points": part.get("num_points"),
                      "z_min": None if z[0] is None else z[0] + origin[2],
                      "z_max": None if z[1] is None else z[1] + origin[2]})
    return cells


def read_gcp_list(path: str | Path) -> tuple[str, dict[str, tuple[float, float, float]]]:
    """An ODM gcp_list.txt: (CRS header as written, {name: ground xyz}); unnamed points are named as
    `odm_formats.parse_gcp_list` names them (gcp01, gcp02... by coordinates, first seen first)."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError("empty GCP file", path=path)
    header, rows = lines[0], [ln.split() for ln in lines[1:]]
    given = {r[6] for r in rows if len(r) >= 7}
    points: dict[str, tuple[float, float, float]] = {}
    by_coords: dict[tuple[float, float, float], str] = {}
    counter = 0
    for r in rows:
        if len(r) < 6:
            continue
        xyz = (float(r[0]), float(r[1]), float(r[2]))
        name = r[6] if len(r) >= 7 else None
        if name is None:
            if xyz not in by_coords:
                while True:
                    counter += 1
                    if f"gcp{counter:02d}" not in given:
                        break
                by_coords[xyz] = f"gcp{counter:02d}"
            name = by_coords[xyz]
        points.setdefault(name, xyz)
    return header, points


def crs_user_input(header: str) -> str:
    """An ODM CRS header in a form QGIS's CRS parser takes (`WGS84 UTM 32N` -> `EPSG:32632`)."""
    text = header.strip().strip("'\"").strip()
    words = text.replace("-", " ").upper().split()
    if len(words) == 3 and words[0] == "WGS84" and words[1] == "UTM" and words[2][-1] in "NS":
        return f"EPSG:{(32600 if words[2][-1] == 'N' else 32700) + int(words[2][:-1])}"
    if text.upper() in ("WGS84", "WGS 84", "LATLON", "LONLAT"):
        return "EPSG:4326"
    return text


def gcp_rows(frame: dict) -> list[dict]:
    """GCP and check-point rows of frame.json with their role and residuals (metres)."""
    rows = []
    for key, role in (("gcps", "gcp"), ("check_points", "check"), ("checkpoints", "check")):
        for row in frame.get(key) or []:
            d = [row.get("dx"), row.get("dy"), row.get("dz")]
            have = all(v is not None for v in d)
            # frame.json calls control points "control": the styles and counts here say "gcp"
            kind = "check" if row.get("role", role) == "check" else role
            rows.append({"name": row.get("gcp") or row.get("name"), "role": kind,
                         "residual_m": float(np.linalg.norm(d)) if have else None,
                         "residual_h_m": float(np.hypot(d[0], d[1])) if have else None,
                         "residual_z_m": float(d[2]) if have else None,
                         "observations": row.get("observations"), "used_observations": row.get("used"),
                         "reproj_px": row.get("reproj_px"), "inlier": row.get("inlier"),
                         "xyz": row.get("xyz") or ([row["x"], row["y"], row["z"]] if "x" in row else None)})
    return rows


# ----------------------------------------------------------------------------- the rule's entry

def prepare_ept(paths: ScenePaths, frame: dict | None = None, **options) -> dict:
    """The point cloud as EPT in `report/ept` when it is missing or older than points.laz (needs laspy)."""
    if not paths.points.is_file():
        return {"written": False, "reason": f"{paths.rel(paths.points)} absent"}
    ept_json = paths.ept / "ept.json"
    if ept_json.is_file() and ept_json.stat().st_mtime >= paths.points.stat().st_mtime:
        return {"written": False, "reason": "up to date"}
    try:
        from . import ept
    except ImportError as exc:
        log.warning("the EPT point cloud is not written: %s is not importable here (%s)", exc.name, sys.executable)
        return {"written": False, "reason": f"{exc.name} not importable by {sys.executable}"}
    crs = frame.get("crs_wkt") or frame.get("epsg") if frame else None
    return {"written": True, **ept.ept_from_laz(paths.points, paths.ept, crs=crs, **options)}


def run(results_dir: str | Path, scene: str, out_qgz: str | Path, *, gcp_list: str | Path | None = None,
        qgis_python_path: str | None = None, write_ept: bool = True, ept_options: dict | None = None) -> dict:
    """Build `report/<scene>.qgz` and its files for `results_dir/scene`; return the summary.

    The EPT is written here (laspy); the project in this interpreter when it imports qgis, else in
    the QGIS interpreter. Without either, QgisUnavailable says what to install.
    """
    paths = ScenePaths(Path(results_dir) / scene, out_qgz)
    frame = read_frame(paths.frame)
    ept_info = prepare_ept(paths, frame, **(ept_options or {})) if write_ept else None
    if qgis_in_process():
        summary = build_project(paths.root, paths.qgz, gcp_list=gcp_list)
    else:
        python = qgis_python(qgis_python_path)
        problem = qgis_python_problem(python)
        if problem:
            raise QgisUnavailable(f"QGIS is needed to write {paths.rel(paths.qgz)}: {sys.executable} cannot import "
                                  f"qgis and {problem}", hint=INSTALL_HINT)
        cmd = [python, str(SCRIPT), str(Path(results_dir)), scene, str(paths.qgz), "--build-only"]
        if gcp_list:
            cmd += ["--gcp-list", str(gcp_list)]
        log.info("building the QGIS project with %s", python)
        env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the QGIS project build failed ({python} exited {proc.returncode}; its messages "
                               f"are above)")
        summary = read_json(paths.summary)
    if ept_info is not None:
        summary["ept"] = {k: v for k, v in ept_info.items() if k != "path"}
        write_json(paths.summary, summary)
    return summary


# ----------------------------------------------------------------------------- QGIS

_APP = None


def start_qgis():
    """Initialise QGIS once per process (offscreen when there is no display)."""
    global _APP
    if "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    try:
        from qgis.core import QgsApplication
    except ImportError as exc:
        raise QgisUnavailable(f"{sys.executable} cannot import qgis ({exc})", hint=INSTALL_HINT) from exc
    if _APP is None and QgsApplication.instance() is None:
        _APP = QgsApplication([], False)
        _APP.initQgis()
    return QgsApplication.instance()


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _plain(values: list) -> list:
    """Attribute values as Python scalars (QGIS silently drops a feature holding a numpy scalar)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _add_features(layer, features: list) -> None:
    ok, _ = layer.dataProvider().addFeatures(features)
    if not ok or layer.featureCount() != len(features):
        raise RuntimeError(f"layer {layer.name()}: {len(features) - layer.featureCount()} feature(s) not added")


def _partial(final: Path) -> Path:
    """A temporary name beside `final`, with its extension (drivers choose the format by it); the
    ones a killed run left are removed."""
    for stale in final.parent.glob(f".{final.name}.*.partial{final.suffix}"):
        stale.unlink(missing_ok=True)
    return final.with_name(f".{final.name}.{os.getpid()}.partial{final.suffix}")


def build_project(scene_dir: str | Path, out_qgz: str | Path, *, gcp_list: str | Path | None = None,
                  styles_dir: str | Path = STYLES_DIR, map_width: int = MAP_WIDTH_PX) -> dict:
    """Write the QGIS project, its GeoPackages, heights.tif and map.png; return (and write) the summary."""
    start_qgis()
    return _Builder(ScenePaths(scene_dir, out_qgz), gcp_list, Path(styles_dir), map_width).build()


class _Builder:
    """One project build: the layers added, the ones left out and why."""

    def __init__(self, paths: ScenePaths, gcp_list, styles: Path, map_width: int):
        from qgis.core import QgsCoordinateReferenceSystem, QgsProject

        self.paths, self.styles, self.map_width = paths, styles, map_width
        self.gcp_list = Path(gcp_list) if gcp_list else None
        self.frame = read_frame(paths.frame)
        self.origin = np.asarray(self.frame["origin"], float)
        epsg = self.frame.get("epsg")
        self.crs = (QgsCoordinateReferenceSystem(f"EPSG:{epsg}") if epsg
                    else QgsCoordinateReferenceSystem.fromWkt(self.frame["crs_wkt"]))
        self.project = QgsProject.instance()
        self.project.clear()
        self.layers: list[dict] = []
        self.left_out: dict[str, str] = {}
        self.info: dict = {}
        self.tree: dict = {}

    # ---- helpers
    def leave_out(self, name: str, reason: str) -> None:
        log.warning("QGIS project: layer %r left out: %s", name, reason)
        self.left_out[name] = reason

    def style(self, layer, qml: str) -> None:
        msg, ok = layer.loadNamedStyle(str(self.styles / qml))
        if not ok:
            log.warning("style %s not applied to %s: %s", qml, layer.name(), msg)

    def add(self, layer, group: str, visible: bool, qml: str | None = None) -> bool:
        from qgis.core import QgsMapLayer

        if not layer.isValid():
            self.leave_out(layer.name(), f"QGIS could not open {self.paths.rel(Path(layer.source().split('|')[0]))}")
            return False
        if qml:
            self.style(layer, qml)
        self.project.addMapLayer(layer, False)
        node = self.tree[group].addLayer(layer)
        node.setItemVisibilityChecked(visible)
        if layer.type() == QgsMapLayer.VectorLayer:
            node.setExpanded(False)
        self.layers.append({"name": layer.name(), "group": group, "provider": layer.providerType(),
                            "source": os.path.relpath(layer.source().split("|")[0], self.paths.report),
                            "visible": visible})
        return True

    def stretch(self, layer, low_q: float = 0.02, high_q: float = 0.98, floor: float | None = None) -> tuple:
        """Map the qml's 0..1 ramp onto the raster's [low_q, high_q] value range."""
        from qgis.core import QgsColorRampShader

        lo, hi = layer.dataProvider().cumulativeCut(1, low_q, high_q)
        if floor is not None:
            lo = floor
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            hi = lo + 1.0
        renderer = layer.renderer()
        fn = renderer.shader().rasterShaderFunction()
        values = [lo + it.value * (hi - lo) for it in fn.colorRampItemList()]
        items = [QgsColorRampShader.ColorRampItem(v, it.color, f"{v:.1f}")
                 for v, it in zip(values, fn.colorRampItemList())]
        fn.setColorRampItemList(items)
        fn.setMinimumValue(lo)
        fn.setMaximumValue(hi)
        renderer.setClassificationMin(lo)
        renderer.setClassificationMax(hi)
        return float(lo), float(hi)

    # ---- layers
    def rasters(self) -> dict:
        from qgis.core import QgsRasterLayer

        p, made = self.paths, {}
        for key, path, name in (("ortho", p.ortho, "Orthophoto"), ("dsm", p.dsm, "DSM"), ("dtm", p.dtm, "DTM")):
            if path.is_file():
                layer = QgsRasterLayer(str(path), name, "gdal")
                if layer.isValid():
                    made[key] = layer
                else:
                    self.leave_out(name, f"QGIS could not open {p.rel(path)}")
            else:
                self.leave_out(name, f"{p.rel(path)} absent")
        return made

    def heights(self, dsm, dtm):
        """DSM − DTM on the DSM's grid (QGIS's raster calculator, nodata where either is nodata),
        then copied into a tiled, deflated GeoTIFF with overviews (the calculator writes it raw)."""
        from qgis.analysis import QgsRasterCalculator, QgsRasterCalculatorEntry
        from qgis.core import QgsRaster, QgsRasterFileWriter, QgsRasterLayer, QgsRasterPipe

        entries = []
        for ref, layer in (("dsm@1", dsm), ("dtm@1", dtm)):
            e = QgsRasterCalculatorEntry()
            e.ref, e.raster, e.bandNumber = ref, layer, 1
            entries.append(e)
        final = self.paths.heights
        final.unlink(missing_ok=True)  # an earlier run's must not outlive a failed one
        tmp = _partial(final)
        raw = tmp.with_name(tmp.name.replace(".partial", ".raw.partial"))
        context = self.project.transformContext()
        calc = QgsRasterCalculator('"dsm@1" - "dtm@1"', str(raw), "GTiff", dsm.extent(), self.crs, dsm.width(),
                                   dsm.height(), entries, context)
        status = calc.processCalculation()
        try:
            if status != 0:
                self.leave_out("Heights above ground", f"the raster calculator failed (status {int(status)}): "
                               f"{calc.lastError()}")
                return None
            src = QgsRasterLayer(str(raw), "raw", "gdal")
            writer = QgsRasterFileWriter(str(tmp))
            writer.setOutputFormat("GTiff")
            writer.setCreateOptions(["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES", "BIGTIFF=IF_SAFER"])
            levels = [2**i for i in range(1, 16) if max(src.width(), src.height()) >> i >= 256]
            if levels:
                writer.setBuildPyramidsFlag(QgsRaster.PyramidsFlagYes)
                writer.setPyramidsFormat(QgsRaster.PyramidsInternal)
                writer.setPyramidsList(levels)
                writer.setPyramidsResampling("AVERAGE")
            pipe = QgsRasterPipe()
            pipe.set(src.dataProvider().clone())
            status = writer.writeRaster(pipe, src.width(), src.height(), src.extent(), self.crs, context)
            if status != 0:
                self.leave_out("Heights above ground", f"writing {final.name} failed (QgsRasterFileWriter status "
                               f"{int(status)})")
                return None
            del pipe, src
            _replace(tmp, final)
        finally:
            for leftover in (raw, raw.with_name(raw.name + ".aux.xml"), tmp):
                leftover.unlink(missing_ok=True)
        return QgsRasterLayer(str(final), "Heights above ground (DSM − DTM)", "gdal")

    def ground_height(self, rasters: dict, manifest: dict | None) -> tuple[float | None, str]:
        """The mean ground height the footprints are cut at: the DTM's mean, else the DSM's, else the
        median height of the SfM points (partitions/points.npz), else the cameras' mean height less
        the model's flying height (frame.json)."""
        from qgis.core import QgsRasterBandStats

        for key in ("dtm", "dsm"):
            if key in rasters:
                stats = rasters[key].dataProvider().bandStatistics(1, QgsRasterBandStats.Mean)
                if math.isfinite(stats.mean):
                    return float(stats.mean), f"mean of {key}.tif"
        points = self.paths.manifest.parent / ((manifest or {}).get("points") or "points.npz")
        if manifest is not None and points.is_file():
            with np.load(points) as npz:
                if "xyz" in npz.files and len(npz["xyz"]):
                    return float(np.median(npz["xyz"][:, 2]) + self.origin[2]), "median height of the SfM points"
        agl = (self.frame.get("checks") or {}).get("model_agl_m")
        if agl and (self.paths.sparse / "images.bin").is_file():
            zc = [(-im["R"].T @ im["t"])[2] for im in read_colmap_images(self.paths.sparse)]
            return float(np.mean(zc) - agl + self.origin[2]), "cameras' height less the model's flying height"
        return None, "no DTM, DSM, SfM points or flying height"

    def memory_layer(self, geometry: str, name: str, fields: list[tuple[str, str]]):
        from qgis.core import QgsVectorLayer

        uri = f"{geometry}?crs={self.crs.authid() or 'EPSG:4326'}&" + "&".join(f"field={n}:{t}" for n, t in fields)
        layer = QgsVectorLayer(uri, name, "memory")
        if not self.crs.authid():
            layer.setCrs(self.crs)
        return layer

    def write_gpkg(self, final: Path, layers: list) -> list:
        """Memory layers into one GeoPackage (temporary name, then renamed); the file's layers back."""
        from qgis.core import QgsVectorFileWriter, QgsVectorLayer

        tmp = _partial(final)
        tmp.unlink(missing_ok=True)
        for i, layer in enumerate(layers):
            opts = QgsVectorFileWriter.SaveVectorOptions()
            opts.driverName = "GPKG"
            opts.layerName = layer.name()
            opts.actionOnExistingFile = (QgsVectorFileWriter.CreateOrOverwriteFile if i == 0
                                         else QgsVectorFileWriter.CreateOrOverwriteLayer)
            err, msg, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(tmp), self.project.transformContext(),
                                                                     opts)
            if err != QgsVectorFileWriter.NoError:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"writing {final.name} layer {layer.name()}: {msg}")
        _replace(tmp, final)
        return [QgsVectorLayer(f"{final}|layername={layer.name()}", layer.name(), "ogr") for layer in layers]

    def cameras(self, ground_z: float | None, manifest: dict | None) -> list:
        from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry,
                               QgsPoint, QgsPointXY)

        p = self.paths
        if not (p.sparse / "images.bin").is_file():
            self.leave_out("Cameras", f"{p.rel(p.sparse)} has no images.bin")
            return []
        regs = registered_cameras(p.sparse, self.frame, manifest, ground_z)
        others = unregistered_photos(p.exif, {c["name"] for c in regs})
        to_delivery = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), self.crs,
                                             self.project.transformContext())
        fields = [("name", "string"), ("registered", "boolean"), ("role", "string"), ("residual_m", "double"),
                  ("residual_h_m", "double"), ("residual_z_m", "double"), ("inlier", "boolean"),
                  ("position_source", "string"), ("x", "double"), ("y", "double"), ("z", "double")]
        cams = self.memory_layer("PointZ", "cameras", fields)
        fps = self.memory_layer("Polygon", "footprints", [("name", "string"), ("ground_z", "double"),
                                                         ("area_m2", "double"), ("clipped", "boolean")])
        cam_feats, fp_feats, no_position = [], [], 0
        for c in regs + others:
            if c["registered"]:
                xyz = c["xyz"]
            elif c["lonlatalt"] is not None:
                pt = to_delivery.transform(QgsPointXY(c["lonlatalt"][0], c["lonlatalt"][1]))
                xyz = (pt.x(), pt.y(), c["lonlatalt"][2])
            else:
                no_position += 1
                continue
            f = QgsFeature(cams.fields())
            f.setGeometry(QgsGeometry(QgsPoint(float(xyz[0]), float(xyz[1]), float(xyz[2]))))
            f.setAttributes(_plain([c["name"], c["registered"], c.get("role"), c.get("residual_m"),
                                    c.get("residual_h_m"), c.get("residual_z_m"), c.get("inlier"),
                                    c.get("position_source"), float(xyz[0]), float(xyz[1]), float(xyz[2])]))
            cam_feats.append(f)
            if "footprint" in c:
                ring = [QgsPointXY(float(x), float(y)) for x, y in c["footprint"]]
                g = QgsGeometry.fromPolygonXY([ring + ring[:1]])
                f = QgsFeature(fps.fields())
                f.setGeometry(g)
                f.setAttributes(_plain([c["name"], ground_z, g.area(), c["footprint_clipped"]]))
                fp_feats.append(f)
        _add_features(cams, cam_feats)
        _add_features(fps, fp_feats)
        self.info["cameras"] = {"registered": len(regs), "not_registered": len(others),
                                "without_position": no_position, "footprints": len(fp_feats),
                                "footprints_clipped": sum(1 for c in regs if c.get("footprint_clipped"))}
        if ground_z is None:
            self.leave_out("Footprints", "no ground height to meet the rays with")
            return self.write_gpkg(p.cameras_gpkg, [cams])
        return self.write_gpkg(p.cameras_gpkg, [cams, fps])

    def survey(self, manifest: dict | None) -> list:
        from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry,
                               QgsPoint, QgsPointXY)

        layers = []
        if manifest is None:
            self.leave_out("Partitions", f"{self.paths.rel(self.paths.manifest)} absent")
        else:
            cells = partition_cells(manifest, self.origin)
            parts = self.memory_layer("Polygon", "partitions", [
                ("id", "string"), ("num_images", "integer"), ("num_points", "integer"), ("z_min", "double"),
                ("z_max", "double"), ("expanded_bounds", "string")])
            feats = []
            for c in cells:
                f = QgsFeature(parts.fields())
                ring = [QgsPointXY(float(x), float(y)) for x, y in c["ring"]]
                f.setGeometry(QgsGeometry.fromPolygonXY([ring + ring[:1]]))
                f.setAttributes(_plain([c["id"], c["num_images"], c["num_points"], c["z_min"], c["z_max"],
                                 json.dumps([round(v, 3) for v in c["expanded_bounds"]])]))
                feats.append(f)
            _add_features(parts, feats)
            layers.append(parts)
        rows = gcp_rows(self.frame)
        listed: dict = {}
        transform = None
        if self.gcp_list and self.gcp_list.is_file():
            header, listed = read_gcp_list(self.gcp_list)
            src = QgsCoordinateReferenceSystem(crs_user_input(header))
            if not src.isValid():
                src = QgsCoordinateReferenceSystem.fromProj(header.strip().strip("'\""))
            if src.isValid():
                transform = QgsCoordinateTransform(src, self.crs, self.project.transformContext())
            else:
                self.leave_out("GCPs", f"the CRS {header!r} of {self.gcp_list.name} is not understood by QGIS")
                listed = {}
        for name in listed:
            if name not in {r["name"] for r in rows}:
                rows.append({"name": name, "role": "gcp", "used_observations": 0})
        placed = []
        for r in rows:
            if r.get("xyz") is not None:
                placed.append((r, [float(v) for v in r["xyz"]]))
            elif r["name"] in listed and transform is not None:
                x, y, z = listed[r["name"]]
                pt = transform.transform(QgsPointXY(x, y))
                placed.append((r, [pt.x(), pt.y(), z]))
        if not rows:
            self.leave_out("GCPs", "frame.json lists no GCPs or check points")
        elif not placed:
            if "GCPs" not in self.left_out:
                self.leave_out("GCPs", "frame.json gives GCP residuals but not positions, and no gcp_list was given")
        else:
            gcps = self.memory_layer("PointZ", "gcps", [
                ("name", "string"), ("role", "string"), ("inlier", "boolean"), ("residual_m", "double"),
                ("residual_h_m", "double"), ("residual_z_m", "double"), ("observations", "integer"),
                ("used_observations", "integer"), ("reproj_px", "double")])
            feats = []
            for r, xyz in placed:
                f = QgsFeature(gcps.fields())
                f.setGeometry(QgsGeometry(QgsPoint(*xyz)))
                f.setAttributes(_plain([r["name"], r["role"], r.get("inlier"), r.get("residual_m"),
                                        r.get("residual_h_m"), r.get("residual_z_m"), r.get("observations"),
                                        r.get("used_observations"), r.get("reproj_px")]))
                feats.append(f)
            _add_features(gcps, feats)
            layers.append(gcps)
            self.info["gcps"] = {"gcp": sum(1 for r, _ in placed if r["role"] == "gcp"),
                                 "check": sum(1 for r, _ in placed if r["role"] == "check"),
                                 "without_position": len(rows) - len(placed)}
        return self.write_gpkg(self.paths.survey_gpkg, layers) if layers else []

    def point_cloud(self):
        from qgis.core import QgsPointCloudLayer

        ept_json = self.paths.ept / "ept.json"
        if not ept_json.is_file():
            why = (f"{self.paths.rel(self.paths.points)} absent" if not self.paths.points.is_file()
                   else f"{self.paths.rel(ept_json)} not written (aerosplat.ept needs laspy)")
            self.leave_out("Point cloud", why)
            return None
        if self.paths.points.is_file() and ept_json.stat().st_mtime < self.paths.points.stat().st_mtime:
            log.warning("%s is older than %s", self.paths.rel(ept_json), self.paths.rel(self.paths.points))
        return QgsPointCloudLayer(str(ept_json), "Point cloud (EPT)", "ept")

    # ---- the whole project
    def build(self) -> dict:
        from qgis.core import Qgis, QgsRasterLayer

        t0 = time.monotonic()
        p = self.paths
        p.report.mkdir(parents=True, exist_ok=True)
        self.project.setCrs(self.crs)
        self.project.setTitle(f"aerosplat: {p.root.name}")
        self.project.writeEntry("Paths", "/Absolute", False)
        self.project.setFilePathStorage(Qgis.FilePathType.Relative)
        root = self.project.layerTreeRoot()
        self.tree = {"Survey": root.addGroup("Survey"), "Products": root.addGroup("Products")}
        manifest = read_json(p.manifest) if p.manifest.is_file() else None

        rasters = self.rasters()
        ground_z, ground_source = self.ground_height(rasters, manifest)
        self.info["ground_z"] = {"value": ground_z, "source": ground_source}

        # Survey group, top to bottom: GCPs, cameras, footprints, cells.
        survey = {layer.name(): layer for layer in self.survey(manifest)}
        cams = {layer.name(): layer for layer in self.cameras(ground_z, manifest)}
        for name, layer, title, qml in (("gcps", survey, "GCPs and check points", "gcps.qml"),
                                        ("cameras", cams, "Cameras", "cameras.qml"),
                                        ("footprints", cams, "Image footprints", "footprints.qml"),
                                        ("partitions", survey, "Partition cells", "partitions.qml")):
            if name in layer:
                layer[name].setName(title)
                self.add(layer[name], "Survey", True, qml)

        # Products group, top to bottom: point cloud, heights, DTM, DSM colour over its hillshade, orthophoto.
        show_dsm = "ortho" not in rasters
        pc = self.point_cloud()
        if pc is not None and self.add(pc, "Products", False, "pointcloud.qml"):
            self.info["point_cloud"] = {"points": int(pc.pointCount())}
        if "dsm" in rasters and "dtm" in rasters:
            layer = self.heights(rasters["dsm"], rasters["dtm"])
            if layer is not None and self.add(layer, "Products", False, "heights.qml"):
                self.info["heights_range_m"] = self.stretch(layer, floor=0.0)
        else:
            missing = " and ".join(k.upper() for k in ("dsm", "dtm") if k not in rasters)
            self.leave_out("Heights above ground", f"no {missing}")
            p.heights.unlink(missing_ok=True)  # an earlier run's, from products that have changed
        if "dtm" in rasters and self.add(rasters["dtm"], "Products", False, "elevation.qml"):
            self.info["dtm_ramp_m"] = self.stretch(rasters["dtm"])
        if "dsm" in rasters:
            if self.add(rasters["dsm"], "Products", show_dsm, "elevation.qml"):
                self.info["dsm_ramp_m"] = self.stretch(rasters["dsm"])
                shade = QgsRasterLayer(str(p.dsm), "DSM hillshade", "gdal")
                self.add(shade, "Products", show_dsm, "hillshade.qml")
        else:
            self.leave_out("DSM hillshade", f"{p.rel(p.dsm)} absent")
        if "ortho" in rasters:
            self.add(rasters["ortho"], "Products", True, "ortho.qml")

        self.save()
        self.render(rasters, survey, cams)
        summary = {"scene": p.root.name, "project": p.qgz.name, "crs": self.crs.authid() or self.crs.toWkt(),
                   "layers": self.layers, "left_out": self.left_out, **self.info, "map": p.map_png.name,
                   "seconds": round(time.monotonic() - t0, 2)}
        write_json(p.summary, summary)
        log.info("QGIS project %s: %d layers, %d left out (%s), %.1f s", p.rel(p.qgz), len(self.layers),
                 len(self.left_out), ", ".join(self.left_out) or "none", summary["seconds"])
        return summary

    def save(self) -> None:
        """Write the .qgz under a temporary name beside the final one (so relative paths are the
        final ones), rename the project inside the archive after it, then move it into place."""
        p = self.paths
        tmp = _partial(p.qgz)
        if not self.project.write(str(tmp)):
            raise RuntimeError(f"QGIS could not write {tmp}: {self.project.error()}")
        fixed = tmp.with_name(tmp.name + ".zip")
        with zipfile.ZipFile(tmp) as zin, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as zout:
            for item in zin.infolist():
                name = item.filename
                for ext in (".qgs", ".qgd"):  # the project and its auxiliary storage
                    if name.endswith(ext) and "/" not in name:
                        name = p.qgz.stem + ext
                zout.writestr(name, zin.read(item.filename))
        tmp.unlink()
        _replace(fixed, p.qgz)
        self.project.setFileName(str(p.qgz))

    def render(self, rasters: dict, survey: dict, cams: dict) -> None:
        """The project's visible layers drawn offscreen into map.png (the report's map)."""
        from qgis.core import QgsMapRendererParallelJob, QgsMapSettings, QgsRectangle
        from qgis.PyQt.QtCore import QSize
        from qgis.PyQt.QtGui import QColor

        extent = QgsRectangle()
        extent.setMinimal()
        for layer in [rasters.get("ortho"), rasters.get("dsm"), survey.get("partitions"), cams.get("cameras")]:
            if layer is not None and layer.isValid() and not layer.extent().isEmpty():
                extent.combineExtentWith(layer.extent())
        if extent.isEmpty() or not math.isfinite(extent.width()):
            self.leave_out("map.png", "nothing with an extent to draw")
            return
        extent = extent.buffered(0.04 * max(extent.width(), extent.height(), 1.0))
        width = self.map_width
        height = max(1, int(round(width * extent.height() / extent.width())))
        settings = QgsMapSettings()
        settings.setLayers(self.project.layerTreeRoot().checkedLayers())
        settings.setDestinationCrs(self.crs)
        settings.setTransformContext(self.project.transformContext())
        settings.setOutputSize(QSize(width, height))
        settings.setExtent(extent)
        settings.setBackgroundColor(QColor(255, 255, 255))
        settings.setFlag(QgsMapSettings.Antialiasing, True)
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        for err in job.errors():
            log.warning("map.png: %s: %s", err.layerID, err.message)
        tmp = _partial(self.paths.map_png)
        if not job.renderedImage().save(str(tmp), "PNG"):
            raise RuntimeError(f"could not write {tmp}")
        _replace(tmp, self.paths.map_png)
        self.info["map_size_px"] = [width, height]
