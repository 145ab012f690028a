"""Deterministic procedural aerial sample scene: drone photos with EXIF/XMP plus ground truth.

Why: the pipeline needs a small end-to-end input whose correct answer is known
exactly (camera poses, surface heights, GCP pixels), that builds in well under a
minute on one CPU core and that COLMAP's SIFT reconstructs cleanly. Same recipe
(``resources/sample_scene.yaml``) => byte-identical files, for the same versions of
numpy, Pillow/libjpeg and GDAL. No wall-clock time enters any output.

Usage::

    python -m aerosplat.samplescene RECIPE OUT_DIR
    generate(recipe_path, out_dir, overrides={"camera": {...}})   # overrides deep-merge into the recipe

A recipe may start with ``base: other.yaml`` (relative to its own folder): the base is loaded
first and the recipe's keys deep-merge over it, then the overrides
(``resources/sample_survey_scene.yaml`` is the base scene seen by an RTK survey drone).

Outputs under OUT_DIR::

    images/IMG_0001.jpg ...   nadir lawnmower shots first, then the obliques
    gcp_list.txt              OpenDroneMap GCP file (EPSG:32632 header)
    truth/cameras.json        true intrinsics and poses, noisy GPS as written to EXIF (projected,
                              and as lat/lon/h in gps_latlon), gimbal angles, capture times;
                              with distortion "model" OPENCV/FULL_OPENCV and COLMAP "params";
                              with ``survey:`` the true and written 35 mm focal and the survey block
    truth/dsm.tif, dtm.tif    float32 GeoTIFFs, EPSG:32632, 0.25 m, north-up, nodata -9999
    truth/ortho.tif           true orthophoto on the DSM's grid: uint8 RGB + alpha (255 = scene);
                              vertical rays (no building lean, no facades), the photos' shading,
                              ``truth.ortho_supersample`` squared rays per cell
    truth/origin.json         the scene centre (local-frame origin)

Scene model
-----------
The world is modelled directly in the delivery CRS: local coordinates are
``x = E - E0, y = N - N0, z = h - h0`` with (E0, N0) the UTM 32N coordinates of the
scene centre and h0 the ellipsoidal height of the ground there (the take-off
point). UTM easting/northing plus ellipsoidal height are treated as a Cartesian
frame; over this 256 m scene the neglected effects (UTM scale 0.9996 => 4 cm per
100 m, earth curvature 2 mm at 150 m) are far below the GPS noise, and doing so
makes every truth file exactly consistent with the rendered pixels. Heights are
ellipsoidal everywhere (no geoid).

The visible surface is a heightfield (solid below it)::

    surface_height(x, y) = max(soft(x, y), roof(x, y))

- ``soft`` = terrain + tree canopies: a raster at ``scene.texture_cell_m`` sampled
  bilinearly (gentle fractal hills of a few metres; trees are lobed ellipsoidal
  domes with leafy bumps);
- ``roof`` = analytic rotated boxes (buildings) with flat or gable roofs, so walls
  and eaves stay crisp at any resolution. A building-id raster only picks which
  box to test.

The DSM and DTM are ``surface_height`` and the terrain raster sampled at the DSM
cell centres: the very function the renderer uses.

Rendering is vectorised numpy ray casting against that heightfield: empty space
is skipped with conservative max-height grids (0.5 m, 2 m, 8 m), then fine steps of
at most ``render.fine_step_m`` horizontally find a sign change, which is refined by
bisection/secant steps (soft surfaces) or solved exactly (building walls and roof
planes). Walls get their own facade texture (plaster noise, framed windows) in
wall coordinates, so oblique views see facades, not stretched roof texture.
Shading is Lambertian with a fixed sun plus ambient light, and soft ambient
darkening of the ground near walls; nothing depends on the viewpoint, so all
photos and the true orthophoto (the same code with one vertical ray per sample,
started above the highest surface) agree on appearance. Anti-aliasing:
``render.supersample`` squared rays per pixel, mip-mapped ground/leaf/noise
textures and analytically filtered patterns (window edges, tiles, GCP checkers)
whose edge width follows the footprint of a ray sample.

Conventions
-----------
- Camera frame: COLMAP/OpenCV, x right, y down, z forward; ``x_cam = R @ X + t``.
  In ``truth/cameras.json`` ``R_world_to_cam``/``t_world_to_cam`` take X in UTM metres
  (E, N, h), so t is large (~5e6) because of the UTM magnitudes; use float64.
  ``R_local``/``t_local`` are the same pose for X relative to the origin in
  ``truth/origin.json`` (R is identical, the frames are parallel).
- Pixel coordinates: origin at the top-left corner of the top-left pixel, so the
  centre of pixel (col i, row j) is (i + 0.5, j + 0.5) and the principal point is
  (W/2 + dx, H/2 + dy) with (dx, dy) = ``camera.principal_offset_px`` (default 0: the
  image centre). COLMAP and the ODM gcp_list.txt use this convention.
- Distortion (optional ``camera.distortion``; absent or all zero = pinhole, the original
  code path): the OpenCV / COLMAP OPENCV model on normalized coordinates, r^2 = x^2 + y^2,
  x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2),
  y_d = y (1 + k1 r^2 + k2 r^4 + k3 r^6) + p1 (r^2 + 2 y^2) + 2 p2 x y, pixel = (fx x_d + cx,
  fy y_d + cy). Each ray sample inverts it (Newton, to 1e-9); GCP pixels and the coverage
  check use the same model. So the photos are what a real lens delivers (DewarpFlag 0).
- Attitude: DJI XMP ``GimbalYawDegree`` (and ``FlightYawDegree``) is clockwise from
  *true* north: true north lies 0.33 deg east of UTM grid north here, so a camera
  heading along grid north reports -0.33. Pitch -90 = nadir; roll 0. The gimbal
  angles are exact (no noise).
- GPS in EXIF = true camera centre + N(0, 2 m) per horizontal axis and N(0, 3 m)
  vertically (``noise.*`` in the recipe; 2 cm / 3 cm, RTK, in the survey recipe), i.i.d.
  per image; ``GPSAltitude`` is the ellipsoidal height (AltitudeRef 0); XMP
  ``RelativeAltitude`` = that noisy height minus the take-off ground height h0;
  ``AbsoluteAltitude`` = the noisy height.
- Sensor: ``FocalLength`` mm = fx * sensor_width_mm / width; FocalPlaneX/YResolution
  in pixels per centimetre (unit 3); ``FocalLengthIn35mmFilm`` = focal * 36 mm /
  sensor width (width rule, as in OpenDroneMap/OpenSfM and aerosplat.ingest), rounded.
- Survey tags (optional ``survey:`` section, absent = none of this): the XMP carries DJI's
  drone-dji CalibratedFocalLength and CalibratedOpticalCenterX/Y (true fx, cx, cy in pixels
  at the photo's size, "%.6f"), DewarpData "date;fx,fy,cx-W/2,cy-H/2,k1,k2,p1,p2,k3" ("%.12f"),
  DewarpFlag, RtkFlag and RtkStdLon/Lat/Hgt (m, "%.5f"), as real survey drones write them;
  ``FocalLengthIn35mmFilm`` is round(true f35 * (1 + focal_35mm_error)) (drones' tags can be
  several % off) and ``focal_plane_tags: false`` drops the FocalPlane tags (as many DJI
  photos do). `strip_xmp_attributes` makes the same photos without chosen tags.
- GCPs: 2x2 black/white checker squares painted on open ground; geo_x/y/z are
  exact (surveyed) truth, im_x/im_y the true projection (distorted, if the lens is) +
  N(0, noise.gcp_pixel_sigma_px), listed only where the centre is >= ``gcps.margin_px``
  inside the image and the line of sight is unobstructed (checked by ray casting).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import piexif
import rasterio
import scipy.ndimage as ndi
import scipy.sparse as sparse
import yaml
from PIL import Image
from pyproj import Transformer
from affine import Affine

from aerosplat.errors import InputError
from aerosplat.fileio import atomic_path, write_json

F32 = np.float32
NODATA = -9999.0
MAX_SKIP_LEVELS_M = (0.5, 2.0, 8.0)   # empty-space-skipping grid sizes
SKY_RGB = np.array([0.62, 0.72, 0.86], F32)

# Every key the recipe must define (dotted paths); checked up front so that a
# missing key is reported by name instead of as a KeyError deep inside rendering.
REQUIRED_KEYS: tuple[str, ...] = (
    "seed",
    "location.lat", "location.lon", "location.ground_height_m", "location.epsg",
    "scene.half_size_m", "scene.texture_cell_m",
    "terrain.relief_m", "terrain.wavelength_m",
    "roads.spacing_m", "roads.offset_m", "roads.width_m", "roads.sidewalk_m", "roads.manholes",
    "plazas.count", "plazas.size_m",
    "buildings.count", "buildings.height_m", "buildings.length_m", "buildings.width_m",
    "buildings.gable_fraction", "buildings.roof_pitch_deg", "buildings.rotation_jitter_deg",
    "buildings.gap_m",
    "trees.count", "trees.radius_m", "trees.height_m",
    "camera.width", "camera.height", "camera.fx", "camera.fy", "camera.sensor_width_mm",
    "camera.jpeg_quality", "camera.make", "camera.model",
    "render.supersample", "render.fine_step_m",
    "flight.altitude_m", "flight.forward_overlap", "flight.side_overlap", "flight.lines",
    "flight.images_per_line", "flight.line_heading_deg", "flight.start_time", "flight.interval_s",
    "obliques.count", "obliques.pitch_deg", "obliques.altitude_m", "obliques.start_azimuth_deg",
    "noise.gps_horizontal_sigma_m", "noise.gps_vertical_sigma_m", "noise.gcp_pixel_sigma_px",
    "gcps.count", "gcps.size_m", "gcps.margin_px",
    "sun.azimuth_deg", "sun.elevation_deg", "sun.ambient",
    "truth.dsm_cell_m", "truth.ortho_supersample",
)
# Keys of the optional sections, required once the section is present (no silent defaults
# for calibration values; a typo must not fall back to zero).
DISTORTION_KEYS: tuple[str, ...] = ("k1", "k2", "p1", "p2", "k3")
SURVEY_KEYS: tuple[str, ...] = ("rtk_flag", "rtk_std_m", "dewarp_date", "dewarp_flag",
                                "focal_35mm_error", "focal_plane_tags")
XMP_NS = b"http://ns.adobe.com/xap/1.0/\x00"   # APP1 payload prefix of the XMP segment


# ---------------------------------------------------------------------------
# Recipe


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `over` wins. Lets tests shrink one sub-key of a section."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get(recipe: dict[str, Any], dotted: str) -> Any:
    """recipe["a"]["b"] for "a.b"."""
    node: Any = recipe
    for part in dotted.split("."):
        node = node[part]
    return node


def _has(recipe: dict[str, Any], dotted: str) -> bool:
    """Whether an optional section is present (and not null)."""
    try:
        return _get(recipe, dotted) is not None
    except (KeyError, TypeError):
        return False


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One recipe file deep-merged over its `base:` recipe (a path relative to the file's folder).

    `chain` holds the files that named this one as their base, to report a missing base
    by who asked for it and to refuse cycles instead of recursing forever.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        if chain:
            raise InputError("base recipe not found", path=path,
                             hint=f"`base:` in {chain[-1]} is relative to that file's folder") from None
        raise InputError("sample-scene recipe not found", path=path,
                         hint="pass an existing YAML file, e.g. resources/sample_scene.yaml") from None
    except yaml.YAMLError as exc:
        raise InputError(f"recipe is not valid YAML: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise InputError("recipe must be a YAML mapping", path=path)
    if "base" not in data:
        return data
    base = path.parent / str(data.pop("base"))
    if base.resolve() in {p.resolve() for p in (*chain, path)}:
        names = " -> ".join(str(p) for p in (*chain, path, base))
        raise InputError(f"recipe `base:` chain is a cycle: {names}", path=path,
                         hint="a recipe must not be its own base, directly or through others")
    return _deep_merge(_read_recipe(base, (*chain, path)), data)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the YAML recipe (and its `base:` chain), apply overrides, and check every key."""
    path = Path(path)
    data = _read_recipe(path)
    if overrides:
        data = _deep_merge(data, overrides)
    optional = [k for section, keys in (("camera.distortion", DISTORTION_KEYS), ("survey", SURVEY_KEYS))
                if _has(data, section) for k in (f"{section}.{key}" for key in keys)]
    for key in (*REQUIRED_KEYS, *optional):
        try:
            _get(data, key)
        except (KeyError, TypeError):
            raise InputError(f"recipe key `{key}` is missing", path=path,
                             hint="copy it from resources/sample_scene.yaml "
                                  "(camera.distortion, survey: resources/sample_survey_scene.yaml)") from None
    cam = data["camera"]
    if int(cam["width"]) < 16 or int(cam["height"]) < 16:
        raise InputError("camera.width/height must be at least 16 px", path=path)
    offset = cam.get("principal_offset_px", (0, 0))
    if not isinstance(offset, (list, tuple)) or len(offset) != 2:
        raise InputError("camera.principal_offset_px must be [dx, dy] in pixels", path=path)
    if _has(data, "survey"):
        std = data["survey"]["rtk_std_m"]
        if not isinstance(std, (list, tuple)) or len(std) != 3:
            raise InputError("survey.rtk_std_m must be [lon, lat, height] in metres", path=path)
        data["survey"]["dewarp_date"] = str(data["survey"]["dewarp_date"])   # YAML reads 2024-05-20 as a date
    for key in ("render.supersample", "truth.ortho_supersample"):
        if int(_get(data, key)) < 1:
            raise InputError(f"{key} must be >= 1", path=path)
    return data


# ---------------------------------------------------------------------------
# Georeference


@dataclass(frozen=True)
class Georef:
    """Scene origin in the delivery CRS and lon/lat conversions (pyproj, always_xy)."""

    epsg: int
    lat: float
    lon: float
    h0: float
    e0: float
    n0: float
    true_north_grid_az_deg: float   # grid azimuth of true north at the origin

    @staticmethod
    def from_recipe(loc: dict[str, Any]) -> "Georef":
        """Project the recipe's lat/lon and measure where true north points on the grid."""
        epsg = int(loc["epsg"])
        fwd = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
        lat, lon = float(loc["lat"]), float(loc["lon"])
        e0, n0 = fwd.transform(lon, lat)
        e1, n1 = fwd.transform(lon, lat + 0.001)   # a point due (true) north
        az = math.degrees(math.atan2(e1 - e0, n1 - n0))
        return Georef(epsg, lat, lon, float(loc["ground_height_m"]), float(e0), float(n0), az)

    def to_lonlat(self, e: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid (E, N) -> (lon, lat) degrees; heights are unchanged (same ellipsoid)."""
        inv = Transformer.from_crs(f"EPSG:{self.epsg}", "EPSG:4326", always_xy=True)
        lon, lat = inv.transform(np.asarray(e, float), np.asarray(n, float))
        return np.asarray(lon), np.asarray(lat)

    def to_grid(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) degrees -> grid (E, N)."""
        fwd = Transformer.from_crs("EPSG:4326", f"EPSG:{self.epsg}", always_xy=True)
        e, n = fwd.transform(np.asarray(lon, float), np.asarray(lat, float))
        return np.asarray(e), np.asarray(n)


# ---------------------------------------------------------------------------
# Noise and small helpers


def _interp_matrix(n_out: int, n_lat: int, step: float, offset: float,
                   periodic: bool) -> sparse.csr_matrix:
    """[n_out, n_lat] smoothstep interpolation weights from a value-noise lattice."""
    pos = (np.arange(n_out) + 0.5) * step + offset
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    w = f * f * (3.0 - 2.0 * f)
    i1 = i0 + 1
    if periodic:
        i0 %= n_lat
        i1 %= n_lat
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    cols = np.concatenate([i0, i1])
    vals = np.concatenate([1.0 - w, w]).astype(F32)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_lat), dtype=F32)


def _value_noise(rng: np.random.Generator, ny: int, nx: int, cells_per_lattice: float,
                 periodic: bool = False) -> np.ndarray:
    """Smooth value noise in about [-1, 1] on an [ny, nx] grid; separable so it is cheap."""
    if cells_per_lattice <= 1.0:
        return rng.uniform(-1.0, 1.0, (ny, nx)).astype(F32)
    step = 1.0 / cells_per_lattice
    if periodic:
        nly, nlx = max(2, round(ny * step)), max(2, round(nx * step))
        sy, sx, oy, ox = nly / ny, nlx / nx, 0.0, 0.0
    else:
        nly, nlx = int(ny * step) + 3, int(nx * step) + 3
        sy, sx = step, step
        oy, ox = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
    lattice = rng.uniform(-1.0, 1.0, (nly, nlx)).astype(F32)   # [nly, nlx]
    ay = _interp_matrix(ny, nly, sy, oy, periodic)
    ax = _interp_matrix(nx, nlx, sx, ox, periodic)
    tmp = ay @ lattice                                       # [ny, nlx]
    return np.ascontiguousarray((ax @ tmp.T).T, dtype=F32)  # [ny, nx]


def _fbm(rng: np.random.Generator, ny: int, nx: int, cell: float, wavelength: float,
         octaves: int, gain: float = 0.5, periodic: bool = False) -> np.ndarray:
    """Fractal sum of value-noise octaves, normalised to about [-1, 1]. [ny, nx]"""
    total = np.zeros((ny, nx), F32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += F32(amp) * _value_noise(rng, ny, nx, wavelength / 2 ** k / cell, periodic)
        norm += amp
        amp *= gain
    total *= F32(1.0 / norm)
    return total


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """Deterministic per-integer-tuple pseudo-random value in [0, 1) (tile and window tones)."""
    h = np.full(np.broadcast_shapes(*(np.shape(k) for k in keys)), 2166136261, np.uint32)
    for k in keys:
        h ^= np.asarray(k).astype(np.int64).astype(np.uint32)
        h *= np.uint32(16777619)
        h ^= h >> np.uint32(13)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(F32) * F32(1.0 / (1 << 24))


def _box(x: np.ndarray, lo: Any, hi: Any, w: np.ndarray) -> np.ndarray:
    """Coverage of [lo, hi] by a sample of width w centred at x (analytic anti-aliasing)."""
    a = np.clip((x - lo) / w + 0.5, 0.0, 1.0)
    b = np.clip((hi - x) / w + 0.5, 0.0, 1.0)
    return (a * b).astype(F32)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lambert(normal: np.ndarray, sun: np.ndarray, ambient: float) -> np.ndarray:
    """Ambient + diffuse factor for unit normals [N, 3] -> [N]."""
    return (ambient + (1.0 - ambient) * np.maximum(normal @ sun, 0.0)).astype(F32)


class _Mip:
    """Mip-mapped square texture (1 or 3 channels), periodic or edge-clamped.

    Sampling picks the level whose texel matches the ray-sample footprint, which is
    what keeps distant oblique ground from shimmering into SIFT-noise.
    """

    def __init__(self, img: np.ndarray, cell: float, origin: float, periodic: bool, levels: int):
        self.periodic = periodic
        self.origin = origin
        self.cell0 = cell
        self.levels: list[tuple[np.ndarray, int, float]] = []   # (flat [n*n(,3)], n, cell)
        cur = img.astype(F32)
        for k in range(levels):
            n = cur.shape[0]
            self.levels.append((cur.reshape(n * n, *cur.shape[2:]), n, cell * 2 ** k))
            if n % 2 or k == levels - 1:
                break
            cur = 0.25 * (cur[0::2, 0::2] + cur[1::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 1::2])

    def _bilinear(self, level: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        flat, n, cell = self.levels[level]
        gx = (x - self.origin) * F32(1.0 / cell) - F32(0.5)
        gy = (y - self.origin) * F32(1.0 / cell) - F32(0.5)
        if self.periodic:
            fx0, fy0 = np.floor(gx), np.floor(gy)
            fx, fy = gx - fx0, gy - fy0
            ix0 = np.mod(fx0.astype(np.int64), n)
            iy0 = np.mod(fy0.astype(np.int64), n)
            ix1, iy1 = (ix0 + 1) % n, (iy0 + 1) % n
        else:
            np.clip(gx, 0, n - 1.001, out=gx)
            np.clip(gy, 0, n - 1.001, out=gy)
            ix0, iy0 = gx.astype(np.int64), gy.astype(np.int64)
            fx, fy = gx - ix0, gy - iy0
            ix1, iy1 = ix0 + 1, iy0 + 1
        a = np.take(flat, iy0 * n + ix0, axis=0)
        b = np.take(flat, iy0 * n + ix1, axis=0)
        c = np.take(flat, iy1 * n + ix0, axis=0)
        d = np.take(flat, iy1 * n + ix1, axis=0)
        if flat.ndim == 2:
            fx, fy = fx[:, None], fy[:, None]
        top = a + fx * (b - a)
        return top + fy * (c + fx * (d - c) - top)

    def sample(self, x: np.ndarray, y: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Trilinear lookup; footprint in metres per ray sample. [N] or [N, 3]"""
        nlev = len(self.levels)
        lod = np.clip(np.log2(np.maximum(footprint, 1e-6) / self.cell0), 0, nlev - 1).astype(F32)
        l0 = np.minimum(lod.astype(np.int64), nlev - 1)
        w = lod - l0
        shape = (x.size,) + self.levels[0][0].shape[1:]
        out = np.empty(shape, F32)
        for lev in np.unique(l0):
            m = np.nonzero(l0 == lev)[0]
            v = self._bilinear(int(lev), x[m], y[m])
            if lev + 1 < nlev:
                v1 = self._bilinear(int(lev) + 1, x[m], y[m])
                wm = w[m] if v.ndim == 1 else w[m, None]
                v = v + wm * (v1 - v)
            out[m] = v
        return out


# ---------------------------------------------------------------------------
# Flight plan


@dataclass
class Shot:
    """One photo: pose in the local frame and its gimbal attitude."""

    name: str
    center: np.ndarray          # [3] local x, y, z (m)
    R: np.ndarray               # [3, 3] world(local/UTM axes) -> camera
    yaw_grid_deg: float         # clockwise from grid north
    pitch_deg: float            # -90 = nadir
    oblique: bool
    time: str                   # EXIF DateTimeOriginal


def rotation_world_to_cam(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """R (rows = camera x right, y down, z forward in world ENU axes) for a gimbal yaw/pitch, roll 0."""
    psi, theta = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.sin(psi) * math.cos(theta), math.cos(psi) * math.cos(theta), math.sin(theta)])
    right = np.array([math.cos(psi), -math.sin(psi), 0.0])
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def plan_flight(recipe: dict[str, Any]) -> list[Shot]:
    """Serpentine nadir lines sized from the overlaps, then obliques on a ring looking inward."""
    cam, fl, ob = recipe["camera"], recipe["flight"], recipe["obliques"]
    w, h = int(cam["width"]), int(cam["height"])
    fx, fy = float(cam["fx"]), float(cam["fy"])
    alt = float(fl["altitude_m"])
    along = alt * h / fy * (1.0 - float(fl["forward_overlap"]))   # image "up" points along track
    across = alt * w / fx * (1.0 - float(fl["side_overlap"]))
    n_lines, n_per = int(fl["lines"]), int(fl["images_per_line"])
    heading = float(fl["line_heading_deg"])
    hd = math.radians(heading)
    e_along = np.array([math.sin(hd), math.cos(hd)])
    e_across = np.array([math.cos(hd), -math.sin(hd)])
    t0 = dt.datetime.strptime(str(fl["start_time"]), "%Y:%m:%d %H:%M:%S")
    step = float(fl["interval_s"])
    shots: list[Shot] = []
    for li in range(n_lines):
        a_off = (li - (n_lines - 1) / 2) * across
        order = range(n_per) if li % 2 == 0 else range(n_per - 1, -1, -1)
        yaw = heading if li % 2 == 0 else heading + 180.0
        for j in order:
            s_off = (j - (n_per - 1) / 2) * along
            xy = a_off * e_across + s_off * e_along
            yaw_n = (yaw + 180.0) % 360.0 - 180.0
            shots.append(Shot("", np.array([xy[0], xy[1], alt]), rotation_world_to_cam(yaw_n, -90.0),
                              yaw_n, -90.0, False, ""))
    pitches = [float(p) for p in (ob["pitch_deg"] if isinstance(ob["pitch_deg"], list)
                                  else [ob["pitch_deg"]])]
    o_alt = float(ob["altitude_m"])
    for i in range(int(ob["count"])):
        az = float(ob["start_azimuth_deg"]) + 360.0 * i / int(ob["count"])
        pitch = pitches[i % len(pitches)]
        dist = o_alt / math.tan(math.radians(-pitch))   # the optical axis meets the ground at the centre
        pos = np.array([dist * math.sin(math.radians(az)), dist * math.cos(math.radians(az)), o_alt])
        yaw = (az + 180.0 + 180.0) % 360.0 - 180.0
        shots.append(Shot("", pos, rotation_world_to_cam(yaw, pitch), yaw, pitch, True, ""))
    for i, s in enumerate(shots):
        s.name = f"IMG_{i + 1:04d}.jpg"
        extra = 30.0 if s.oblique else 0.0   # a pause before the oblique ring
        s.time = (t0 + dt.timedelta(seconds=round(i * step + extra))).strftime("%Y:%m:%d %H:%M:%S")
    return shots


def _principal_offset(recipe: dict[str, Any]) -> tuple[float, float]:
    """camera.principal_offset_px: principal point minus image centre, pixels (0, 0 if absent)."""
    dx, dy = recipe["camera"].get("principal_offset_px", (0.0, 0.0))
    return float(dx), float(dy)


def _camera_matrix(recipe: dict[str, Any]) -> tuple[int, int, float, float, float, float]:
    """(width, height, fx, fy, cx, cy); principal point = image centre + offset (corner convention)."""
    cam = recipe["camera"]
    w, h = int(cam["width"]), int(cam["height"])
    dx, dy = _principal_offset(recipe)
    return w, h, float(cam["fx"]), float(cam["fy"]), w / 2.0 + dx, h / 2.0 + dy


Distortion = tuple[float, float, float, float, float]   # (k1, k2, p1, p2, k3)


def _distortion(recipe: dict[str, Any]) -> Distortion | None:
    """camera.distortion as (k1, k2, p1, p2, k3); None for a pinhole (absent or all zero),
    so that a pinhole recipe takes exactly the code path (and bytes) it always did."""
    d = recipe["camera"].get("distortion")
    if d is None:
        return None
    k = tuple(float(d[key]) for key in DISTORTION_KEYS)
    return k if any(k) else None   # type: ignore[return-value]


def _distort(x: np.ndarray, y: np.ndarray, k: Distortion) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV / COLMAP OPENCV model: normalized undistorted (x, y) -> distorted (x_d, y_d)."""
    k1, k2, p1, p2, k3 = k
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return (x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
            y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y)


def _undistort(xd: np.ndarray, yd: np.ndarray, k: Distortion,
               tol: float = 1e-9, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `_distort` by vectorised Newton steps (the model has no closed-form inverse).

    Starts at the distorted point and stops when every residual is below `tol` (normalized
    units, ~1e-6 px). A solution must lie where the lens is one-to-one (positive radial factor
    and Jacobian): past the fold of a strong barrel a root exists but belongs to no real ray.
    """
    k1, k2, p1, p2, k3 = k
    xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
    x, y = xd.copy(), yd.copy()
    for _ in range(max_iter):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)                  # d radial / d r2
        j11 = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
        j22 = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
        j12 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y        # = j21
        det = j11 * j22 - j12 * j12
        fx_, fy_ = _distort(x, y, k)
        ex, ey = fx_ - xd, fy_ - yd
        if max(float(np.abs(ex).max()), float(np.abs(ey).max())) < tol:   # NaN never passes
            if np.all(radial > 0) and np.all(det > 0):
                return x, y
            break
        x = x - (j22 * ex - j12 * ey) / det
        y = y - (j11 * ey - j12 * ex) / det
    raise InputError("camera.distortion cannot be inverted over the image (no one-to-one undistorted ray)",
                     hint="use milder k1/k2/k3: the distorted radius must grow with the true radius "
                          "out to the image corners")


def _project(xc: np.ndarray, fx: float, fy: float, cx: float, cy: float,
             dist: Distortion | None) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points [k, 3] -> pixel (u, v), distorted when `dist` is given; needs z > 0."""
    if dist is None:
        return fx * xc[:, 0] / xc[:, 2] + cx, fy * xc[:, 1] / xc[:, 2] + cy
    xd, yd = _distort(xc[:, 0] / xc[:, 2], xc[:, 1] / xc[:, 2], dist)
    return fx * xd + cx, fy * yd + cy


def _pixel_dirs(shot: Shot, w: int, h: int, fx: float, fy: float, cx: float, cy: float,
                ss: int, dist: Distortion | None = None) -> np.ndarray:
    """Unit world directions of the ss x ss sub-pixel rays, row-major. [h*ss*w*ss, 3]"""
    u = (np.arange(w * ss, dtype=np.float64) + 0.5) / ss      # pixel coords, corner convention
    v = (np.arange(h * ss, dtype=np.float64) + 0.5) / ss
    xc = ((u - cx) / fx)[None, :].repeat(h * ss, 0)
    yc = ((v - cy) / fy)[:, None].repeat(w * ss, 1)
    if dist is not None:
        xc, yc = _undistort(xc, yc, dist)   # a distorted pixel sees along its undistorted ray
    dc = np.stack([xc, yc, np.ones_like(xc)], -1).reshape(-1, 3)  # [N, 3] camera frame
    dw = dc @ shot.R                                              # R^T d, row-vector form
    dw /= np.linalg.norm(dw, axis=1, keepdims=True)
    return dw.astype(F32)


# ---------------------------------------------------------------------------
# Scene construction


@dataclass
class Scene:
    """Rasters and object tables; every array is in the local frame (rows = +y, i.e. south->north)."""

    half: float
    cell: float
    n: int
    terrain: np.ndarray            # [n, n] z of the bare ground at cell centres
    soft: np.ndarray               # [n, n] terrain + canopy
    soft_flat: np.ndarray          # [n*n] view of soft
    terrain_flat: np.ndarray       # [n*n]
    bid_flat: np.ndarray           # [n*n] int16 building id per cell (footprint dilated), -1 none
    tid_flat: np.ndarray           # [n*n] int16 tree id per cell, -1 none
    shade_soft: np.ndarray         # [n*n] Lambert factor of the soft surface (tree canopies)
    ground: _Mip                   # RGB radiance of the ground (albedo x shading x ambient occlusion)
    noise: _Mip                    # periodic generic noise (facades, roofs)
    leaf: _Mip                     # periodic leafy noise (canopies)
    levels: list[tuple[float, int, np.ndarray]]   # (cell_m, n, flat max-height grid)
    zmin: float
    zmax: float
    b: dict[str, np.ndarray]       # building table, one row per building
    t: dict[str, np.ndarray]       # tree table
    gcps: np.ndarray               # [k, 3] target centres (local)
    gcp_half: float
    sun: np.ndarray                # [3] unit vector towards the sun
    ambient: float
    fine_step: float


def _road_offsets(roads: dict[str, Any], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed offsets from the nearest N-S road centreline (ax) and E-W one (ay)."""
    sx, sy = (float(v) for v in roads["spacing_m"])
    ox, oy = (float(v) for v in roads["offset_m"])
    ax = np.mod(x - ox + sx / 2, sx) - sx / 2
    ay = np.mod(y - oy + sy / 2, sy) - sy / 2
    return ax, ay


def _grid_centres(x0: float, cell: float, n: int) -> np.ndarray:
    """Coordinates of the n cell centres of a raster starting at x0. [n]"""
    return (x0 + (np.arange(n) + 0.5) * cell).astype(F32)


def _rect_window(x0: float, cell: float, n: int, cx: float, cy: float, c: float, s: float,
                 hu: float, hv: float, pad: float) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    """Cells of a raster whose centres lie in a rotated rectangle dilated by pad.

    Returns (rows, cols, mask [r, c], u [r, c], v [r, c]) with u, v the local coordinates.
    """
    r = math.hypot(hu, hv) + pad + cell
    j0, j1 = max(0, int((cx - r - x0) / cell)), min(n, int((cx + r - x0) / cell) + 2)
    i0, i1 = max(0, int((cy - r - x0) / cell)), min(n, int((cy + r - x0) / cell) + 2)
    xs = _grid_centres(x0, cell, n)[j0:j1] - F32(cx)
    ys = _grid_centres(x0, cell, n)[i0:i1] - F32(cy)
    u = xs[None, :] * F32(c) + ys[:, None] * F32(s)
    v = -xs[None, :] * F32(s) + ys[:, None] * F32(c)
    mask = (np.abs(u) <= hu + pad) & (np.abs(v) <= hv + pad)
    return slice(i0, i1), slice(j0, j1), mask, u, v


def _disc_window(x0: float, cell: float, n: int, cx: float, cy: float,
                 r: float) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    """Cells within distance r of (cx, cy): (rows, cols, mask, dx, dy)."""
    j0, j1 = max(0, int((cx - r - x0) / cell)), min(n, int((cx + r - x0) / cell) + 2)
    i0, i1 = max(0, int((cy - r - x0) / cell)), min(n, int((cy + r - x0) / cell) + 2)
    dx = _grid_centres(x0, cell, n)[j0:j1][None, :] - F32(cx)
    dy = _grid_centres(x0, cell, n)[i0:i1][:, None] - F32(cy)
    mask = dx * dx + dy * dy <= r * r
    return slice(i0, i1), slice(j0, j1), mask, dx + 0 * dy, dy + 0 * dx


# occupancy bits of the 0.5 m layout raster
_OCC_ROAD, _OCC_PLAZA, _OCC_BUILDING, _OCC_TREE = 1, 2, 4, 8


def _layout(recipe: dict[str, Any], rng: np.random.Generator, shots: list[Shot],
            terrain_at: Any) -> dict[str, Any]:
    """Place plazas, GCP targets, buildings and trees without overlaps (rejection sampling)."""
    half = float(recipe["scene"]["half_size_m"])
    roads = recipe["roads"]
    occ_cell = 0.5
    on = int(round(2 * half / occ_cell))
    xs = _grid_centres(-half, occ_cell, on)
    ax, ay = _road_offsets(roads, xs[None, :], xs[:, None])
    road_half = float(roads["width_m"]) / 2 + float(roads["sidewalk_m"])
    occ = np.zeros((on, on), np.uint8)
    occ[(np.abs(ax) < road_half + 1.0) | (np.abs(ay) < road_half + 1.0)] |= _OCC_ROAD

    def free(win: tuple[slice, slice, np.ndarray, Any, Any], bits: int) -> bool:
        rows, cols, mask = win[0], win[1], win[2]
        return not np.any(occ[rows, cols][mask] & bits)

    def mark(win: tuple[slice, slice, np.ndarray, Any, Any], bit: int) -> None:
        sub = occ[win[0], win[1]]   # a view: slices only
        sub[win[2]] |= bit

    margin = 4.0
    lo, hi = -half + margin, half - margin

    # plazas: paved squares, kept free of buildings and trees
    plazas = []
    pz = recipe["plazas"]
    for _ in range(200):
        if len(plazas) >= int(pz["count"]):
            break
        a, b = (float(rng.uniform(*pz["size_m"])) / 2 for _ in range(2))
        cx, cy = (float(rng.uniform(lo + 10, hi - 10)) for _ in range(2))
        win = _rect_window(-half, occ_cell, on, cx, cy, 1.0, 0.0, a, b, 0.5)
        if free(win, _OCC_ROAD | _OCC_PLAZA):
            mark(win, _OCC_PLAZA)
            plazas.append((cx, cy, a, b))

    # GCP targets: well spread over the nadir coverage, on open ground away from roads
    nad = np.array([s.center[:2] for s in shots if not s.oblique])
    cxm, cym = nad.mean(0)
    rx = max(5.0, (nad[:, 0].max() - nad[:, 0].min()) / 2 * 0.85 + 8.0)
    ry = max(5.0, (nad[:, 1].max() - nad[:, 1].min()) / 2 * 0.85 + 8.0)
    k = int(recipe["gcps"]["count"])
    want = []
    ring = k - 1 if k >= 5 else k
    for i in range(ring):
        ang = 2 * math.pi * (i + 0.5) / ring
        want.append((cxm + rx * math.cos(ang), cym + ry * math.sin(ang)))
    if ring < k:
        want.append((cxm, cym))
    offsets = sorted(((dx, dy) for dx in np.arange(-20, 20.01, 0.5) for dy in np.arange(-20, 20.01, 0.5)),
                     key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))
    gcps: list[tuple[float, float]] = []
    for wx, wy in want:
        for dx, dy in offsets:
            px, py = float(wx + dx), float(wy + dy)
            if not (lo < px < hi and lo < py < hi):
                continue
            if any(math.hypot(px - g[0], py - g[1]) < 10.0 for g in gcps):
                continue
            if free(_disc_window(-half, occ_cell, on, px, py, 2.5), _OCC_ROAD):
                gcps.append((px, py))
                break
        else:
            raise InputError(f"could not place GCP target near ({wx:.0f}, {wy:.0f})",
                             hint="reduce gcps.count or widen the road spacing")

    # buildings
    bcfg = recipe["buildings"]
    gap = float(bcfg["gap_m"])
    rows: list[dict[str, Any]] = []
    for _ in range(int(bcfg["count"]) * 200):
        if len(rows) >= int(bcfg["count"]):
            break
        length = float(rng.uniform(*bcfg["length_m"]))
        width = min(float(rng.uniform(*bcfg["width_m"])), length)
        phi = (math.pi / 2 if rng.uniform() < 0.5 else 0.0) + math.radians(
            float(rng.uniform(-1, 1)) * float(bcfg["rotation_jitter_deg"]))
        cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        c, s = math.cos(phi), math.sin(phi)
        hu, hv = length / 2, width / 2
        if max(abs(cx) + hu + hv, abs(cy) + hu + hv) > hi:
            continue
        if any(math.hypot(cx - g[0], cy - g[1]) < math.hypot(hu, hv) + 6.0 for g in gcps):
            continue
        win = _rect_window(-half, occ_cell, on, cx, cy, c, s, hu, hv, gap / 2)
        if not free(win, _OCC_ROAD | _OCC_PLAZA | _OCC_BUILDING):
            continue
        mark(win, _OCC_BUILDING)
        rows.append(dict(cx=cx, cy=cy, phi=phi, hu=hu, hv=hv))
    b = _building_table(rows, bcfg, rng, terrain_at)

    # trees
    tcfg = recipe["trees"]
    trees: list[tuple[float, float, float, float]] = []
    for _ in range(int(tcfg["count"]) * 60):
        if len(trees) >= int(tcfg["count"]):
            break
        r = float(rng.uniform(*tcfg["radius_m"]))
        ht = float(rng.uniform(*tcfg["height_m"]))
        cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        if any(math.hypot(cx - g[0], cy - g[1]) < 1.2 * r + 4.0 for g in gcps):
            continue
        win = _disc_window(-half, occ_cell, on, cx, cy, 1.2 * r + 0.4)
        if not free(win, _OCC_ROAD | _OCC_PLAZA | _OCC_BUILDING | _OCC_TREE):
            continue
        mark(win, _OCC_TREE)
        trees.append((cx, cy, r, ht))
    bmask = (occ & _OCC_BUILDING) > 0
    return dict(plazas=plazas, gcps=gcps, b=b, trees=trees, occ_cell=occ_cell, bmask=bmask)


_WALL_PALETTE = np.array([[0.86, 0.81, 0.70], [0.90, 0.89, 0.86], [0.80, 0.64, 0.43],
                          [0.84, 0.68, 0.63], [0.66, 0.66, 0.68], [0.62, 0.36, 0.27],
                          [0.74, 0.78, 0.70], [0.93, 0.86, 0.62]], F32)
_TILE_PALETTE = np.array([[0.66, 0.30, 0.20], [0.52, 0.28, 0.20], [0.33, 0.32, 0.34],
                          [0.58, 0.40, 0.30], [0.45, 0.20, 0.16]], F32)
_FLAT_PALETTE = np.array([[0.46, 0.46, 0.45], [0.32, 0.32, 0.34], [0.55, 0.52, 0.47],
                          [0.40, 0.42, 0.40]], F32)


def _building_table(rows: list[dict[str, Any]], bcfg: dict[str, Any], rng: np.random.Generator,
                    terrain_at: Any) -> dict[str, np.ndarray]:
    """Heights, roof shapes, colours and facade/roof details for the placed footprints."""
    nb = len(rows)
    tb: dict[str, list[Any]] = {k: [] for k in (
        "cx", "cy", "c", "s", "hu", "hv", "ground", "eave", "rise", "gable", "wall", "roof",
        "floor_h", "win_w", "win_h", "win_sp", "sill", "glass", "feat")}
    hlo, hhi = (float(v) for v in bcfg["height_m"])
    for row in rows:
        ground = float(terrain_at(row["cx"], row["cy"]))
        total = hlo + (hhi - hlo) * float(rng.uniform()) ** 1.2
        gable = bool(rng.uniform() < float(bcfg["gable_fraction"]))
        rise = 0.0
        if gable:
            pitch = math.radians(float(rng.uniform(*bcfg["roof_pitch_deg"])))
            rise = min(row["hv"] * math.tan(pitch), max(total - 3.0, 0.8))
        eave_h = total - rise
        tb["cx"].append(row["cx"]); tb["cy"].append(row["cy"])
        tb["c"].append(math.cos(row["phi"])); tb["s"].append(math.sin(row["phi"]))
        tb["hu"].append(row["hu"]); tb["hv"].append(row["hv"])
        tb["ground"].append(ground); tb["eave"].append(ground + eave_h); tb["rise"].append(rise)
        tb["gable"].append(1.0 if gable else 0.0)
        tb["wall"].append(_WALL_PALETTE[rng.integers(len(_WALL_PALETTE))] * F32(rng.uniform(0.92, 1.05)))
        pal = _TILE_PALETTE if gable else _FLAT_PALETTE
        tb["roof"].append(pal[rng.integers(len(pal))] * F32(rng.uniform(0.9, 1.1)))
        tb["floor_h"].append(float(rng.uniform(2.8, 3.4)))
        tb["win_w"].append(float(rng.uniform(0.9, 1.6)))
        tb["win_h"].append(float(rng.uniform(1.1, 1.6)))
        tb["win_sp"].append(float(rng.uniform(2.3, 3.4)))
        tb["sill"].append(float(rng.uniform(0.8, 1.0)))
        tb["glass"].append(np.array([0.16, 0.20, 0.26], F32) * F32(rng.uniform(0.8, 1.3)))
        # up to 3 roof features (skylights / roof-top units) as (u, v, half_u, half_v) in metres
        feats = np.zeros((3, 4), F32)
        for j in range(int(rng.integers(1, 4))):
            fu = float(rng.uniform(0.4, 1.4)) if not gable else float(rng.uniform(0.35, 0.6))
            fv = float(rng.uniform(0.4, 1.2)) if not gable else float(rng.uniform(0.45, 0.7))
            umax = row["hu"] - fu - 0.8
            vmax = row["hv"] - fv - 0.8
            if umax <= 0 or vmax <= 0:
                continue
            uc = float(rng.uniform(-umax, umax))
            vc = float(rng.uniform(0.3 + fv, vmax)) * (1 if rng.uniform() < 0.5 else -1) if gable \
                else float(rng.uniform(-vmax, vmax))
            if gable and 0.3 + fv >= vmax:
                continue
            feats[j] = (uc, vc, fu, fv)
        tb["feat"].append(feats)
    out: dict[str, np.ndarray] = {}
    for k, vals in tb.items():
        if k in ("wall", "roof", "glass"):
            out[k] = np.array(vals, F32).reshape(nb, 3)
        elif k == "feat":
            out[k] = np.array(vals, F32).reshape(nb, 3, 4)
        else:
            out[k] = np.array(vals, F32).reshape(nb)
    return out


def build_scene(recipe: dict[str, Any], shots: list[Shot]) -> Scene:
    """Terrain, layout, canopy, textures and skip grids: everything the renderer samples."""
    seeds = np.random.SeedSequence(int(recipe["seed"])).spawn(8)
    rng_terrain, rng_layout, rng_tex, rng_tree, rng_detail = (np.random.default_rng(s) for s in seeds[:5])
    half = float(recipe["scene"]["half_size_m"])
    cell = float(recipe["scene"]["texture_cell_m"])
    n = int(round(2 * half / cell))
    if n % 16:
        raise InputError("2 * scene.half_size_m / scene.texture_cell_m must be a multiple of 16")
    xs = _grid_centres(-half, cell, n)            # [n] cell-centre coordinates (x and y alike)

    # terrain: gentle fractal hills, zero at the take-off point (origin)
    ter = recipe["terrain"]
    t_raw = _fbm(rng_terrain, n, n, cell, float(ter["wavelength_m"]), 3, gain=0.45)
    t_raw = (t_raw - t_raw.min()) / max(float(t_raw.max() - t_raw.min()), 1e-6) * F32(ter["relief_m"])
    c0 = n // 2
    t_raw -= F32(t_raw[c0 - 1:c0 + 1, c0 - 1:c0 + 1].mean())   # bilinear value at (0, 0)
    terrain = t_raw.astype(F32)                                  # [n, n]

    def terrain_at(x: float, y: float) -> float:
        gx, gy = (x + half) / cell - 0.5, (y + half) / cell - 0.5
        j, i = int(np.clip(gx, 0, n - 2)), int(np.clip(gy, 0, n - 2))
        fx, fy = gx - j, gy - i
        q = terrain[i:i + 2, j:j + 2].astype(float)
        return float((q[0, 0] * (1 - fx) + q[0, 1] * fx) * (1 - fy) + (q[1, 0] * (1 - fx) + q[1, 1] * fx) * fy)

    lay = _layout(recipe, rng_layout, shots, terrain_at)
    b = lay["b"]

    # tree canopies (lobed domes with leafy bumps) and ids
    canopy = np.zeros((n, n), F32)
    tid = np.full((n, n), -1, np.int16)
    bumps = _fbm(rng_tree, n, n, cell, 1.6, 3, gain=0.6)           # [n, n]
    tt: dict[str, list[Any]] = {"cx": [], "cy": [], "r": [], "ht": [], "tint": []}
    tints = np.array([[0.24, 0.40, 0.13], [0.13, 0.27, 0.12], [0.34, 0.43, 0.16],
                      [0.20, 0.33, 0.16], [0.36, 0.36, 0.14]], F32)
    for k, (cx, cy, r, ht) in enumerate(lay["trees"]):
        rows, cols, mask, dx, dy = _disc_window(-half, cell, n, cx, cy, 1.2 * r)
        ang = np.arctan2(dy, dx)
        p1, p2 = rng_tree.uniform(0, 2 * np.pi, 2)
        reff = r * (1 + 0.09 * np.sin(3 * ang + p1) + 0.06 * np.sin(7 * ang + p2))
        q = np.clip(1 - (dx * dx + dy * dy) / (reff * reff), 0, None)
        c = ht * q ** 0.55 + 0.45 * bumps[rows, cols] * np.sqrt(q)
        c = np.where((q > 0) & mask, np.maximum(c, 0.05), 0).astype(F32)
        sub_c, sub_t = canopy[rows, cols], tid[rows, cols]
        better = c > sub_c
        sub_c[better] = c[better]
        sub_t[better] = k
        tt["cx"].append(cx); tt["cy"].append(cy); tt["r"].append(r); tt["ht"].append(ht)
        tt["tint"].append(tints[rng_tree.integers(len(tints))] * F32(rng_tree.uniform(0.85, 1.15)))
    trees = {k: np.array(v, F32) for k, v in tt.items()}
    if len(lay["trees"]) == 0:
        trees["tint"] = np.zeros((0, 3), F32)
    soft = (terrain + canopy).astype(F32)

    # building-id raster (footprint dilated by 0.75 cell so a nearest-cell lookup never misses)
    # and a conservative building-top raster for the skip grids
    bid = np.full((n, n), -1, np.int16)
    btop = np.full((n, n), -np.inf, F32)
    for k in range(b["cx"].size):
        rows, cols, mask, _, _ = _rect_window(-half, cell, n, float(b["cx"][k]), float(b["cy"][k]),
                                              float(b["c"][k]), float(b["s"][k]),
                                              float(b["hu"][k]), float(b["hv"][k]), 0.75 * cell)
        sub = bid[rows, cols]
        sub[mask] = k
        top = btop[rows, cols]
        top[mask] = b["eave"][k] + b["rise"][k]
    zmin = float(terrain.min()) - 0.5
    zmax = float(max(soft.max(), btop.max())) + 0.05

    # conservative max-height grids for empty-space skipping: every point of a
    # coarse cell's 3x3 neighbourhood, including bilinear support, is below the value
    base = np.maximum(ndi.maximum_filter(soft, size=3, mode="nearest"), btop)
    levels = []
    for size in MAX_SKIP_LEVELS_M:
        f = max(1, int(round(size / cell)))
        nl = -(-n // f)
        pad = nl * f - n
        pooled = np.pad(base, ((0, pad), (0, pad)), mode="edge").reshape(nl, f, nl, f).max(axis=(1, 3))
        grid = ndi.maximum_filter(pooled, size=3, mode="nearest") + F32(0.01)
        levels.append((f * cell, nl, np.ascontiguousarray(grid, F32).ravel()))

    sun_az, sun_el = math.radians(float(recipe["sun"]["azimuth_deg"])), math.radians(float(recipe["sun"]["elevation_deg"]))
    sun = np.array([math.sin(sun_az) * math.cos(sun_el), math.cos(sun_az) * math.cos(sun_el),
                    math.sin(sun_el)], F32)
    ambient = float(recipe["sun"]["ambient"])

    def shade_of(height: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(height, cell)
        nrm = np.stack([-gx, -gy, np.ones_like(gx)], -1)
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
        return (ambient + (1 - ambient) * np.maximum(nrm @ sun, 0)).astype(F32)   # [n, n]

    shade_soft = shade_of(soft)
    ground_rgb = _ground_texture(recipe, rng_tex, rng_detail, xs, cell, lay)   # [n, n, 3]
    ground_rgb *= shade_of(terrain)[..., None]

    # periodic detail textures
    rng_noise = np.random.default_rng(seeds[5])
    nz = 512
    noise = (_fbm(rng_noise, nz, nz, 0.05, 3.2, 5, gain=0.6, periodic=True) * 1.6).astype(F32)
    rng_leaf = np.random.default_rng(seeds[6])
    leaf = _fbm(rng_leaf, nz, nz, 0.04, 0.8, 3, gain=0.7, periodic=True)
    leaf = np.clip(0.5 + 1.4 * leaf, 0, 1) ** 1.3
    leaf = (leaf * 0.75 + 0.25 * _smoothstep(-0.5, 0.5, _fbm(rng_leaf, nz, nz, 0.04, 2.5, 2, periodic=True)))

    g = recipe["gcps"]
    gcps = np.array([[x, y, terrain_at(x, y)] for x, y in lay["gcps"]], float).reshape(-1, 3)
    return Scene(
        half=half, cell=cell, n=n, terrain=terrain, soft=soft,
        soft_flat=soft.ravel(), terrain_flat=terrain.ravel(), bid_flat=bid.ravel(), tid_flat=tid.ravel(),
        shade_soft=shade_soft.ravel(),
        ground=_Mip(ground_rgb, cell, -half, periodic=False, levels=5),
        noise=_Mip(noise, 0.05, 0.0, periodic=True, levels=6),
        leaf=_Mip(leaf.astype(F32), 0.04, 0.0, periodic=True, levels=6),
        levels=levels, zmin=zmin, zmax=zmax, b=b, t=trees, gcps=gcps,
        gcp_half=float(g["size_m"]) / 2, sun=sun, ambient=ambient,
        fine_step=float(recipe["render"]["fine_step_m"]),
    )


def _ground_texture(recipe: dict[str, Any], rng: np.random.Generator, rng_detail: np.random.Generator,
                    xs: np.ndarray, cell: float, lay: dict[str, Any]) -> np.ndarray:
    """Albedo x ambient occlusion of grass, dirt, asphalt with markings, sidewalks, plazas. [n, n, 3]"""
    n = xs.size
    half = float(recipe["scene"]["half_size_m"])
    roads = recipe["roads"]
    w2 = float(roads["width_m"]) / 2
    sw = float(roads["sidewalk_m"])
    X, Y = xs[None, :], xs[:, None]                 # broadcast to [n, n]
    ax, ay = _road_offsets(roads, X, Y)              # [n, n]

    # grass: hue drifts lush<->dry, mid-scale tufts, per-cell grain
    g_low = _fbm(rng, n, n, cell, 30.0, 3)
    g_mid = _fbm(rng, n, n, cell, 3.0, 4, gain=0.6)
    grain = rng.uniform(-1, 1, (n, n)).astype(F32)
    lush, dry, dark = (np.array(c, F32) for c in ([0.25, 0.42, 0.14], [0.52, 0.52, 0.26], [0.12, 0.24, 0.09]))
    t = np.clip(0.5 + 1.6 * g_low, 0, 1)[..., None]
    rgb = lush + t * (dry - lush)                                               # [n, n, 3]
    rgb += np.clip(-1.8 * g_mid, 0, 0.7)[..., None] * (dark - rgb)
    rgb *= (1 + 0.28 * g_mid + 0.12 * grain)[..., None]
    dirt_m = _smoothstep(0.2, 0.35, _fbm(rng, n, n, cell, 14.0, 4, gain=0.55))[..., None]
    dirt = np.array([0.50, 0.40, 0.29], F32) * (1 + 0.25 * g_mid + 0.15 * grain)[..., None]
    rgb += dirt_m * (dirt - rgb)
    del g_low, t, dirt_m, dirt

    # sidewalks: paving slabs 0.6 m with per-slab tone and joints
    side = ((np.abs(ax) < w2 + sw) | (np.abs(ay) < w2 + sw))
    slab_i, slab_j = np.floor(Y / 0.6), np.floor(X / 0.6)
    tone = 0.88 + 0.24 * _hash01(slab_i, slab_j)
    jx = np.mod(X, 0.6)
    jy = np.mod(Y, 0.6)
    joint = np.maximum(_box(jx, 0, 0.04, F32(cell)) + _box(jx, 0.56, 0.6, F32(cell)),
                       _box(jy, 0, 0.04, F32(cell)) + _box(jy, 0.56, 0.6, F32(cell)))
    pave = np.array([0.63, 0.61, 0.57], F32) * (tone * (1 - 0.35 * joint) * (1 + 0.06 * grain))[..., None]
    rgb = np.where(side[..., None], pave, rgb)
    del pave, joint, tone, slab_i, slab_j

    # plazas: large stone tiles
    for cx, cy, a, bb in lay["plazas"]:
        rows, cols, mask, u, v = _rect_window(-half, cell, n, cx, cy, 1.0, 0.0, a, bb, 0.0)
        ti, tj = np.floor(v / 1.2), np.floor(u / 1.2)
        tone = 0.8 + 0.35 * _hash01(ti, tj, np.full_like(ti, 7))
        jj = np.minimum(np.mod(u, 1.2), np.mod(v, 1.2))
        col = np.array([0.72, 0.67, 0.60], F32) * (tone * (1 - 0.4 * _box(jj, 0, 0.06, F32(cell))))[..., None]
        sub = rgb[rows, cols]
        sub[mask] = col[mask]

    # asphalt with stains, speckle, repair patches
    road = (np.abs(ax) < w2) | (np.abs(ay) < w2)
    stains = _fbm(rng, n, n, cell, 8.0, 3)
    patch = _smoothstep(0.32, 0.36, _fbm(rng, n, n, cell, 5.0, 2))
    asph = np.array([0.25, 0.25, 0.27], F32) * ((1 + 0.22 * stains + 0.16 * grain) * (1 - 0.28 * patch))[..., None]
    # markings (anti-aliased by coverage): dashed centre line, edge lines, zebra crossings
    cw = F32(cell)
    ns_road = (np.abs(ax) < w2) & (np.abs(ay) >= w2)
    ew_road = (np.abs(ay) < w2) & (np.abs(ax) >= w2)
    far_ns = np.abs(ay) > w2 + sw + 4.0
    far_ew = np.abs(ax) > w2 + sw + 4.0
    dash_ns = _box(ax, -0.08, 0.08, cw) * _box(np.mod(Y, 6.0), 0.0, 3.0, cw) * far_ns
    dash_ew = _box(ay, -0.08, 0.08, cw) * _box(np.mod(X, 6.0), 0.0, 3.0, cw) * far_ew
    edge_ns = (_box(np.abs(ax), w2 - 0.45, w2 - 0.3, cw)) * (np.abs(ay) > w2 + sw)
    edge_ew = (_box(np.abs(ay), w2 - 0.45, w2 - 0.3, cw)) * (np.abs(ax) > w2 + sw)
    zeb_ns = _box(np.abs(ay), w2 + sw + 0.5, w2 + sw + 3.5, cw) * _box(np.mod(ax, 1.0), 0.0, 0.5, cw) \
        * _box(np.abs(ax), -1, w2 - 0.6, cw)
    zeb_ew = _box(np.abs(ax), w2 + sw + 0.5, w2 + sw + 3.5, cw) * _box(np.mod(ay, 1.0), 0.0, 0.5, cw) \
        * _box(np.abs(ay), -1, w2 - 0.6, cw)
    paint = np.maximum.reduce([dash_ns * ns_road, dash_ew * ew_road, edge_ns * ns_road, edge_ew * ew_road,
                               zeb_ns * ns_road, zeb_ew * ew_road])
    paint *= 0.8 + 0.2 * np.clip(0.5 + stains + 0.5 * grain, 0, 1)
    asph += paint[..., None] * (np.array([0.88, 0.88, 0.85], F32) - asph)
    rgb = np.where(road[..., None], asph, rgb)
    del asph, paint, stains, patch

    # kerbs
    kerb = np.maximum(_box(np.abs(ax), w2 - 0.02, w2 + 0.16, cw) * (np.abs(ay) > w2),
                      _box(np.abs(ay), w2 - 0.02, w2 + 0.16, cw) * (np.abs(ax) > w2))
    rgb += kerb[..., None] * (np.array([0.78, 0.77, 0.74], F32) - rgb)

    # manholes: dark rings with a lighter lid on the roads
    mh = int(roads["manholes"])
    sx, sy = (float(v) for v in roads["spacing_m"])
    ox, oy = (float(v) for v in roads["offset_m"])
    for i in range(mh):
        if rng_detail.uniform() < 0.5:
            k = rng_detail.integers(-int(half // sx) - 1, int(half // sx) + 2)
            cx, cy = ox + k * sx + rng_detail.uniform(-1.8, 1.8), rng_detail.uniform(-half, half)
        else:
            k = rng_detail.integers(-int(half // sy) - 1, int(half // sy) + 2)
            cx, cy = rng_detail.uniform(-half, half), oy + k * sy + rng_detail.uniform(-1.8, 1.8)
        rows, cols, mask, dx, dy = _disc_window(-half, cell, n, float(cx), float(cy), 0.45)
        rr = np.sqrt(dx * dx + dy * dy)
        lid = np.clip((0.36 - rr) / cell + 0.5, 0, 1)[..., None]
        ring = np.clip((0.45 - rr) / cell + 0.5, 0, 1)[..., None]
        sub = rgb[rows, cols]
        sub += ring * (np.array([0.12, 0.12, 0.13], F32) - sub)
        sub += lid * (np.array([0.38, 0.37, 0.36], F32) * (1 + 0.2 * float(rng_detail.uniform(-1, 1))) - sub)

    # soft ambient darkening near building walls (from the 0.5 m layout raster)
    bm = lay["bmask"]
    dist = ndi.distance_transform_edt(~bm) * lay["occ_cell"]
    ao = (1 - 0.38 * np.exp(-dist / 1.6)).astype(F32)
    ao = ndi.zoom(ao, n / ao.shape[0], order=1, mode="nearest", grid_mode=True)
    rgb *= ao[..., None]
    return np.clip(rgb, 0, 1).astype(F32)


# ---------------------------------------------------------------------------
# Height function (shared by rendering and the DSM)


def _bilinear(flat: np.ndarray, n: int, x0: float, cell: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of a square cell-centred raster; clamps outside."""
    inv = F32(1.0 / cell)
    gx = (x - F32(x0)) * inv - F32(0.5)
    gy = (y - F32(x0)) * inv - F32(0.5)
    np.clip(gx, 0, n - 1.001, out=gx)
    np.clip(gy, 0, n - 1.001, out=gy)
    ix, iy = gx.astype(np.int32), gy.astype(np.int32)
    fx, fy = gx - ix, gy - iy
    i = iy * n + ix
    a, b = np.take(flat, i), np.take(flat, i + 1)
    c, d = np.take(flat, i + n), np.take(flat, i + n + 1)
    top = a + fx * (b - a)
    return top + fy * (c + fx * (d - c) - top)


def _nearest(flat: np.ndarray, sc: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value of the raster cell containing each point (ids)."""
    inv = F32(1.0 / sc.cell)
    gx = np.clip((x + F32(sc.half)) * inv, 0, sc.n - 1).astype(np.int32)
    gy = np.clip((y + F32(sc.half)) * inv, 0, sc.n - 1).astype(np.int32)
    return np.take(flat, gy * sc.n + gx)


def _soft_height(sc: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain + canopy z at local points (bilinear). [N]"""
    return _bilinear(sc.soft_flat, sc.n, -sc.half, sc.cell, x, y)


def _terrain_height(sc: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bare-ground z at local points (bilinear): the DTM's function. [N]"""
    return _bilinear(sc.terrain_flat, sc.n, -sc.half, sc.cell, x, y)


def _roof_height(sc: Scene, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roof z where a building covers (x, y), else -inf; and the building id (-1 none). [N], [N]"""
    bid = _nearest(sc.bid_flat, sc, x, y).astype(np.int32)
    roof = np.full(x.shape, -np.inf, F32)
    k = np.nonzero(bid >= 0)[0]
    if k.size:
        b = sc.b
        i = bid[k]
        dx, dy = x[k] - b["cx"][i], y[k] - b["cy"][i]
        c, s = b["c"][i], b["s"][i]
        u = dx * c + dy * s
        v = -dx * s + dy * c
        hv = b["hv"][i]
        inside = (np.abs(u) <= b["hu"][i]) & (np.abs(v) <= hv)
        z = b["eave"][i] + b["rise"][i] * (1 - np.abs(v) / hv)
        roof[k] = np.where(inside, z, -np.inf)
    return roof, bid


def surface_height(sc: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Top surface z (terrain, canopies, roofs) at local (x, y): the renderer's and the DSM's function."""
    return np.maximum(_soft_height(sc, x, y), _roof_height(sc, x, y)[0])


# ---------------------------------------------------------------------------
# Ray casting


def _origin_rows(o: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Origins of the selected rays: a shared one [3] (a photo's centre) as is, per-ray ones [N, 3] indexed."""
    return o if o.ndim == 1 else o[sel]


def _origin_xyz(o: np.ndarray) -> tuple[Any, Any, Any]:
    """(ox, oy, oz) in float32: scalars for a shared origin [3], columns [N] for per-ray origins [N, 3].

    A shared origin keeps the scalar arithmetic of the photos, so their pixels do not change.
    """
    if o.ndim == 1:
        return F32(o[0]), F32(o[1]), F32(o[2])
    o = o.astype(F32, copy=False)
    return o[:, 0], o[:, 1], o[:, 2]


def _trace(sc: Scene, origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First crossing of each ray with the heightfield, bracketed: (t_lo free, t_hi solid, hit).

    `origin` is one point [3] for all rays or one per ray [N, 3]. Empty space is
    skipped using the max-height grids (a ray above a grid cell's bound can advance
    until it leaves the cell's radius or reaches the bound); otherwise the ray takes
    a fine step of <= fine_step horizontally and tests the exact height.
    Heightfields are solid below, so vertical step size is free (a vertical ray
    takes one step to the bottom of the scene).
    """
    n = d.shape[0]
    t_lo = np.zeros(n, F32)
    t_hi = np.zeros(n, F32)
    hit = np.zeros(n, bool)
    dz_all = d[:, 2]
    idx = np.nonzero(dz_all < -1e-4)[0]
    o = _origin_rows(origin, idx)                 # origins of the rays still marching
    ox, oy, oz = _origin_xyz(o)
    dx, dy, dz = d[idx, 0].copy(), d[idx, 1].copy(), dz_all[idx].copy()
    inv_nz = F32(1.0) / -dz
    inv_dxy = F32(1.0) / np.maximum(np.hypot(dx, dy), F32(1e-6))
    t = np.maximum((oz - F32(sc.zmax)) * inv_nz, F32(0))
    t_end = (oz - F32(sc.zmin)) * inv_nz
    tf = F32(sc.fine_step) * inv_dxy
    half = F32(sc.half)
    lv = [(F32(c), F32(1.0 / c), nl, flat) for c, nl, flat in sc.levels]
    for _ in range(100000):
        if idx.size == 0:
            break
        x = ox + t * dx
        y = oy + t * dy
        z = oz + t * dz
        xs, ys = x + half, y + half
        best = np.zeros_like(t)
        for c, inv_c, nl, flat in lv:
            gx = xs * inv_c
            gy = ys * inv_c
            np.clip(gx, 0, nl - 1, out=gx)
            np.clip(gy, 0, nl - 1, out=gy)
            m = np.take(flat, gy.astype(np.int32) * nl + gx.astype(np.int32))
            a = np.minimum(c * inv_dxy, (z - m) * inv_nz)
            np.maximum(best, a, out=best)
        step = np.minimum(tf, t_end - t)
        skip = best > step
        t += np.where(skip, best, F32(0))
        fi = np.nonzero(~skip)[0]
        done = np.zeros(idx.size, bool)
        if fi.size:
            tn = t[fi] + step[fi]
            qx, qy, qz = _origin_xyz(_origin_rows(o, fi))
            px, py, pz = qx + tn * dx[fi], qy + tn * dy[fi], qz + tn * dz[fi]
            solid = pz < surface_height(sc, px, py)
            h = fi[solid]
            gi = idx[h]
            t_lo[gi] = t[h]
            t_hi[gi] = tn[solid]
            hit[gi] = True
            t[fi] = tn
            done[fi[solid | (tn >= t_end[fi] - F32(1e-4))]] = True
        if done.any():
            keep = ~done
            idx, t, dx, dy, dz = idx[keep], t[keep], dx[keep], dy[keep], dz[keep]
            inv_nz, inv_dxy, t_end, tf = inv_nz[keep], inv_dxy[keep], t_end[keep], tf[keep]
            o = _origin_rows(o, keep)
            ox, oy, oz = _origin_xyz(o)
    return t_lo, t_hi, hit


def _refine_soft(sc: Scene, o: np.ndarray, d: np.ndarray, t_lo: np.ndarray, t_hi: np.ndarray,
                 iters: int = 6) -> np.ndarray:
    """Crossing with the (continuous) soft surface inside [t_lo, t_hi]: bisection + secant."""
    ox, oy, oz = _origin_xyz(o)
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]

    def f(t: np.ndarray) -> np.ndarray:
        return oz + t * dz - _soft_height(sc, ox + t * dx, oy + t * dy)

    lo, hi = t_lo.copy(), t_hi.copy()
    flo, fhi = f(lo), f(hi)
    for k in range(iters):
        if k % 2 == 0:
            tm = F32(0.5) * (lo + hi)
        else:
            den = flo - fhi
            tm = np.where(den > 1e-9, lo + (hi - lo) * flo / np.where(den > 1e-9, den, 1), 0.5 * (lo + hi))
            tm = np.clip(tm, lo + 0.02 * (hi - lo), hi - 0.02 * (hi - lo)).astype(F32)
        fm = f(tm)
        up = fm > 0
        lo = np.where(up, tm, lo)
        flo = np.where(up, fm, flo)
        hi = np.where(up, hi, tm)
        fhi = np.where(up, fhi, fm)
    den = flo - fhi
    return np.where(den > 1e-9, lo + (hi - lo) * flo / np.where(den > 1e-9, den, 1), hi).astype(F32)


# ---------------------------------------------------------------------------
# Materials


def _footprint(t: np.ndarray, px_angle: float, fp0: float) -> np.ndarray:
    """Width (m) of a ray sample at distance t, for texture filtering: fp0 + t * px_angle.

    A pinhole camera's samples spread with distance (fp0 = 0); the orthophoto's parallel
    rays keep their spacing (px_angle = 0).
    """
    return F32(fp0) + t * F32(px_angle)


def _shade_building(sc: Scene, o: np.ndarray, d: np.ndarray, bid: np.ndarray, t_hi: np.ndarray,
                    px_angle: float, fp0: float = 0.0) -> np.ndarray:
    """Exact wall/roof intersection of each ray with its building, then facade or roof colour. [N, 3]"""
    b = sc.b
    ox, oy, oz = (np.broadcast_to(v, bid.shape) for v in _origin_xyz(o))
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    c, s = b["c"][bid], b["s"][bid]
    hu, hv = b["hu"][bid], b["hv"][bid]
    eave, rise = b["eave"][bid], b["rise"][bid]
    # ray in building-local (u, v)
    ou = (ox - b["cx"][bid]) * c + (oy - b["cy"][bid]) * s
    ov = -(ox - b["cx"][bid]) * s + (oy - b["cy"][bid]) * c
    du = dx * c + dy * s
    dv = -dx * s + dy * c
    with np.errstate(divide="ignore", invalid="ignore"):
        tu = np.where(np.abs(du) > 1e-7, (-np.sign(du) * hu - ou) / du, -np.inf)
        tv = np.where(np.abs(dv) > 1e-7, (-np.sign(dv) * hv - ov) / dv, -np.inf)
    t_in = np.maximum(tu, tv)
    u_face = tu >= tv                                # entering through a +-u (gable end) face
    with np.errstate(invalid="ignore"):           # -inf * 0: no entry face (a vertical ray), NaN tests False
        u_in, v_in, z_in = ou + t_in * du, ov + t_in * dv, oz + t_in * dz
        roof_in = eave + rise * (1 - np.clip(np.abs(v_in), 0, hv) / hv)
    wall = np.isfinite(t_in) & (z_in < roof_in) & (t_in <= t_hi + 0.05)
    rgb = np.empty((bid.size, 3), F32)

    # walls
    w = np.nonzero(wall)[0]
    if w.size:
        i = bid[w]
        uf = u_face[w]
        side = np.where(uf, -np.sign(du[w]), -np.sign(dv[w])).astype(F32)
        along = np.where(uf, v_in[w] * side, -u_in[w] * side)
        half_len = np.where(uf, hv[w], hu[w])
        zr = z_in[w] - b["ground"][i]
        nrm_local_u = np.where(uf, side, 0).astype(F32)
        nrm_local_v = np.where(uf, 0, side).astype(F32)
        nrm = np.stack([nrm_local_u * c[w] - nrm_local_v * s[w], nrm_local_u * s[w] + nrm_local_v * c[w],
                        np.zeros_like(side)], -1)
        cos_inc = np.maximum(np.abs((nrm * d[w]).sum(1)), 0.15)
        fp = (_footprint(t_in[w], px_angle, fp0) / cos_inc).astype(F32)
        face = uf.astype(np.int32) * 2 + (side > 0)
        col = _facade(sc, i, face, along.astype(F32), zr.astype(F32), half_len,
                      (eave[w] - b["ground"][i]).astype(F32), fp)
        rgb[w] = col * _lambert(nrm, sc.sun, sc.ambient)[:, None]

    # roofs
    r = np.nonzero(~wall)[0]
    if r.size:
        i = bid[r]
        p_hi_v = ov[r] + t_hi[r] * dv[r]
        sgn = np.where(p_hi_v >= 0, 1.0, -1.0).astype(F32)
        k = rise[r] * sgn / hv[r]
        # plane z = eave + rise - k v  (k = 0 for flat roofs)
        tr = (eave[r] + rise[r] - k * ov[r] - oz[r]) / (dz[r] + k * dv[r])
        u_r, v_r = ou[r] + tr * du[r], ov[r] + tr * dv[r]
        slope = rise[r] / hv[r]
        nl = np.stack([np.zeros_like(slope), sgn * slope, np.ones_like(slope)], -1)
        nl /= np.linalg.norm(nl, axis=1, keepdims=True)
        nrm = np.stack([-nl[:, 1] * s[r], nl[:, 1] * c[r], nl[:, 2]], -1)
        cos_inc = np.maximum(np.abs((nrm * d[r]).sum(1)), 0.15)
        fp = (_footprint(tr, px_angle, fp0) / cos_inc).astype(F32)
        col = _roof_colour(sc, i, u_r.astype(F32), v_r.astype(F32), fp)
        rgb[r] = col * _lambert(nrm, sc.sun, sc.ambient)[:, None]
    return rgb


def _facade(sc: Scene, i: np.ndarray, face: np.ndarray, s: np.ndarray, zr: np.ndarray,
            half_len: np.ndarray, eave_h: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Plaster with noise and base dirt, framed windows on a per-building floor grid. [N, 3]"""
    b = sc.b
    nz = sc.noise.sample(s * F32(0.8) + i * F32(17.3) + face * F32(5.1), zr * F32(0.8), fp)
    nz2 = sc.noise.sample(s * F32(3.1) + F32(7.0), zr * F32(3.1) + i * F32(3.3), fp * F32(3.1))
    base = b["wall"][i] * ((1 + 0.10 * nz + 0.05 * nz2) * (1 - 0.3 * np.exp(-np.maximum(zr, 0) / 0.5)))[:, None]
    fh, sp = b["floor_h"][i], b["win_sp"][i]
    ww, wh, sill = b["win_w"][i], b["win_h"][i], b["sill"][i]
    ncol = np.floor((2 * half_len - 1.2) / sp)
    s0 = -ncol * sp / 2
    ss = s - s0
    col = np.floor(ss / sp)
    sf = ss - col * sp
    fl = np.floor(zr / fh)
    zf = zr - fl * fh
    valid = (col >= 0) & (col < ncol) & (fl * fh + sill + wh <= eave_h - 0.35) & (zr >= 0)
    a0, a1 = (sp - ww) / 2, (sp + ww) / 2
    inner = _box(sf, a0, a1, fp) * _box(zf, sill, sill + wh, fp) * valid
    outer = _box(sf, a0 - 0.09, a1 + 0.09, fp) * _box(zf, sill - 0.12, sill + wh + 0.09, fp) * valid
    h1 = _hash01(i, face, col, fl)
    h2 = _hash01(i, face, col, fl, np.full_like(i, 99))
    glass = b["glass"][i] * (0.55 + 1.1 * h1)[:, None]
    curtain = (h2 > 0.6) * _box(zf, sill + wh * (0.35 + 0.5 * h1), sill + wh + 1, fp)
    glass += curtain[:, None] * (np.array([0.80, 0.74, 0.62], F32) * (0.7 + 0.3 * h2[:, None]) - glass)
    frame = np.array([0.92, 0.92, 0.90], F32)
    rgb = base * (1 - outer)[:, None] + frame * (outer - inner)[:, None] + glass * inner[:, None]
    return rgb.astype(F32)


def _roof_colour(sc: Scene, i: np.ndarray, u: np.ndarray, v: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Gable: staggered tile rows with per-tile tone, ridge cap, moss; flat: gravel, parapet, units. [N, 3]"""
    b = sc.b
    gable = b["gable"][i] > 0.5
    hu, hv = b["hu"][i], b["hv"][i]
    base = b["roof"][i]
    n1 = sc.noise.sample(u * F32(0.6) + i * F32(23.1), v * F32(0.6), fp * F32(0.6))
    n2 = sc.noise.sample(u * F32(2.7) + F32(11.0), v * F32(2.7) + i * F32(9.7), fp * F32(2.7))
    rgb = np.empty((i.size, 3), F32)
    fpc = np.maximum(fp, F32(0.01))

    g = np.nonzero(gable)[0]
    if g.size:
        ig = i[g]
        cosp = 1 / np.sqrt(1 + (b["rise"][ig] / hv[g]) ** 2)
        q = (hv[g] - np.abs(v[g])) / cosp                    # up-slope distance from the eave
        side = (v[g] >= 0).astype(np.int32)
        row = np.floor(q / 0.33)
        qf = q - row * 0.33
        uu = u[g] + (row % 2) * 0.13 + side * 0.07
        colm = np.floor(uu / 0.26)
        uf = uu - colm * 0.26
        tone = 0.78 + 0.42 * _hash01(ig, row, colm, side)
        aa = np.clip((fp[g] - 0.05) / 0.15, 0, 1)          # fade detail to its mean when unresolved
        lap = 1 - 0.3 * _box(qf, 0.0, 0.06, fpc[g])          # shadow line at each tile overlap
        joint = 1 - 0.2 * _box(uf, 0.0, 0.025, fpc[g])
        detail = tone * lap * joint
        detail = detail + aa * (0.98 - detail)
        col = base[g] * detail[:, None] * (1 + 0.10 * n2[g])[:, None]
        moss = np.clip(0.9 * n1[g] - 0.15, 0, 0.55)[:, None]
        col += moss * (np.array([0.30, 0.33, 0.22], F32) - col)
        ridge = _box(np.abs(v[g]), -1, 0.2, fpc[g])[:, None]
        col += ridge * (base[g] * 0.62 - col)
        rgb[g] = col
    f = np.nonzero(~gable)[0]
    if f.size:
        seam = 1 - 0.22 * _box(np.mod(u[f], 1.1), 0.0, 0.05, fpc[f])   # membrane seams
        col = base[f] * ((1 + 0.28 * n1[f] + 0.2 * n2[f]) * seam)[:, None]
        edge = np.minimum(hu[f] - np.abs(u[f]), hv[f] - np.abs(v[f]))
        parapet = _box(edge, -1, 0.35, fpc[f])[:, None]
        col += parapet * (np.array([0.72, 0.71, 0.68], F32) - col)
        rgb[f] = col
    # roof features: skylights on gables (dark glass), units on flat roofs (light boxes, dark rim)
    feats = b["feat"][i]                                          # [N, 3, 4]
    for j in range(feats.shape[1]):
        fu, fv = feats[:, j, 2], feats[:, j, 3]
        on = fu > 0
        if not on.any():
            continue
        du, dv = u - feats[:, j, 0], v - feats[:, j, 1]
        outer = _box(du, -fu, fu, fpc) * _box(dv, -fv, fv, fpc) * on
        inner = _box(du, -fu + 0.1, fu - 0.1, fpc) * _box(dv, -fv + 0.1, fv - 0.1, fpc) * on
        rim = np.where(gable, 0.45, 0.22).astype(F32)[:, None] * np.ones(3, F32)
        fill = np.where(gable[:, None], np.array([0.14, 0.17, 0.22], F32), np.array([0.74, 0.74, 0.72], F32))
        rgb += outer[:, None] * (rim - rgb)
        rgb += inner[:, None] * (fill * (1 + 0.1 * n2)[:, None] - rgb)
    return rgb


def _shade_soft(sc: Scene, o: np.ndarray, d: np.ndarray, t: np.ndarray, px_angle: float,
                fp0: float = 0.0) -> np.ndarray:
    """Ground (pre-shaded mip texture + GCP checkers) or tree canopy (leafy noise). [N, 3]"""
    ox, oy, oz = _origin_xyz(o)
    x = ox + t * d[:, 0]
    y = oy + t * d[:, 1]
    z = oz + t * d[:, 2]
    canopy = _soft_height(sc, x, y) - _terrain_height(sc, x, y)
    tree = canopy > 0.03
    rgb = np.empty((t.size, 3), F32)
    fp_ray = _footprint(t, px_angle, fp0).astype(F32)
    g = np.nonzero(~tree)[0]
    if g.size:
        fp = fp_ray[g] / np.maximum(-d[g, 2], F32(0.2))
        col = sc.ground.sample(x[g], y[g], fp)
        for gx, gy, _ in sc.gcps:
            lx, ly = x[g] - F32(gx), y[g] - F32(gy)
            hw = F32(sc.gcp_half)
            near = np.nonzero((np.abs(lx) < hw + fp) & (np.abs(ly) < hw + fp))[0]
            if near.size == 0:
                continue
            f = np.maximum(fp[near], F32(0.005))
            cover = _box(lx[near], -hw, hw, f) * _box(ly[near], -hw, hw, f)
            sx = np.clip(lx[near] / f, -1, 1)
            sy = np.clip(ly[near] / f, -1, 1)
            val = 0.5 + 0.45 * sx * sy                     # white where x*y > 0, black otherwise
            tint = (0.95 * val)[:, None] * np.ones(3, F32)
            col[near] += cover[:, None] * (tint * _terrain_shade(sc, x[g][near], y[g][near])[:, None] - col[near])
        rgb[g] = col
    tr = np.nonzero(tree)[0]
    if tr.size:
        rgb[tr] = _shade_tree(sc, x[tr], y[tr], z[tr], canopy[tr], fp_ray[tr])
    return rgb


def _shade_tree(sc: Scene, x: np.ndarray, y: np.ndarray, z: np.ndarray, canopy: np.ndarray,
                fp: np.ndarray) -> np.ndarray:
    """Leafy canopy colour: triplanar leaf noise (top: x, y; sides: azimuth around the trunk, z). [N, 3]

    A plain top-down lookup would smear into vertical streaks on the steep crown
    sides seen by the obliques; blending by the surface normal keeps the leaves
    round everywhere and still a function of the 3D point only.
    """
    tid = _nearest(sc.tid_flat, sc, x, y).astype(np.int32)
    known = (tid >= 0) & (sc.t["cx"].size > 0)
    k = np.where(known, tid, 0)
    if sc.t["cx"].size:
        tint = np.where(known[:, None], sc.t["tint"][k], np.array([0.22, 0.36, 0.14], F32))
        ht = np.where(known, sc.t["ht"][k], F32(8.0))
        cx, cy = np.where(known, sc.t["cx"][k], x), np.where(known, sc.t["cy"][k], y)
    else:
        tint = np.broadcast_to(np.array([0.22, 0.36, 0.14], F32), (x.size, 3))
        ht, cx, cy = np.full(x.size, 8.0, F32), x, y
    e = F32(0.15)
    gx = (_soft_height(sc, x + e, y) - _soft_height(sc, x - e, y)) / (2 * e)
    gy = (_soft_height(sc, x, y + e) - _soft_height(sc, x, y - e)) / (2 * e)
    nz = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    w_top = _smoothstep(0.35, 0.75, nz).astype(F32)
    period = sc.leaf.levels[0][1] * sc.leaf.cell0
    s = (np.arctan2(y - cy, x - cx) * F32(period / (2 * math.pi))).astype(F32)   # seam-free
    top = sc.leaf.sample(x, y, fp / np.maximum(nz, F32(0.3)))
    side = sc.leaf.sample(s, z, fp)
    leaf = side + w_top * (top - side)
    lum = (0.35 + 1.15 * leaf) * (0.62 + 0.38 * np.clip(canopy / ht, 0, 1))
    shade = _bilinear(sc.shade_soft, sc.n, -sc.half, sc.cell, x, y)
    return (tint * (lum * shade)[:, None]).astype(F32)


def _terrain_shade(sc: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lambert factor of the bare terrain (GCP targets are painted on it). [N]"""
    h = F32(0.25)
    gx = (_terrain_height(sc, x + h, y) - _terrain_height(sc, x - h, y)) / (2 * h)
    gy = (_terrain_height(sc, x, y + h) - _terrain_height(sc, x, y - h)) / (2 * h)
    nrm = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    return _lambert(nrm, sc.sun, sc.ambient)


def _shade_rays(sc: Scene, o: np.ndarray, d: np.ndarray, px_angle: float,
                fp0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Trace and colour a batch of rays: colours [N, 3] (sky where nothing is hit) and hits [N].

    `o` is one origin [3] (a photo) or one per ray [N, 3] (the orthophoto); a ray sample is
    fp0 + t * px_angle metres wide at distance t (see `_footprint`).
    """
    t_lo, t_hi, hit = _trace(sc, o, d)
    rgb = np.empty((d.shape[0], 3), F32)
    rgb[:] = SKY_RGB
    hi = np.nonzero(hit)[0]
    ph = _origin_rows(o, hi).astype(F32) + t_hi[hi, None] * d[hi]
    roof, bid = _roof_height(sc, ph[:, 0], ph[:, 1])
    soft = _soft_height(sc, ph[:, 0], ph[:, 1])
    is_b = np.isfinite(roof) & (roof > soft)
    bh = hi[is_b]
    if bh.size:
        rgb[bh] = _shade_building(sc, _origin_rows(o, bh), d[bh], bid[is_b], t_hi[bh], px_angle, fp0)
    sh = hi[~is_b]
    if sh.size:
        o_sh = _origin_rows(o, sh)
        t = _refine_soft(sc, o_sh, d[sh], t_lo[sh], t_hi[sh])
        rgb[sh] = _shade_soft(sc, o_sh, d[sh], t, px_angle, fp0)
    return rgb, hit


def render(sc: Scene, shot: Shot, w: int, h: int, fx: float, fy: float, cx: float, cy: float,
           ss: int, dist: Distortion | None = None) -> np.ndarray:
    """Render one photo: uint8 [h, w, 3]."""
    d_all = _pixel_dirs(shot, w, h, fx, fy, cx, cy, ss, dist)     # [N, 3]
    rgb_all = np.empty((d_all.shape[0], 3), F32)
    px_angle = 1.0 / (0.5 * (fx + fy) * ss)                        # radians per ray sample
    chunk = 1 << 17                                                # bounded temporaries: fewer page faults
    for start in range(0, d_all.shape[0], chunk):
        sl = slice(start, start + chunk)
        rgb_all[sl] = _shade_rays(sc, shot.center, d_all[sl], px_angle)[0]
    rgb = rgb_all
    img = rgb.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_ortho(sc: Scene, cell: float, ss: int) -> np.ndarray:
    """True orthophoto on the truth DSM's grid (row 0 = north): uint8 [m, m, 4], RGB + alpha.

    Each of the ss x ss samples per cell is a vertical ray from above the highest surface:
    parallel rays, so roofs sit on their footprints and no facade shows, which is what a
    perfect orthorectification of the photos gives (their shading does not depend on the
    view). Alpha is 255 where every sample of the cell hit the scene.
    """
    m = int(round(2 * sc.half / cell))
    k = m * ss                                                     # samples per row and column
    step = cell / ss
    rgb_all = np.empty((k * k, 3), F32)
    hit_all = np.empty(k * k, bool)
    chunk = 1 << 17                                                # as in `render`
    for start in range(0, k * k, chunk):
        j = np.arange(start, min(start + chunk, k * k))
        o = np.empty((j.size, 3), F32)
        o[:, 0] = -sc.half + (j % k + 0.5) * step
        o[:, 1] = sc.half - (j // k + 0.5) * step
        o[:, 2] = sc.zmax + 1.0
        d = np.zeros((j.size, 3), F32)
        d[:, 2] = -1.0
        sl = slice(start, start + j.size)
        rgb_all[sl], hit_all[sl] = _shade_rays(sc, o, d, 0.0, step)
    img = rgb_all.reshape(m, ss, m, ss, 3).mean(axis=(1, 3))
    alpha = np.where(hit_all.reshape(m, ss, m, ss).all(axis=(1, 3)), 255, 0).astype(np.uint8)
    return np.dstack([np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), alpha])


# ---------------------------------------------------------------------------
# Metadata


def _dms(value: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Degrees as EXIF rationals with 1e-6 arc-second resolution (~3e-8 m)."""
    a = abs(value)
    deg = int(a)
    minutes = int((a - deg) * 60)
    micro = int(round((a - deg - minutes / 60.0) * 3600 * 1e6))
    if micro >= 60_000_000:
        micro -= 60_000_000
        minutes += 1
    if minutes >= 60:
        minutes -= 60
        deg += 1
    return (deg, 1), (minutes, 1), (micro, 1_000_000)


def _from_dms(dms: tuple[tuple[int, int], ...]) -> float:
    """Inverse of _dms: what a reader of the EXIF rationals gets."""
    return dms[0][0] / dms[0][1] + dms[1][0] / dms[1][1] / 60 + dms[2][0] / dms[2][1] / 3600


def _xmp_packet(make: str, model: str, pitch: float, yaw: float, roll: float,
                rel_alt: float, abs_alt: float, extra: dict[str, str] | None = None) -> bytes:
    """DJI-style XMP: drone-dji attributes on one rdf:Description, signed fixed-point numbers.

    `extra`: further drone-dji attributes (name -> formatted value), appended in order.
    """
    dji = {
        "AbsoluteAltitude": f"{abs_alt:+.3f}",
        "RelativeAltitude": f"{rel_alt:+.3f}",
        "GimbalRollDegree": f"{roll:+.2f}",
        "GimbalYawDegree": f"{yaw:+.2f}",
        "GimbalPitchDegree": f"{pitch:+.2f}",
        "FlightRollDegree": f"{0.0:+.2f}",
        "FlightYawDegree": f"{yaw:+.2f}",
        "FlightPitchDegree": f"{0.0:+.2f}",
        **(extra or {}),
    }
    attrs = "".join(f'\n   drone-dji:{name}="{value}"' for name, value in dji.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="DJI Meta Data"\n'
        '    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"\n'
        f'   tiff:Make="{make}"\n'
        f'   tiff:Model="{model}"\n'
        '   xmp:CreatorTool="aerosplat samplescene"'
        f'{attrs}>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    ).encode("utf-8")


def _survey_xmp(recipe: dict[str, Any]) -> dict[str, str]:
    """drone-dji calibration and RTK attributes of a survey drone, formatted like DJI's photos.

    DewarpData is "date;fx,fy,cx_offset,cy_offset,k1,k2,p1,p2,k3" with the principal point
    as an offset from the image centre; all values in pixels at the photo's size.
    """
    sv = recipe["survey"]
    _, _, fx, fy, cx, cy = _camera_matrix(recipe)
    dewarp = (fx, fy, *_principal_offset(recipe), *(_distortion(recipe) or (0.0,) * 5))
    std_lon, std_lat, std_hgt = (float(v) for v in sv["rtk_std_m"])
    return {
        "CalibratedFocalLength": f"{fx:.6f}",
        "CalibratedOpticalCenterX": f"{cx:.6f}",
        "CalibratedOpticalCenterY": f"{cy:.6f}",
        "DewarpData": f"{sv['dewarp_date']};" + ",".join(f"{v:.12f}" for v in dewarp),
        "DewarpFlag": str(int(sv["dewarp_flag"])),
        "RtkFlag": str(int(sv["rtk_flag"])),
        "RtkStdLon": f"{std_lon:.5f}",
        "RtkStdLat": f"{std_lat:.5f}",
        "RtkStdHgt": f"{std_hgt:.5f}",
    }


def _focal_35mm(recipe: dict[str, Any]) -> tuple[float, int]:
    """(true 35 mm equivalent focal, FocalLengthIn35mmFilm as written).

    The written tag is the rounded truth, or with `survey.focal_35mm_error` the truth that
    far off, as some drones write it: pipelines must prefer better sources over it.
    """
    cam = recipe["camera"]
    sw_mm = float(cam["sensor_width_mm"])
    focal_mm = float(cam["fx"]) * sw_mm / int(cam["width"])
    f35_true = focal_mm * 36.0 / sw_mm
    if not _has(recipe, "survey"):
        return f35_true, int(round(f35_true))
    return f35_true, int(round(f35_true * (1.0 + float(recipe["survey"]["focal_35mm_error"]))))


def _exif_bytes(recipe: dict[str, Any], shot: Shot, lat: float, lon: float,
                alt: float) -> tuple[bytes, tuple[float, float, float]]:
    """EXIF (piexif) for one photo, and the lat/lon/alt exactly as the rationals decode."""
    cam = recipe["camera"]
    w, h = int(cam["width"]), int(cam["height"])
    sw_mm = float(cam["sensor_width_mm"])
    sh_mm = sw_mm * h / w
    focal_mm = float(cam["fx"]) * sw_mm / w
    _, f35 = _focal_35mm(recipe)
    res_x = w / (sw_mm / 10.0)    # pixels per centimetre
    res_y = h / (sh_mm / 10.0)
    lat_r, lon_r = _dms(lat), _dms(lon)
    alt_r = (int(round(abs(alt) * 1000)), 1000)
    zeroth = {
        piexif.ImageIFD.Make: str(cam["make"]).encode(),
        piexif.ImageIFD.Model: str(cam["model"]).encode(),
        piexif.ImageIFD.Software: b"aerosplat samplescene",
        piexif.ImageIFD.Orientation: 1,
        piexif.ImageIFD.DateTime: shot.time.encode(),
    }
    exif = {
        piexif.ExifIFD.ExifVersion: b"0230",
        piexif.ExifIFD.DateTimeOriginal: shot.time.encode(),
        piexif.ExifIFD.DateTimeDigitized: shot.time.encode(),
        piexif.ExifIFD.FocalLength: (int(round(focal_mm * 10000)), 10000),
        piexif.ExifIFD.FocalLengthIn35mmFilm: f35,
        piexif.ExifIFD.PixelXDimension: w,
        piexif.ExifIFD.PixelYDimension: h,
        piexif.ExifIFD.ColorSpace: 1,
    }
    if not _has(recipe, "survey") or recipe["survey"]["focal_plane_tags"]:
        exif.update({   # piexif writes tags sorted by number: the insertion order does not matter
            piexif.ExifIFD.FocalPlaneXResolution: (int(round(res_x * 1000)), 1000),
            piexif.ExifIFD.FocalPlaneYResolution: (int(round(res_y * 1000)), 1000),
            piexif.ExifIFD.FocalPlaneResolutionUnit: 3,
        })
    gps = {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S",
        piexif.GPSIFD.GPSLatitude: lat_r,
        piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W",
        piexif.GPSIFD.GPSLongitude: lon_r,
        piexif.GPSIFD.GPSAltitudeRef: 0 if alt >= 0 else 1,
        piexif.GPSIFD.GPSAltitude: alt_r,
        piexif.GPSIFD.GPSMapDatum: b"WGS-84",
    }
    raw = piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps, "1st": {}, "thumbnail": None})
    sign = lambda v: 1.0 if v >= 0 else -1.0  # noqa: E731
    decoded = (sign(lat) * _from_dms(lat_r), sign(lon) * _from_dms(lon_r), sign(alt) * alt_r[0] / alt_r[1])
    return raw, decoded


# ---------------------------------------------------------------------------
# Orchestration


def _check_coverage(sc: Scene, shots: list[Shot], w: int, h: int, fx: float, fy: float,
                    cx: float, cy: float, dist: Distortion | None = None) -> None:
    """Every image corner ray must land inside the modelled square (else the edge would show).

    With distortion the corner rays are the undistorted ones: barrel distortion widens the view.
    """
    for shot in shots:
        if shot.center[2] <= sc.zmax + 1.0:
            raise InputError(f"{shot.name}: camera at {shot.center[2]:.1f} m is not above the scene",
                             hint="raise flight.altitude_m / obliques.altitude_m")
        corners = np.array([[0, 0], [w, 0], [0, h], [w, h], [w / 2, 0]], float)
        xn, yn = (corners[:, 0] - cx) / fx, (corners[:, 1] - cy) / fy
        if dist is not None:
            xn, yn = _undistort(xn, yn, dist)
        dc = np.stack([xn, yn, np.ones(5)], -1)
        dw = dc @ shot.R
        if np.any(dw[:, 2] >= -1e-3):
            raise InputError(f"{shot.name}: part of the view reaches the horizon",
                             hint="use obliques.pitch_deg steeper than about -30")
        tz = (shot.center[2] - sc.zmin) / -dw[:, 2]
        p = shot.center[None, :2] + tz[:, None] * dw[:, :2]
        if np.abs(p).max() > sc.half - 1.0:
            raise InputError(f"{shot.name}: the view reaches {np.abs(p).max():.0f} m from the centre, "
                             f"beyond scene.half_size_m={sc.half:g}",
                             hint="raise scene.half_size_m or steepen obliques.pitch_deg")


def _gcp_observations(sc: Scene, shots: list[Shot], recipe: dict[str, Any],
                      rng: np.random.Generator) -> list[tuple[int, int, float, float]]:
    """(shot index, gcp index, im_x, im_y) for targets inside the margin and not occluded."""
    w, h, fx, fy, cx, cy = _camera_matrix(recipe)
    distortion = _distortion(recipe)
    margin = float(recipe["gcps"]["margin_px"])
    sigma = float(recipe["noise"]["gcp_pixel_sigma_px"])
    obs = []
    for si, shot in enumerate(shots):
        noise = rng.normal(0.0, sigma, (len(sc.gcps), 2))   # drawn for every pair: stable streams
        xc = (sc.gcps - shot.center) @ shot.R.T                # [k, 3] camera frame
        dist = np.linalg.norm(sc.gcps - shot.center, axis=1)
        d = ((sc.gcps - shot.center) / dist[:, None]).astype(F32)
        _, t_hi, hit = _trace(sc, shot.center, d)
        us, vs = _project(xc, fx, fy, cx, cy, distortion)       # meaningless behind the camera
        for gi in range(len(sc.gcps)):
            if xc[gi, 2] <= 0:
                continue
            u, v = us[gi], vs[gi]
            if not (margin <= u <= w - margin and margin <= v <= h - margin):
                continue
            if not hit[gi] or t_hi[gi] < dist[gi] - 0.05:
                continue                                         # something stands in the way
            obs.append((si, gi, float(u + noise[gi, 0]), float(v + noise[gi, 1])))
    return obs


def strip_xmp_attributes(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Copy a JPEG with the named drone-dji attributes removed from its XMP packet.

    For tests that need "the same photos without the calibration tags": only the XMP APP1
    segment is rewritten (with its new length), so EXIF and the scan data stay byte-identical.
    """
    data = Path(src).read_bytes()
    if data[:2] != b"\xff\xd8":
        raise InputError("not a JPEG file (no SOI marker)", path=src)
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xD9, 0xDA):
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        payload = data[pos + 4:pos + 2 + length]
        if data[pos + 1] == 0xE1 and payload.startswith(XMP_NS):
            break
        pos += 2 + length
    else:
        raise InputError("JPEG has no XMP packet (APP1 http://ns.adobe.com/xap/1.0/)", path=src)
    xmp = payload[len(XMP_NS):]
    for name in names:
        xmp, n = re.subn(rb'\s+drone-dji:' + re.escape(name.encode()) + rb'="[^"]*"', b"", xmp)
        if n != 1:
            raise InputError(f"XMP attribute drone-dji:{name} found {n} times, expected once", path=src)
    segment = XMP_NS + xmp
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data[:pos + 2] + (2 + len(segment)).to_bytes(2, "big") + segment
                        + data[pos + 2 + length:])


def _truth_transform(geo: Georef, half: float, cell: float) -> Affine:
    """North-up grid of the truth rasters over the modelled square: one definition for all of them."""
    return Affine(cell, 0.0, geo.e0 - half, 0.0, -cell, geo.n0 + half)


def _write_geotiff(path: Path, data: np.ndarray, geo: Georef, half: float, cell: float) -> None:
    """Single-band float32 north-up GeoTIFF covering the modelled square, written atomically."""
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="float32",
                   crs=f"EPSG:{geo.epsg}", transform=_truth_transform(geo, half, cell),
                   nodata=NODATA, compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data.astype(np.float32), 1)


def _write_ortho(path: Path, rgba: np.ndarray, geo: Georef, half: float, cell: float) -> None:
    """RGBA uint8 GeoTIFF on the truth DSM's grid, bands tagged red/green/blue/alpha, written atomically."""
    profile = dict(driver="GTiff", width=rgba.shape[1], height=rgba.shape[0], count=4, dtype="uint8",
                   crs=f"EPSG:{geo.epsg}", transform=_truth_transform(geo, half, cell),
                   photometric="RGB", alpha="YES",   # => colour interpretation red, green, blue, alpha
                   compress="deflate", predictor=2, tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.moveaxis(rgba, -1, 0))


def _write_truth_rasters(sc: Scene, geo: Georef, out: Path, cell: float) -> None:
    """DSM and DTM: surface_height / terrain at the centres of a north-up grid (row 0 = north)."""
    m = int(round(2 * sc.half / cell))
    xs = (-sc.half + (np.arange(m) + 0.5) * cell).astype(F32)
    ys = (sc.half - (np.arange(m) + 0.5) * cell).astype(F32)
    X = np.broadcast_to(xs[None, :], (m, m)).ravel()
    Y = np.broadcast_to(ys[:, None], (m, m)).ravel()
    dsm = surface_height(sc, X.copy(), Y.copy()).reshape(m, m).astype(np.float64) + geo.h0
    dtm = _terrain_height(sc, X.copy(), Y.copy()).reshape(m, m).astype(np.float64) + geo.h0
    _write_geotiff(out / "truth" / "dsm.tif", dsm.astype(F32), geo, sc.half, cell)
    _write_geotiff(out / "truth" / "dtm.tif", dtm.astype(F32), geo, sc.half, cell)


def generate(recipe_path: str | Path, out_dir: str | Path,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the scene, render every photo with EXIF/XMP, and write the truth files.

    `overrides` deep-merges into the recipe (tests use it for small images/flights).
    Returns a small summary (counts, not timings: outputs stay deterministic).
    """
    recipe = load_recipe(recipe_path, overrides)
    out = Path(out_dir)
    geo = Georef.from_recipe(recipe["location"])
    w, h, fx, fy, cx, cy = _camera_matrix(recipe)
    dist = _distortion(recipe)
    survey_xmp = _survey_xmp(recipe) if _has(recipe, "survey") else None
    ss = int(recipe["render"]["supersample"])
    shots = plan_flight(recipe)
    sc = build_scene(recipe, shots)
    _check_coverage(sc, shots, w, h, fx, fy, cx, cy, dist)

    seeds = np.random.SeedSequence(int(recipe["seed"])).spawn(8)
    rng_gps = np.random.default_rng(seeds[7].spawn(2)[0])
    rng_gcp = np.random.default_rng(seeds[7].spawn(2)[1])
    nz = recipe["noise"]
    sig_h, sig_v = float(nz["gps_horizontal_sigma_m"]), float(nz["gps_vertical_sigma_m"])
    gps_noise = rng_gps.normal(0.0, 1.0, (len(shots), 3)) * np.array([sig_h, sig_h, sig_v])

    cam = recipe["camera"]
    quality = int(cam["jpeg_quality"])
    origin = np.array([geo.e0, geo.n0, geo.h0])
    images = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for si, shot in enumerate(shots):
        img = render(sc, shot, w, h, fx, fy, cx, cy, ss, dist)
        true_utm = origin + shot.center
        noisy = true_utm + gps_noise[si]
        lon, lat = geo.to_lonlat(noisy[0], noisy[1])
        exif, (lat_w, lon_w, alt_w) = _exif_bytes(recipe, shot, float(lat), float(lon), float(noisy[2]))
        yaw_true = (shot.yaw_grid_deg - geo.true_north_grid_az_deg + 180.0) % 360.0 - 180.0
        xmp = _xmp_packet(str(cam["make"]), str(cam["model"]), shot.pitch_deg, yaw_true, 0.0,
                          alt_w - geo.h0, alt_w, survey_xmp)
        with atomic_path(out / "images" / shot.name) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=quality, exif=exif, xmp=xmp)
        e_w, n_w = geo.to_grid(lon_w, lat_w)
        R = shot.R
        images.append({
            "name": shot.name,
            "center": [float(v) for v in true_utm],
            "R_world_to_cam": R.tolist(),
            "t_world_to_cam": (-R @ true_utm).tolist(),
            "R_local": R.tolist(),
            "t_local": (-R @ shot.center).tolist(),
            "gps": [float(e_w), float(n_w), float(alt_w)],
            "gps_latlon": [float(lat_w), float(lon_w), float(alt_w)],
            "oblique": shot.oblique,
            "gimbal_pitch_deg": shot.pitch_deg,
            "gimbal_yaw_deg_true_north": round(yaw_true, 6),
            "datetime": shot.time,
        })

    truth: dict[str, Any] = {
        "epsg": geo.epsg, "width": w, "height": h, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
        "model": "PINHOLE",
    }
    conventions = ("x_cam = R_world_to_cam @ [E, N, h] + t_world_to_cam (UTM metres, ellipsoidal "
                   "h; t is large because of UTM magnitudes, use float64); x right, y down, "
                   "z forward; pixel (u, v) = (fx x/z + cx, fy y/z + cy) with the top-left "
                   "corner of the top-left pixel at (0, 0). R_local/t_local: same pose with X "
                   "relative to origin.json (E - easting, N - northing, h - h).")
    if dist is not None:   # COLMAP's models; FULL_OPENCV's k4..k6 (rational denominator) are 0
        truth["model"] = "FULL_OPENCV" if dist[4] else "OPENCV"
        truth["params"] = [fx, fy, cx, cy, *dist[:4], *((dist[4], 0.0, 0.0, 0.0) if dist[4] else ())]
        conventions += (" Distortion: (x/z, y/z) go through the OpenCV model (k1, k2, p1, p2, k3) "
                        "before fx, cx; params in COLMAP order.")
    truth["conventions"] = conventions
    if survey_xmp is not None:
        f35_true, f35_written = _focal_35mm(recipe)
        truth.update({"f35_true_mm": f35_true, "f35_written_mm": f35_written,
                      "survey": copy.deepcopy(recipe["survey"])})
    truth["images"] = images
    write_json(out / "truth" / "cameras.json", truth)
    write_json(out / "truth" / "origin.json", {
        "epsg": geo.epsg, "lat": geo.lat, "lon": geo.lon, "h": geo.h0,
        "easting": geo.e0, "northing": geo.n0,
    })
    cell = float(recipe["truth"]["dsm_cell_m"])
    _write_truth_rasters(sc, geo, out, cell)
    _write_ortho(out / "truth" / "ortho.tif", render_ortho(sc, cell, int(recipe["truth"]["ortho_supersample"])),
                 geo, sc.half, cell)

    obs = _gcp_observations(sc, shots, recipe, rng_gcp)
    lines = [f"EPSG:{geo.epsg}"]
    for si, gi, u, v in obs:
        e, nn, hh = origin + sc.gcps[gi]
        lines.append(f"{e:.4f} {nn:.4f} {hh:.4f} {u:.3f} {v:.3f} {shots[si].name} GCP{gi + 1:02d}")
    with atomic_path(out / "gcp_list.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return {
        "images": len(shots), "nadir": sum(not s.oblique for s in shots),
        "oblique": sum(s.oblique for s in shots), "gcps": len(sc.gcps), "gcp_observations": len(obs),
        "buildings": int(sc.b["cx"].size), "trees": int(sc.t["cx"].size), "epsg": geo.epsg,
        "out_dir": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m aerosplat.samplescene RECIPE OUT_DIR; prints the summary, time on stderr."""
    parser = argparse.ArgumentParser(prog="python -m aerosplat.samplescene",
                                     description="Generate the procedural aerial sample scene.")
    parser.add_argument("recipe", help="recipe YAML, e.g. resources/sample_scene.yaml")
    parser.add_argument("out_dir", help="output folder (images/, truth/, gcp_list.txt)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(args.recipe, args.out_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"generated in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
