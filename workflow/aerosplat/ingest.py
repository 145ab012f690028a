"""Stage 1, ingest: turn a folder of drone photos into a clean, described image set.

Everything later (SfM, georeferencing, splatting) assumes that every image decodes,
that images are no larger than the run can afford, and that each image's camera and
position metadata is already extracted into one table. Doing all of that here, once,
means:

- a truncated or corrupt photo (common after an interrupted SD-card copy) is found in
  seconds and skipped with a clear reason, instead of crashing a GPU job hours later;
- downstream stages read `ingest/exif.csv` instead of re-parsing EXIF/XMP each time;
- the camera intrinsics come from a documented, inspectable source: the scene YAML, the
  camera's own factory calibration (DJI XMP, `aerosplat.calibration`), else a focal length
  estimated from the sensor width or the 35 mm equivalent; SfM needs a good start, and on a
  nadir-only flight every height rests on it;
- each position carries its accuracy (RTK standard deviations, geo.txt accuracies), so
  georeferencing weights an RTK fix like an RTK fix;
- missing position information (no GPS, no geo.txt, no GCPs) is reported before any
  expensive work, with what to do about it.

Outputs are written atomically: if this stage fails, none of its outputs exist.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import math
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import exifread
from PIL import Image, ImageFile

from aerosplat import calibration
from aerosplat.calibration import Calibration
from aerosplat.crs import WGS84_3D, to_crs
from aerosplat.errors import InputError
from aerosplat.fileio import atomic_path, remove_paths
from aerosplat.odm_formats import GeoTxt, parse_crs_header, parse_gcp_list, parse_geo_txt

LOG = logging.getLogger(__name__)
# exifread warns about what a file lacks ("PNG file does not have exif data"); ingest reports what
# matters (no position, no focal length) itself, so its chatter stays out of the console.
logging.getLogger("exifread").setLevel(logging.ERROR)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
"""File name endings accepted as photos (compared case-insensitively)."""

DEFAULT_GPS_SIGMA_H_M, DEFAULT_GPS_SIGMA_V_M = 2.0, 3.0
"""Consumer-GPS standard deviations (m) assumed where a position carries no accuracy (config/schema.yaml)."""

SENSOR_WIDTH_MIN_MM, SENSOR_WIDTH_MAX_MM = 1.0, 60.0
"""Range of physically plausible sensor widths; EXIF focal-plane values outside it are ignored."""

FULL_FRAME_WIDTH_MM = 36.0
"""Width of a 36 x 24 mm frame, the reference for 35 mm-equivalent focal lengths."""

# Sensor widths (mm) of common drone cameras, from the manufacturers' published
# specifications (sensor format: 1/2.3" = 6.17 mm, 1/1.3" = 9.7 mm, 1" = 13.2 mm,
# 4/3" = 17.3 mm, full frame = 35.9 mm). Keyed by EXIF Model, normalised with
# _model_key(). Used only when EXIF has no plausible focal-plane resolution.
CAMERA_SENSOR_WIDTH_MM: dict[str, float] = {
    "FC300S": 6.17,    # DJI Phantom 3 Advanced/Professional
    "FC300X": 6.17,    # DJI Phantom 3 Professional/4K
    "FC330": 6.17,     # DJI Phantom 4
    "FC220": 6.17,     # DJI Mavic Pro
    "FC2103": 6.17,    # DJI Mavic Air
    "FC2204": 6.17,    # DJI Mavic 2 Zoom
    "FC7203": 6.17,    # DJI Mavic Mini
    "FC7303": 6.17,    # DJI Mini 2
    "FC3582": 9.7,     # DJI Mini 3 Pro (1/1.3")
    "FC6310": 13.2,    # DJI Phantom 4 Pro
    "FC6310S": 13.2,   # DJI Phantom 4 Pro V2.0
    "FC6310R": 13.2,   # DJI Phantom 4 RTK
    "FC6510": 13.2,    # DJI Zenmuse X4S
    "FC3411": 13.2,    # DJI Air 2S
    "L1D-20C": 13.2,   # DJI Mavic 2 Pro (Hasselblad L1D-20c)
    "FC6520": 17.3,    # DJI Zenmuse X5S (4/3")
    "L2D-20C": 17.3,   # DJI Mavic 3 (Hasselblad L2D-20c, 4/3")
    "M3E": 17.3,       # DJI Mavic 3 Enterprise (4/3")
    "ZENMUSEP1": 35.9,  # DJI Zenmuse P1 (full frame)
}

_FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # EXIF FocalPlaneResolutionUnit
_DJI_XMP_TAGS = ("RelativeAltitude", "AbsoluteAltitude", "GimbalPitchDegree", "GimbalYawDegree",
                 "GimbalRollDegree", "FlightYawDegree", "DewarpFlag", "RtkFlag", "RtkStdLon", "RtkStdLat",
                 "RtkStdHgt")
# Kept as text: parsed, and judged with a warning when malformed, by aerosplat.calibration.
_DJI_XMP_TEXT_TAGS = ("DewarpData", "CalibratedFocalLength", "CalibratedOpticalCenterX", "CalibratedOpticalCenterY")
DUPLICATE_REASON = "duplicate of"
"""How a duplicate's reason starts in skipped.csv (the rest names the photo it repeats)."""
RTK_FLAGS = {50: "fixed", 34: "float", 16: "single"}
"""DJI XMP RtkFlag values (the receiver's solution type)."""
RTK_MIN_SIGMA_M = 0.005
"""Floor of an RTK standard deviation: a receiver's "0.000" must not weigh one photo infinitely."""
_PILLOW_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "TIFF": "TIFF"}
_TIFF_LAYOUT_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                     338, 339)  # describe the pixel data; must not be copied onto a resized TIFF
_POSITION_HINT = ("add GPS to the photos' EXIF, or give a geo.txt (config key "
                  "`positions.geo_txt`) or a gcp_list.txt (config key `positions.gcp_list`) "
                  "in OpenDroneMap format (https://docs.opendronemap.org/geo/, "
                  "https://docs.opendronemap.org/gcp/)")


# ---------------------------------------------------------------------------
# The table


@dataclass
class ImageMeta:
    """One ingested image: one row of ingest/exif.csv. None means absent/unknown."""

    name: str
    width: int                      # of the ingested image (after any downscale)
    height: int
    orig_width: int                 # of the original photo (GCP pixel coordinates refer to it)
    orig_height: int
    make: str | None = None
    model: str | None = None
    focal_mm: float | None = None
    focal_35mm: float | None = None
    sensor_width_mm: float | None = None
    sensor_width_source: str = "none"   # exif_focal_plane | camera_table | none
    focal_px: float | None = None       # at the ingested size
    # config | dewarp_data | calibrated_focal_length (calibration below) | sensor_width | 35mm_equivalent | none
    focal_px_source: str = "none"
    calib_source: str = "none"          # config | dewarp_data | calibrated_focal_length | none
    calib_date: str | None = None       # DewarpData's date
    calib_fx: float | None = None       # factory/configured intrinsics at the ingested size, px
    calib_fy: float | None = None
    calib_cx: float | None = None
    calib_cy: float | None = None
    calib_k1: float | None = None       # OpenCV distortion; empty = unknown (focal-only source)
    calib_k2: float | None = None
    calib_p1: float | None = None
    calib_p2: float | None = None
    calib_k3: float | None = None
    dewarp_flag: int | None = None      # DJI XMP: 1 = distortion already removed in camera
    lat: float | None = None            # EXIF GPS, degrees, south negative
    lon: float | None = None            # EXIF GPS, degrees, west negative
    alt: float | None = None            # EXIF GPS altitude (m), else DJI XMP AbsoluteAltitude
    rel_alt: float | None = None        # DJI XMP, metres above take-off
    gimbal_pitch: float | None = None   # DJI XMP, degrees (-90 = nadir)
    gimbal_yaw: float | None = None
    gimbal_roll: float | None = None
    flight_yaw: float | None = None
    datetime: str | None = None         # EXIF DateTimeOriginal, as written
    position_source: str = "none"       # exif | geo_txt | none
    geo_x: float | None = None          # from geo.txt, in geo_crs (x = longitude if geographic)
    geo_y: float | None = None
    geo_z: float | None = None
    geo_crs: str | None = None          # geo.txt's first line, as given
    h_acc: float | None = None          # geo.txt accuracies, metres
    v_acc: float | None = None
    rtk_flag: int | None = None         # DJI XMP RtkFlag: 50 fixed, 34 float, 16 single
    rtk_std_lon: float | None = None    # DJI XMP RtkStdLon/Lat/Hgt, metres (east, north, up)
    rtk_std_lat: float | None = None
    rtk_std_hgt: float | None = None

    @property
    def has_position(self) -> bool:
        """Whether some position (EXIF GPS or geo.txt) is known for this image."""
        return self.position_source != "none"

    def position_wgs84(self) -> tuple[float, float, float] | None:
        """(lat, lon, height) of the camera from geo.txt (any CRS) or EXIF GPS; None without a position."""
        if self.position_source == "geo_txt" and self.geo_x is not None and self.geo_crs:
            lon, lat, h = to_crs([self.geo_x, self.geo_y, self.geo_z or 0.0], parse_crs_header(self.geo_crs),
                                 WGS84_3D)
            return float(lat), float(lon), float(h)
        if self.lat is not None and self.lon is not None:
            return float(self.lat), float(self.lon), float(self.alt if self.alt is not None else 0.0)
        return None

    def position_sigma(self, default_h: float = DEFAULT_GPS_SIGMA_H_M,
                       default_v: float = DEFAULT_GPS_SIGMA_V_M) -> tuple[float, float, float]:
        """Per-axis (east, north, up) standard deviation (m) of the position in use.

        geo.txt's own accuracies for a geo.txt position; the receiver's RTK standard deviations
        for an EXIF position that has them; else the consumer-GPS defaults.
        """
        if self.position_source == "geo_txt":
            sh = self.h_acc if self.h_acc else default_h
            sv = self.v_acc if self.v_acc else default_v
            return sh, sh, sv
        if self._has_rtk_accuracy():
            return tuple(max(float(v), RTK_MIN_SIGMA_M)  # type: ignore[return-value]
                         for v in (self.rtk_std_lon, self.rtk_std_lat, self.rtk_std_hgt))
        return default_h, default_h, default_v

    def _has_rtk_accuracy(self) -> bool:
        return all(v is not None and v > 0 for v in (self.rtk_std_lon, self.rtk_std_lat, self.rtk_std_hgt))

    @property
    def position_accuracy_source(self) -> str:
        """Where position_sigma's values come from: geo_txt | rtk | default."""
        if self.position_source == "geo_txt":
            return "geo_txt" if self.h_acc or self.v_acc else "default"
        return "rtk" if self._has_rtk_accuracy() else "default"

    def calibration(self) -> Calibration | None:
        """The factory/configured intrinsics at the ingested size, or None (heuristic focal only)."""
        if self.calib_source == "none" or self.calib_fx is None:
            return None
        return Calibration(self.width, self.height, self.calib_fx, self.calib_fy, self.calib_cx, self.calib_cy,
                           self.calib_k1, self.calib_k2, self.calib_p1, self.calib_p2, self.calib_k3,
                           source=self.calib_source, date=self.calib_date)

    def set_calibration(self, cal: Calibration) -> None:
        """Record `cal` (at this image's ingested size) as the intrinsics, its focal as the focal prior."""
        self.calib_source, self.calib_date = cal.source, cal.date
        self.calib_fx, self.calib_fy, self.calib_cx, self.calib_cy = cal.fx, cal.fy, cal.cx, cal.cy
        self.calib_k1, self.calib_k2, self.calib_p1, self.calib_p2, self.calib_k3 = \
            cal.k1, cal.k2, cal.p1, cal.p2, cal.k3
        self.focal_px, self.focal_px_source = cal.fx, cal.source


EXIF_CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ImageMeta))
SKIPPED_CSV_COLUMNS: tuple[str, ...] = ("name", "reason")


class UnreadableImage(Exception):
    """The file is not a complete, decodable JPEG/PNG/TIFF; str(exc) is the reason."""


# ---------------------------------------------------------------------------
# Small pure helpers


def scaled_size(width: int, height: int, max_image_size: int | None) -> tuple[int, int]:
    """Size with the longest side at most `max_image_size`, aspect kept; never upscales."""
    longest = max(width, height)
    if not max_image_size or longest <= max_image_size:
        return width, height
    scale = max_image_size / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _model_key(model: str) -> str:
    return "".join(model.split()).upper()


def camera_sensor_width(model: str | None) -> float | None:
    """Sensor width (mm) of a known drone camera by its EXIF Model, else None."""
    if not model:
        return None
    return CAMERA_SENSOR_WIDTH_MM.get(_model_key(model))


def focal_plane_sensor_width(orig_width: int, resolution: float | None,
                             unit: int | None) -> float | None:
    """Sensor width (mm) from EXIF FocalPlaneXResolution, or None when absent or implausible."""
    unit_mm = _FOCAL_PLANE_UNIT_MM.get(2 if unit is None else unit)
    if not resolution or resolution <= 0 or unit_mm is None:
        return None
    width_mm = orig_width / resolution * unit_mm
    if not SENSOR_WIDTH_MIN_MM <= width_mm <= SENSOR_WIDTH_MAX_MM:
        return None
    return width_mm


def focal_in_pixels(*, focal_mm: float | None, focal_35mm: float | None,
                    sensor_width_mm: float | None, width: int, height: int,
                    orig_width: int, sensor_width_source: str = "exif_focal_plane") -> tuple[float | None, str]:
    """Focal length in pixels at the ingested size, and where it came from.

    Order of trust: a sensor width measured into this file's EXIF (focal-plane
    resolution); then the manufacturer's 35 mm equivalent, converted over the
    image *width* (f35 / 36 mm x width, OpenDroneMap/OpenSfM's convention: a 16:9
    crop of a 4:3 sensor keeps its width, so this survives the crop where the
    diagonal rule does not); then the nominal sensor width of a known camera
    model ("1/2.3 inch" is a format name, not a measurement). On brighton_beach
    (DJI FC300S at 1600 px) these give 889 px (35 mm) and 936 px (table); on a
    nadir-only flight the flying height scales with this choice.
    """
    scale = width / orig_width if orig_width else 1.0
    if focal_mm and sensor_width_mm and sensor_width_source == "exif_focal_plane":
        return focal_mm / sensor_width_mm * orig_width * scale, "sensor_width"
    if focal_35mm:
        return focal_35mm / FULL_FRAME_WIDTH_MM * max(width, height), "35mm_equivalent"
    if focal_mm and sensor_width_mm:
        return focal_mm / sensor_width_mm * orig_width * scale, "sensor_width"
    return None, "none"


def _ratio(value: Any) -> float | None:
    """An EXIF rational/number as a finite float, or None (0/0 and garbage included)."""
    try:
        if hasattr(value, "denominator") and value.denominator == 0:
            return None
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) else None


def gps_degrees(values: Iterable[Any] | None, ref: str | None) -> float | None:
    """EXIF GPS degrees/minutes/seconds rationals to signed degrees (S and W negative)."""
    if values is None:
        return None
    parts = [_ratio(v) for v in values]
    if not parts or any(p is None for p in parts) or len(parts) > 3:
        return None
    degrees = sum(p / 60 ** i for i, p in enumerate(parts))  # type: ignore[operator]
    if ref and ref.strip().upper()[:1] in ("S", "W"):
        degrees = -degrees
    return degrees


def _tag(tags: dict[str, Any], key: str) -> Any:
    """The values of an exifread tag (a list for numbers, a str for text), or None."""
    tag = tags.get(key)
    return None if tag is None else getattr(tag, "values", None)


def _tag_text(tags: dict[str, Any], key: str) -> str | None:
    value = _tag(tags, key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _tag_number(tags: dict[str, Any], key: str) -> float | None:
    value = _tag(tags, key)
    if isinstance(value, list):
        value = value[0] if value else None
    return _ratio(value)


def read_exif_tags(path: str | Path) -> dict[str, Any]:
    """EXIF tags of a file via exifread ({} when it has none or they cannot be parsed)."""
    try:
        with open(path, "rb") as fh:
            return exifread.process_file(fh, details=False, extract_thumbnail=False)
    except Exception as exc:  # exifread raises many types on odd files; EXIF is optional
        LOG.warning("%s: EXIF could not be read (%s); continuing without it", path, exc)
        return {}


def read_dji_xmp(im: Image.Image, name: str = "") -> dict[str, float | str]:
    """DJI drone-dji XMP values: numbers (RelativeAltitude, Gimbal*Degree, RtkStd*, ...) as floats,
    DewarpData as text.

    Looks at attributes and child elements anywhere in the packet; only tags in a DJI
    namespace count. Values such as '+39.80' are accepted.
    """
    try:
        xmp = im.getxmp(strip_namespaces=False)
    except Exception as exc:  # malformed XML: the image is still usable
        LOG.warning("%s: XMP metadata could not be parsed (%s); ignoring it", name, exc)
        return {}
    found: dict[str, float | str] = {}

    def text_of(value: Any) -> str | None:
        if isinstance(value, list):
            return text_of(value[0]) if value else None
        if isinstance(value, dict):  # child element that also has attributes
            value = value.get("text")
        return value.strip() if isinstance(value, str) else None

    def number_of(value: Any) -> float | None:
        text = text_of(value)
        return None if text is None else _ratio(text)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            uri, _, local = key.rpartition("}")
            if "dji" in uri.lower() and local not in found:
                if local in _DJI_XMP_TAGS and (number := number_of(value)) is not None:
                    found[local] = number
                elif local in _DJI_XMP_TEXT_TAGS and (text := text_of(value)):
                    found[local] = text
            walk(value)

    walk(xmp)
    return found


# ---------------------------------------------------------------------------
# One image


def _altitude_below_sea_level(ref: Any) -> bool:
    """EXIF GPSAltitudeRef: 1 means below sea level (in any encoding exifread returns)."""
    if isinstance(ref, (list, tuple, bytes, bytearray)):
        ref = ref[0] if len(ref) else 0
    try:
        return int(str(ref).strip() or 0) == 1
    except ValueError:
        return False


def exif_gps_fix(tags: dict[str, Any], name: str) -> tuple[float, float] | None:
    """(lat, lon) of the EXIF GPS tags, or None when absent, out of range (warned) or 0, 0 (no fix)."""
    lat = gps_degrees(_tag(tags, "GPS GPSLatitude"), _tag_text(tags, "GPS GPSLatitudeRef"))
    lon = gps_degrees(_tag(tags, "GPS GPSLongitude"), _tag_text(tags, "GPS GPSLongitudeRef"))
    if lat is None or lon is None:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        LOG.warning("%s: EXIF GPS (%s, %s) is out of range; ignoring it", name, lat, lon)
        return None
    if lat == 0 and lon == 0:
        LOG.debug("%s: EXIF GPS is 0, 0 (no fix); ignoring it", name)
        return None
    return lat, lon


def _build_meta(name: str, orig_size: tuple[int, int], size: tuple[int, int],
                tags: dict[str, Any], xmp: dict[str, float | str],
                calibration_override: Calibration | None = None) -> ImageMeta:
    """Assemble an ImageMeta from EXIF tags and DJI XMP values (and the scene's calibration, if any)."""
    orig_w, orig_h = orig_size
    meta = ImageMeta(name=name, width=size[0], height=size[1], orig_width=orig_w,
                     orig_height=orig_h)
    meta.make = _tag_text(tags, "Image Make")
    meta.model = _tag_text(tags, "Image Model")
    meta.datetime = _tag_text(tags, "EXIF DateTimeOriginal")
    focal = _tag_number(tags, "EXIF FocalLength")
    meta.focal_mm = focal if focal and focal > 0 else None
    f35 = _tag_number(tags, "EXIF FocalLengthIn35mmFilm")
    meta.focal_35mm = f35 if f35 and f35 > 0 else None

    unit = _tag_number(tags, "EXIF FocalPlaneResolutionUnit")
    sensor = focal_plane_sensor_width(orig_w, _tag_number(tags, "EXIF FocalPlaneXResolution"),
                                      None if unit is None else int(unit))
    if sensor is not None:
        meta.sensor_width_mm, meta.sensor_width_source = sensor, "exif_focal_plane"
    elif (sensor := camera_sensor_width(meta.model)) is not None:
        meta.sensor_width_mm, meta.sensor_width_source = sensor, "camera_table"
    meta.focal_px, meta.focal_px_source = focal_in_pixels(
        focal_mm=meta.focal_mm, focal_35mm=meta.focal_35mm, sensor_width_mm=meta.sensor_width_mm,
        width=meta.width, height=meta.height, orig_width=orig_w,
        sensor_width_source=meta.sensor_width_source)
    flag = xmp.get("DewarpFlag")
    meta.dewarp_flag = int(flag) if isinstance(flag, float) else None
    exif_focal = meta.focal_px * orig_w / meta.width if meta.focal_px else None
    cal = calibration.choose(name, xmp, orig_size, size, calibration_override, exif_focal, log=LOG)
    if cal is not None:
        meta.set_calibration(cal)
    rtk = xmp.get("RtkFlag")
    meta.rtk_flag = int(rtk) if isinstance(rtk, float) else None
    meta.rtk_std_lon, meta.rtk_std_lat, meta.rtk_std_hgt = (
        v if isinstance(v, float) and v >= 0 else None
        for v in (xmp.get("RtkStdLon"), xmp.get("RtkStdLat"), xmp.get("RtkStdHgt")))

    if (fix := exif_gps_fix(tags, name)) is not None:
        meta.lat, meta.lon, meta.position_source = *fix, "exif"
    alt = _tag_number(tags, "GPS GPSAltitude")
    if alt is not None:
        if _altitude_below_sea_level(_tag(tags, "GPS GPSAltitudeRef")):
            alt = -alt
        meta.alt = alt
    elif isinstance(absolute := xmp.get("AbsoluteAltitude"), float):
        meta.alt = absolute
    meta.rel_alt, meta.gimbal_pitch, meta.gimbal_yaw, meta.gimbal_roll, meta.flight_yaw = (
        v if isinstance(v, float) else None
        for v in (xmp.get("RelativeAltitude"), xmp.get("GimbalPitchDegree"), xmp.get("GimbalYawDegree"),
                  xmp.get("GimbalRollDegree"), xmp.get("FlightYawDegree")))
    return meta


def read_image_meta(path: str | Path, max_image_size: int | None = None,
                    calibration_override: Calibration | None = None) -> ImageMeta:
    """Metadata of one photo without decoding its pixels.

    width/height/focal_px/calib_* are for the size ingest would produce with `max_image_size`.
    """
    path = Path(path)
    with Image.open(path) as im:
        orig = im.size
        xmp = read_dji_xmp(im, str(path))
    return _build_meta(path.name, orig, scaled_size(*orig, max_image_size),
                       read_exif_tags(path), xmp, calibration_override)


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated images for the duration (whatever another module set)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _save_downscaled(im: Image.Image, fmt: str, size: tuple[int, int], dst: Path) -> None:
    """Lanczos-resize and write in the source's own format, keeping EXIF (and XMP/ICC)."""
    info = dict(im.info)
    pixels = im
    if im.mode == "P":
        pixels = im.convert("RGBA" if "transparency" in info else "RGB")
    elif im.mode == "1":
        pixels = im.convert("L")
    small = pixels.resize(size, Image.Resampling.LANCZOS)
    extra: dict[str, Any] = {}
    if info.get("icc_profile"):
        extra["icc_profile"] = info["icc_profile"]
    if fmt == "JPEG":
        if small.mode not in ("RGB", "L", "CMYK"):
            small = small.convert("RGB")
        if info.get("exif"):
            extra["exif"] = info["exif"]  # original bytes: GPS etc. stay visible downstream
        if info.get("xmp"):
            extra["xmp"] = info["xmp"]
        small.save(dst, "JPEG", quality=95, **extra)
    elif fmt == "PNG":
        if info.get("exif"):
            extra["exif"] = info["exif"]
        small.save(dst, "PNG", **extra)
    else:  # TIFF: the EXIF lives in the image's own IFD; drop the tags describing the old pixels
        exif = im.getexif()
        for ifd in (0x8769, 0x8825):  # load the Exif and GPS sub-IFDs before editing
            exif.get_ifd(ifd)
        for tag in _TIFF_LAYOUT_TAGS:
            exif.pop(tag, None)
        # Uncompressed: Pillow's libtiff writer cannot write the Exif sub-IFD pointer.
        small.save(dst, "TIFF", exif=exif, **extra)


def ingest_image(src: str | Path, dst: str | Path, max_image_size: int | None = None,
                 calibration_override: Calibration | None = None) -> ImageMeta:
    """Verify that `src` decodes completely, write it to `dst` (downscaled or copied), describe it.

    Raises UnreadableImage (with the reason) for a file that is not a complete JPEG/PNG/TIFF.
    Call inside strict_decoding() so truncated files are detected.
    """
    return _ingest_image(src, dst, max_image_size, calibration_override)[0]


@dataclass(frozen=True)
class Fingerprint:
    """What makes two photos the same: their bytes, or their decoded pixels under another name/format."""

    file_sha256: str
    pixels_sha256: str


def _ingest_image(src: str | Path, dst: str | Path, max_image_size: int | None,
                  calibration_override: Calibration | None) -> tuple[ImageMeta, Fingerprint]:
    src, dst = Path(src), Path(dst)
    try:
        im = Image.open(src)
    except Exception as exc:
        raise UnreadableImage(f"not a readable image ({exc})") from exc
    with im:
        fmt = _PILLOW_FORMATS.get(im.format or "")
        if fmt is None:
            raise UnreadableImage(f"the file content is {im.format}, not JPEG, PNG or TIFF")
        try:
            im.load()
        except Exception as exc:
            raise UnreadableImage(f"does not decode completely ({exc})") from exc
        orig = im.size
        size = scaled_size(*orig, max_image_size)
        xmp = read_dji_xmp(im, str(src))
        data = src.read_bytes()
        fingerprint = Fingerprint(hashlib.sha256(data).hexdigest(),
                                  hashlib.sha256(f"{im.mode} {im.size}".encode() + im.tobytes()).hexdigest())
        if size == orig:
            dst.write_bytes(data)  # read once: hashed and copied
        else:
            try:
                _save_downscaled(im, fmt, size, dst)
            except (ValueError, TypeError, KeyError) as exc:  # Pillow cannot handle this mode
                raise UnreadableImage(f"could not be downscaled ({exc})") from exc
    return _build_meta(src.name, orig, size, read_exif_tags(src), xmp, calibration_override), fingerprint


def duplicate_of(name: str, fingerprint: Fingerprint, seen: dict[str, str]) -> str | None:
    """The reason `name` is a copy of an earlier photo (recording it in `seen` otherwise), else None.

    A copied photo would count twice in SfM and training, and one copy could be held out while the
    other trains: evaluation on a photo the model has seen.
    """
    for key, how in ((fingerprint.file_sha256, "the same file"), (fingerprint.pixels_sha256, "the same pixels")):
        if key in seen:
            return f"{DUPLICATE_REASON} {seen[key]} ({how})"
    seen[fingerprint.file_sha256] = seen[fingerprint.pixels_sha256] = name
    return None


def quick_positions(images_dir: str | Path, geo_txt: str | Path | None = None,
                    limit: int = 40) -> tuple[list[float], list[float]]:
    """(lats, lons) of up to `limit` photos spread over the folder (geo.txt's where it gives them),
    read from EXIF alone: cheap enough to check a configured CRS before any job runs."""
    photos, _ = _list_candidates(Path(images_dir))
    step = max(1, len(photos) // limit)
    lats, lons = [], []
    for path in photos[::step][:limit]:
        if (fix := exif_gps_fix(read_exif_tags(path), path.name)) is not None:
            lats.append(fix[0])
            lons.append(fix[1])
    if geo_txt is not None:
        geo = parse_geo_txt(geo_txt)
        pts = to_crs([[e.x, e.y, e.z or 0.0] for e in geo.entries[:limit]], parse_crs_header(geo.crs_text), WGS84_3D)
        lats.extend(float(p[1]) for p in pts)
        lons.extend(float(p[0]) for p in pts)
    return lats, lons


# ---------------------------------------------------------------------------
# The table on disk


def write_exif_csv(path: str | Path, metas: Iterable[ImageMeta]) -> None:
    """Write ingest/exif.csv atomically (one row per image, empty cell = unknown)."""
    with atomic_path(path) as tmp:
        _write_exif_csv_to(tmp, metas)


def _write_exif_csv_to(path: Path, metas: Iterable[ImageMeta]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(EXIF_CSV_COLUMNS)
        for meta in metas:
            row = dataclasses.astuple(meta)
            writer.writerow("" if v is None else repr(v) if isinstance(v, float) else v
                            for v in row)


def _column_types() -> dict[str, tuple[type, Any]]:
    """Column -> (base type, value for an empty cell) from ImageMeta's annotations.

    The empty-cell value is None for optional columns, the default for columns with one,
    and _REQUIRED for columns that must not be empty.
    """
    hints = typing.get_type_hints(ImageMeta)
    out: dict[str, tuple[type, Any]] = {}
    for f in dataclasses.fields(ImageMeta):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        base = next(a for a in args if a is not type(None))
        if type(None) in args:
            empty = None
        elif f.default is not dataclasses.MISSING:
            empty = f.default
        else:
            empty = _REQUIRED
        out[f.name] = (base, empty)
    return out


_REQUIRED = object()


def read_exif_csv(path: str | Path) -> list[ImageMeta]:
    """Read ingest/exif.csv back into ImageMeta objects with proper types."""
    path = Path(path)
    hint = "re-run the ingest stage (delete its outputs first if they come from an older version)"
    if not path.is_file():
        raise InputError("image table not found", path=path, hint=hint)
    columns = _column_types()
    metas: list[ImageMeta] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in EXIF_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"image table lacks columns {missing}", path=path, line=1, hint=hint)
        for row in reader:
            values: dict[str, Any] = {}
            for name, (base, empty) in columns.items():
                cell = row[name]
                if cell is None or cell == "":
                    if empty is _REQUIRED:
                        raise InputError(f"column {name!r} is empty", path=path,
                                         line=reader.line_num, hint=hint)
                    values[name] = empty
                    continue
                try:
                    values[name] = base(cell)
                except ValueError as exc:
                    raise InputError(f"column {name!r}: {cell!r} is not a {base.__name__}",
                                     path=path, line=reader.line_num, hint=hint) from exc
            metas.append(ImageMeta(**values))
    return metas


# ---------------------------------------------------------------------------
# The stage


def _list_candidates(images_dir: Path) -> tuple[list[Path], list[str]]:
    """Photo files in images_dir (sorted by name) and a note on what else is there."""
    photos: list[Path] = []
    others: list[str] = []
    folders = 0
    for entry in sorted(images_dir.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):  # e.g. macOS '._DJI_0001.JPG' resource forks
            continue
        if entry.is_dir():
            folders += 1
        elif entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            photos.append(entry)
        else:
            others.append(entry.name)
    notes = []
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        notes.append(f"{len(others)} other file(s) ignored: {shown}")
    if folders:
        notes.append(f"{folders} subfolder(s) not searched")
    return photos, notes


def _check_paths(images_dir: Path, outputs: list[Path]) -> None:
    """Refuse outputs that would overwrite or delete the input photos."""
    src = images_dir.resolve()
    for out in outputs:
        resolved = out.resolve()
        if resolved == src or resolved in src.parents:
            raise InputError(f"output {out} would replace the input images folder {images_dir}",
                             path=out, hint="write the ingest outputs to a separate results folder")


def _apply_geo_txt(metas: list[ImageMeta], geo: GeoTxt, images_dir: Path,
                   log: logging.Logger) -> None:
    """Override positions of the images geo.txt names; warn about names it cannot match."""
    by_name = {m.name: m for m in metas}
    unmatched = [e for e in geo.entries if e.image not in by_name]
    for entry in geo.entries:
        meta = by_name.get(entry.image)
        if meta is None:
            continue
        meta.geo_x, meta.geo_y, meta.geo_z = entry.x, entry.y, entry.z
        meta.geo_crs, meta.h_acc, meta.v_acc = geo.crs_text, entry.h_acc, entry.v_acc
        meta.position_source = "geo_txt"
    matched = len(geo.entries) - len(unmatched)
    if matched == 0:
        example = geo.entries[0]
        raise InputError(f"none of the {len(geo.entries)} images it lists is among the "
                         f"{len(metas)} usable images in {images_dir} (e.g. {example.image!r}, "
                         f"line {example.line})", path=geo.path, line=example.line,
                         hint="the first column must be the exact image file name (no folders, "
                              "same upper/lower case); or remove `positions.geo_txt`")
    if unmatched:
        shown = ", ".join(f"{e.image} (line {e.line})" for e in unmatched[:5])
        log.warning("%s: %d of its images are not among the usable images and are ignored: %s%s",
                    geo.path, len(unmatched), shown, ", ..." if len(unmatched) > 5 else "")
    log.info("geo.txt: positions for %d of %d images (CRS %s)", matched, len(metas), geo.crs_text)


def run(images_dir: str | Path, out_images_dir: str | Path, out_exif_csv: str | Path, *,
        max_image_size: int | None = None, geo_txt: str | Path | None = None,
        gcp_list: str | Path | None = None, out_skipped_csv: str | Path, min_images: int = 3,
        calibration_config: dict | None = None, threads: int = 1,
        log: logging.Logger = LOG) -> list[ImageMeta]:
    """Ingest a folder of photos: verify, downscale/copy, describe, and check positions.

    Writes `out_images_dir` (the usable images, original names), `out_exif_csv` (one
    ImageMeta row each) and `out_skipped_csv` (name, reason of each unreadable or duplicate file).
    All three appear together on success; on any error none of them exists.
    `calibration_config` is the scene's `ingest.calibration` (it outranks the photos' own tags).
    Raises InputError for problems the user must fix.
    """
    images_dir = Path(images_dir)
    outputs = [Path(out_images_dir), Path(out_exif_csv), Path(out_skipped_csv)]
    _check_paths(images_dir, outputs)
    try:
        return _run(images_dir, *outputs, max_image_size=max_image_size,
                    geo_txt=None if geo_txt is None else Path(geo_txt),
                    gcp_list=None if gcp_list is None else Path(gcp_list),
                    min_images=min_images, calibration_config=calibration_config, threads=threads, log=log)
    except BaseException:
        # A failed run must not leave outputs (even from an earlier run) that look current.
        remove_paths(outputs)
        raise


def _run(images_dir: Path, out_images_dir: Path, out_exif_csv: Path, out_skipped_csv: Path, *,
         max_image_size: int | None, geo_txt: Path | None, gcp_list: Path | None,
         min_images: int, calibration_config: dict | None, threads: int,
         log: logging.Logger) -> list[ImageMeta]:
    if max_image_size is not None and (not isinstance(max_image_size, int)
                                       or isinstance(max_image_size, bool) or max_image_size < 1):
        raise InputError(f"max_image_size must be a whole number of pixels >= 1 or empty, got "
                         f"{max_image_size!r}",
                         hint="set `ingest.max_image_size` to e.g. 2000, or to null to keep the "
                              "original size")
    if not images_dir.is_dir():
        raise InputError("images folder not found" if not images_dir.exists()
                         else "images path is not a folder", path=images_dir,
                         hint="set the scene's `images` key to the folder holding the photos")

    # Cheap checks first: a typo in geo.txt / gcp_list.txt / the calibration fails before any decoding.
    override = None
    if calibration_config:
        try:
            override = calibration.from_config(calibration_config)
        except (calibration.CalibrationError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"`ingest.calibration` cannot be used: {exc}",
                             hint="give fx (and optionally fy, cx, cy, k1, k2, p1, p2, k3) in pixels of the "
                                  "original photos, with their width and height") from None
    geo = parse_geo_txt(geo_txt) if geo_txt is not None else None
    if gcp_list is not None:
        parse_gcp_list(gcp_list)

    photos, notes = _list_candidates(images_dir)
    if not photos:
        raise InputError("no JPEG, PNG or TIFF photos found"
                         + (f" ({'; '.join(notes)})" if notes else " (the folder is empty)"),
                         path=images_dir,
                         hint=f"put the photos ({', '.join(IMAGE_EXTENSIONS)}) directly in this "
                              f"folder, not in subfolders")
    for note in notes:
        log.info("%s: %s", images_dir, note)
    size_text = f"longest side <= {max_image_size} px" if max_image_size else "original size"
    log.info("ingest: %d photo(s) in %s (%s)", len(photos), images_dir, size_text)

    with contextlib.ExitStack() as stack:
        # Entered in this order, renamed in reverse: images, skipped list, then exif.csv last.
        tmp_csv = stack.enter_context(atomic_path(out_exif_csv))
        tmp_skipped = stack.enter_context(atomic_path(out_skipped_csv))
        tmp_images = stack.enter_context(atomic_path(out_images_dir))
        tmp_images.mkdir()
        stack.enter_context(strict_decoding())

        def work(src: Path) -> tuple[ImageMeta, Fingerprint] | str:
            try:
                return _ingest_image(src, tmp_images / src.name, max_image_size, override)
            except UnreadableImage as exc:
                return str(exc)

        metas: list[ImageMeta] = []
        skipped: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        step = max(1, math.ceil(len(photos) / 10))
        results: Iterable[tuple[ImageMeta, Fingerprint] | str] = map(work, photos)
        if threads > 1:  # Pillow releases the GIL while decoding and resizing
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads))
            results = pool.map(work, photos)
        for done, (src, result) in enumerate(zip(photos, results), start=1):
            if not isinstance(result, str) and (copy := duplicate_of(src.name, result[1], seen)):
                (tmp_images / src.name).unlink()
                result = copy
            if isinstance(result, str):
                log.warning("%s: skipped: %s", src, result)
                skipped.append((src.name, result))
            else:
                metas.append(result[0])
            if done % step == 0 or done == len(photos):
                log.info("ingest: %d/%d photos checked (%d%%), %d skipped", done, len(photos),
                         round(100 * done / len(photos)), len(skipped))

        skipped_note = ""
        if skipped:
            dup = sum(reason.startswith(DUPLICATE_REASON) for _, reason in skipped)
            kind = "unreadable" if not dup else "duplicate" if dup == len(skipped) else "unreadable or duplicate"
            skipped_note = (f"; {len(skipped)} {kind} file(s) skipped: "
                            + ", ".join(n for n, _ in skipped[:5])
                            + (", ..." if len(skipped) > 5 else ""))
        if len(metas) < min_images:
            raise InputError(f"only {len(metas)} usable photo(s) found, at least {min_images} are "
                             f"needed{skipped_note}", path=images_dir,
                             hint="add more overlapping photos of the scene (typically dozens, "
                                  "with 60-80% overlap), or replace the unreadable files "
                                  "(the minimum is the config key `ingest.min_images`)")

        if override is not None and not any(m.calib_source == "config" for m in metas):
            sizes = sorted({f"{m.orig_width} x {m.orig_height}" for m in metas})
            raise InputError(f"`ingest.calibration` is for {override.width} x {override.height} photos, but "
                             f"the photos are {', '.join(sizes)}",
                             hint="set its width and height to the original photos' size (the calibration's "
                                  "pixels refer to it), or remove the key")
        if geo is not None:
            _apply_geo_txt(metas, geo, images_dir, log)
        if gcp_list is not None:
            gcps = parse_gcp_list(gcp_list, {m.name for m in metas}, images_dir=images_dir,
                                  unusable=dict(skipped))
            log.info("%s: %d observations of %d GCPs in %d images (CRS %s)", gcp_list,
                     len(gcps.observations), len(gcps.names), len(gcps.images()), gcps.crs_text)

        positioned = [m for m in metas if m.has_position]
        if not positioned and gcp_list is None:
            raise InputError(f"no position source: none of the {len(metas)} photos has GPS in its "
                             f"EXIF, and no geo.txt or gcp_list.txt was given", path=images_dir,
                             hint=_POSITION_HINT)
        if not positioned:
            log.info("no photo has a position; georeferencing will rely on the GCPs only")
        elif len(positioned) < len(metas):
            missing = [m.name for m in metas if not m.has_position]
            log.warning("%d of %d photos have no position (%s%s); they will be placed by SfM only",
                        len(missing), len(metas), ", ".join(missing[:5]),
                        ", ..." if len(missing) > 5 else "")

        _write_exif_csv_to(tmp_csv, metas)
        with open(tmp_skipped, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(SKIPPED_CSV_COLUMNS)
            writer.writerows(skipped)
        _log_summary(metas, skipped, log)
    return metas


def _log_summary(metas: list[ImageMeta], skipped: list[tuple[str, str]],
                 log: logging.Logger) -> None:
    """One-paragraph account of what was ingested, for the stage log."""
    resized = sum(1 for m in metas if (m.width, m.height) != (m.orig_width, m.orig_height))
    cameras = Counter(f"{m.make or '?'} {m.model or '?'}" for m in metas)
    focal = Counter(m.focal_px_source for m in metas)
    positions = Counter(m.position_source for m in metas)
    accuracy = Counter(m.position_accuracy_source for m in metas if m.has_position)
    rtk = Counter(RTK_FLAGS.get(m.rtk_flag, f"flag {m.rtk_flag}") for m in metas if m.rtk_flag is not None)
    log.info("ingest: %d photos usable (%d downscaled, %d copied unchanged), %d skipped",
             len(metas), resized, len(metas) - resized, len(skipped))
    log.info("ingest: cameras %s; focal length source %s; position source %s; position accuracy %s%s",
             dict(cameras), dict(focal), dict(positions), dict(accuracy),
             f"; RTK {dict(rtk)}" if rtk else "")
    if focal.get("none"):
        log.warning("%d photo(s) have no usable focal length in EXIF; SfM will have to estimate "
                    "it from scratch, which is less reliable", focal["none"])
