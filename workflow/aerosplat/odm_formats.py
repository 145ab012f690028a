"""OpenDroneMap's position files (geo.txt, gcp_list.txt), read as ODM reads them.

Many people who fly drones already have these files from OpenDroneMap/WebODM
projects (or from tools that export for ODM). Accepting them unchanged means no
conversion step and no new format to learn; being strict about everything else
(line numbers, duplicates, unknown images) means a typo fails here, in seconds,
instead of as a mysteriously tilted model hours later.

Formats (https://docs.opendronemap.org/geo/ and /gcp/):

- First line: the coordinate system: ``EPSG:<code>``, ``WGS84 UTM <zone><N|S>``,
  a PROJ string (``+proj=utm +zone=32 +datum=WGS84 +units=m +no_defs``), or ``WGS84``.
- geo.txt lines: ``image x y [z] [yaw pitch roll] [h_acc v_acc] [extras...]``.
- gcp_list.txt lines: ``geo_x geo_y geo_z im_x im_y image [gcp_name] [extras...]``;
  im_x/im_y are pixels in the original (not downscaled) photo. A point whose name starts
  with ``CHK`` (any case: ``CHK1``, ``chk_north``) is a check point (`is_check_point`).
- ``#`` comments and blank lines are ignored (also before the header, which ODM does
  not allow); fields are separated by whitespace.
- As in ODM, geographic coordinates are always x = longitude, y = latitude
  (transformations use ``always_xy``), whatever the axis order of the EPSG code.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyproj import CRS
from pyproj.exceptions import CRSError

from aerosplat.crs import to_crs  # noqa: F401  (re-exported: positions in these files' CRS)
from aerosplat.errors import InputError

log = logging.getLogger(__name__)

CRS_FORMS_HINT = (
    "the first line must be the coordinate system, e.g. 'EPSG:32615', 'WGS84 UTM 15N', "
    "'+proj=utm +zone=15 +datum=WGS84 +units=m +no_defs' or 'EPSG:4326' (then x = longitude, "
    "y = latitude)"
)

_UTM_RE = re.compile(r"^WGS\s*-?\s*84\s+UTM\s+(\d{1,2})\s*([NS])$", re.IGNORECASE)
_EPSG_RE = re.compile(r"^EPSG:\s*(\d+)(\+\d+)?$", re.IGNORECASE)
_WKT_STARTS = ("PROJCRS", "GEOGCRS", "PROJCS", "GEOGCS", "COMPD_CS", "COMPOUNDCRS", "BOUNDCRS")
_GEOGRAPHIC_NAMES = {"WGS84", "WGS 84", "WGS-84", "LATLON", "LONLAT"}


# ---------------------------------------------------------------------------
# Data classes


@dataclass(frozen=True)
class GeoEntry:
    """One image's position (and optional attitude/accuracy) from geo.txt."""

    image: str
    x: float
    y: float
    z: float | None
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    h_acc: float | None = None
    v_acc: float | None = None
    line: int | None = None


@dataclass
class GeoTxt:
    """A parsed geo.txt: its CRS, the header as written, and one entry per image."""

    crs: CRS
    entries: list[GeoEntry]
    crs_text: str = ""
    path: str = ""

    def by_image(self) -> dict[str, GeoEntry]:
        """Entries keyed by image file name."""
        return {e.image: e for e in self.entries}


@dataclass(frozen=True)
class GcpObservation:
    """One sighting of a ground control point in one image."""

    geo_x: float
    geo_y: float
    geo_z: float
    im_x: float
    im_y: float
    image: str
    name: str
    line: int


@dataclass
class GcpList:
    """A parsed gcp_list.txt: its CRS and all observations (several per GCP)."""

    crs: CRS
    observations: list[GcpObservation]
    crs_text: str = ""
    path: str = ""
    names: list[str] = field(default_factory=list)  # distinct GCP names, in file order

    def images(self) -> set[str]:
        """Names of the images that show at least one GCP."""
        return {o.image for o in self.observations}


CHECK_POINT_PREFIX = "CHK"


def is_check_point(name: str) -> bool:
    """Whether a gcp_list.txt point is a check point: its name starts with CHK, in any case.

    Surveyors mark check points like GCPs; keeping them out of the fit makes their residuals an
    independent measure of the result. A prefix keeps one file for both, as ODM users have it.
    """
    return name.upper().startswith(CHECK_POINT_PREFIX)


def split_check_points(gcps: GcpList) -> tuple[GcpList, GcpList]:
    """(control points, check points) of a parsed gcp_list.txt, both in its CRS."""
    def part(check: bool) -> GcpList:
        return GcpList(crs=gcps.crs, crs_text=gcps.crs_text, path=gcps.path,
                       observations=[o for o in gcps.observations if is_check_point(o.name) == check],
                       names=[n for n in gcps.names if is_check_point(n) == check])
    return part(False), part(True)


# ---------------------------------------------------------------------------
# CRS header


def _normalise_crs(crs: CRS) -> CRS:
    """Replace a CRS by its EPSG equivalent when they are the same, so outputs carry a code."""
    try:
        code = crs.to_epsg()
    except CRSError:  # pragma: no cover - defensive
        return crs
    if code is not None:
        candidate = CRS.from_epsg(code)
        if candidate.equals(crs, ignore_axis_order=True):
            return candidate
    return crs


def parse_crs_header(text: str, path: str | Path | None = None, line: int | None = 1) -> CRS:
    """Parse the first line of an ODM position file into a pyproj CRS.

    Accepts ``EPSG:<code>`` (also compound ``EPSG:32615+5703``), ``WGS84 UTM <zone><N|S>``,
    PROJ strings (optionally quoted, as ODM allows), ``WGS84``, and, as a last resort,
    anything else pyproj understands as an authority code or WKT.
    """
    raw = text.strip()
    header = raw.strip("'\"").strip()
    if not header:
        raise InputError("the coordinate system line is empty", path=path, line=line,
                         hint=CRS_FORMS_HINT)
    try:
        m = _UTM_RE.match(header)
        if m:
            zone = int(m.group(1))
            if not 1 <= zone <= 60:
                raise InputError(f"UTM zone {zone} in {raw!r} does not exist (zones are 1 to 60)",
                                 path=path, line=line, hint=CRS_FORMS_HINT)
            return CRS.from_epsg((32600 if m.group(2).upper() == "N" else 32700) + zone)
        if header.upper() in _GEOGRAPHIC_NAMES:
            return CRS.from_epsg(4326)
        m = _EPSG_RE.match(header)
        if m:
            return CRS.from_user_input(f"EPSG:{m.group(1)}{m.group(2) or ''}")
        if header.startswith("+proj") or " +proj=" in f" {header}":
            # ODM writes '+no_defs=True'; PROJ accepts that form too.
            return _normalise_crs(CRS.from_proj4(header))
        if ":" in header or header.upper().startswith(_WKT_STARTS):
            return _normalise_crs(CRS.from_user_input(header))
    except CRSError as exc:
        raise InputError(f"cannot understand the coordinate system {raw!r} ({exc})",
                         path=path, line=line, hint=CRS_FORMS_HINT) from exc
    looks_like_data = len(header.split()) >= 3 and all(_is_number(t) for t in header.split()[1:3])
    hint = CRS_FORMS_HINT
    if looks_like_data:
        hint = "this looks like a data line; " + CRS_FORMS_HINT
    raise InputError(f"unknown coordinate system {raw!r}", path=path, line=line, hint=hint)


# ---------------------------------------------------------------------------
# Shared line reading


def _is_number(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except ValueError:
        return False


def _read_lines(path: Path, what: str, config_key: str) -> list[str]:
    """Read a text file (UTF-8, BOM and CRLF tolerated) or raise an InputError saying why not."""
    if not path.is_file():
        raise InputError(f"{what} not found" + (" (it is a folder)" if path.is_dir() else ""),
                         path=path, hint=f"check the config key `{config_key}`, or remove it "
                                         f"if you have no {what}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not a UTF-8 text file ({exc.reason} at byte {exc.start})",
                         path=path, hint="save it as plain UTF-8 text") from exc
    return text.splitlines()


def _header_and_body(lines: list[str], path: Path,
                     what: str) -> tuple[str, int, Iterator[tuple[int, str]]]:
    """Split a file into its CRS header (first non-blank, non-comment line) and data lines."""
    for i, line in enumerate(lines):
        if line.strip() and not line.strip().startswith("#"):
            header_line = i + 1

            def body() -> Iterator[tuple[int, str]]:
                for j in range(i + 1, len(lines)):
                    stripped = lines[j].strip()
                    if stripped and not stripped.startswith("#"):
                        yield j + 1, stripped
            return line, header_line, body()
    raise InputError(f"{what} is empty", path=path,
                     hint=f"the first line must be the coordinate system, then one line per entry "
                          f"({CRS_FORMS_HINT})")


def _floats(tokens: list[str], names: list[str], path: Path, lineno: int, text: str) -> list[float]:
    """Convert tokens to finite floats or raise an InputError naming the offending field."""
    values = []
    for token, name in zip(tokens, names):
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(f"{name} {token!r} is not a number in line: {text!r}",
                             path=path, line=lineno,
                             hint="fields are separated by spaces or tabs; use '.' as the decimal "
                                  "separator and no thousands separators")
        values.append(value)
    return values


def _missing_image_message(image: str, known: set[str], images_dir: str | Path | None,
                           unusable: Mapping[str, str] | None) -> tuple[str, str]:
    """Message and hint for an image name that is not among the usable images."""
    if unusable and image in unusable:
        return (f"image {image!r} was found but cannot be used ({unusable[image]})",
                "replace the file with a readable copy, or remove the lines naming it")
    where = f"in {images_dir}" if images_dir is not None else "among the given images"
    msg = f"image {image!r} is not {where} ({len(known)} usable images there)"
    close = difflib.get_close_matches(image, sorted(known), n=1)
    lower = {k.lower(): k for k in known}
    if image.lower() in lower:
        hint = f"names are case-sensitive: did you mean {lower[image.lower()]!r}?"
    elif close:
        hint = f"did you mean {close[0]!r}? Use the exact file name, without folders"
    else:
        hint = ("use the exact image file name (no folders); check that the photo is in the images "
                "folder")
    return msg, hint


# ---------------------------------------------------------------------------
# geo.txt

_GEO_COUNTS = "4 (image x y z), 7 (+ yaw pitch roll), 9 (+ horizontal and vertical accuracy)"


def parse_geo_txt(path: str | Path) -> GeoTxt:
    """Parse an ODM geo.txt: CRS header, then ``image x y [z] [yaw pitch roll] [h_acc v_acc]``.

    Like ODM, z may be omitted (3 fields) and a 10th column onwards holds free-form extras,
    which are ignored. 5, 6 and 8 fields are errors (an incomplete optional group).
    """
    path = Path(path)
    lines = _read_lines(path, "geo.txt (image positions file)", "positions.geo_txt")
    header, header_line, body = _header_and_body(lines, path, "geo.txt")
    crs = parse_crs_header(header, path, header_line)
    entries: list[GeoEntry] = []
    seen: dict[str, int] = {}
    for lineno, text in body:
        tokens = text.split()
        n = len(tokens)
        if n < 3 or n in (5, 6, 8):
            raise InputError(f"{n} field(s) in line: {text!r}", path=path, line=lineno,
                             hint=f"each line needs {_GEO_COUNTS} fields separated by spaces; "
                                  "image names must not contain spaces")
        image = tokens[0]
        names = ["x", "y", "z", "yaw", "pitch", "roll", "horizontal accuracy", "vertical accuracy"]
        values: list[float | None] = list(_floats(tokens[1:min(n, 9)], names, path, lineno, text))
        values += [None] * (8 - len(values))
        x, y, z, yaw, pitch, roll, h_acc, v_acc = values
        if image in seen:
            raise InputError(f"image {image!r} is listed twice, on lines {seen[image]} and "
                             f"{lineno}", path=path, line=lineno, hint="keep one line per image")
        seen[image] = lineno
        for label, acc in (("horizontal", h_acc), ("vertical", v_acc)):
            if acc is not None and acc < 0:
                raise InputError(f"{label} accuracy {acc} is negative in line: {text!r}",
                                 path=path, line=lineno, hint="accuracies are in metres, >= 0")
        if crs.is_geographic and not (-180 <= x <= 180 and -90 <= y <= 90):
            raise InputError(f"({x}, {y}) is not a longitude/latitude pair in line: {text!r}",
                             path=path, line=lineno,
                             hint="with a geographic CRS, x is the longitude and y the latitude; "
                                  "check the column order and the CRS on line "
                                  f"{header_line}")
        entries.append(GeoEntry(image, x, y, z, yaw, pitch, roll, h_acc, v_acc, lineno))
    if not entries:
        raise InputError("geo.txt has a coordinate system but no image lines", path=path,
                         hint="add one line per image: image_name x y z; or remove the "
                              "`positions.geo_txt` config key")
    return GeoTxt(crs=crs, entries=entries, crs_text=header.strip(), path=str(path))


# ---------------------------------------------------------------------------
# gcp_list.txt


def parse_gcp_list(path: str | Path, known_images: set[str] | None = None, *,
                   images_dir: str | Path | None = None,
                   unusable: Mapping[str, str] | None = None,
                   min_gcps: int = 3) -> GcpList:
    """Parse an ODM gcp_list.txt: CRS header, then ``geo_x geo_y geo_z im_x im_y image [name]``.

    Lines without a GCP name are grouped by identical ground coordinates and named
    ``gcp01``, ``gcp02``... in order of first appearance. With `known_images`, every
    image named must be one of them (`images_dir` and `unusable` (name -> reason) only
    make the error message more helpful). Fewer than `min_gcps` distinct GCPs is an error.
    """
    path = Path(path)
    lines = _read_lines(path, "gcp_list.txt (ground control points file)",
                       "positions.gcp_list")
    header, header_line, body = _header_and_body(lines, path, "gcp_list.txt")
    crs = parse_crs_header(header, path, header_line)

    rows: list[tuple[int, str, list[float], str, str | None]] = []
    for lineno, text in body:
        tokens = text.split()
        if len(tokens) < 6:
            raise InputError(f"{len(tokens)} field(s) in line: {text!r}", path=path, line=lineno,
                             hint="each line needs at least 6 fields: geo_x geo_y geo_z im_x im_y "
                                  "image_name [gcp_name], separated by spaces or tabs")
        values = _floats(tokens[:5], ["geo_x", "geo_y", "geo_z", "im_x", "im_y"], path, lineno,
                         text)
        image = tokens[5]
        name = tokens[6] if len(tokens) >= 7 else None
        if values[3] < 0 or values[4] < 0:
            raise InputError(f"pixel position ({tokens[3]}, {tokens[4]}) is negative in line: "
                             f"{text!r}", path=path, line=lineno,
                             hint="im_x, im_y are pixel coordinates in the original photo, from "
                                  "its top-left corner; check the column order")
        if crs.is_geographic and not (-180 <= values[0] <= 180 and -90 <= values[1] <= 90):
            raise InputError(f"({tokens[0]}, {tokens[1]}) is not a longitude/latitude pair in "
                             f"line: {text!r}", path=path, line=lineno,
                             hint="with a geographic CRS, geo_x is the longitude and geo_y the "
                                  "latitude; check the column order and the CRS on line "
                                  f"{header_line}")
        if known_images is not None and image not in known_images:
            msg, hint = _missing_image_message(image, known_images, images_dir, unusable)
            raise InputError(msg + f" in line: {text!r}", path=path, line=lineno, hint=hint)
        rows.append((lineno, text, values, image, name))

    # Name unnamed points by their coordinates; check named points are consistent.
    given = {r[4] for r in rows if r[4] is not None}
    by_coords: dict[tuple[float, float, float], str] = {}
    coords_of: dict[str, tuple[tuple[float, float, float], int]] = {}
    counter = 0
    observations: list[GcpObservation] = []
    seen_obs: dict[tuple[str, str], int] = {}
    names: list[str] = []
    for lineno, text, values, image, name in rows:
        xyz = (values[0], values[1], values[2])
        if name is None:
            if xyz not in by_coords:
                while True:
                    counter += 1
                    candidate = f"gcp{counter:02d}"
                    if candidate not in given:
                        break
                by_coords[xyz] = candidate
            name = by_coords[xyz]
        if name in coords_of:
            first_xyz, first_line = coords_of[name]
            if not all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9 * max(1.0, abs(a)))
                       for a, b in zip(first_xyz, xyz)):
                raise InputError(f"GCP {name!r} has different ground coordinates on lines "
                                 f"{first_line} and {lineno}", path=path, line=lineno,
                                 hint="every line of one GCP must repeat the same geo_x geo_y "
                                      "geo_z; give different points different names")
        else:
            coords_of[name] = (xyz, lineno)
            names.append(name)
        key = (name, image)
        if key in seen_obs:
            raise InputError(f"GCP {name!r} is marked twice in image {image!r}, on lines "
                             f"{seen_obs[key]} and {lineno}", path=path, line=lineno,
                             hint="keep one line per GCP and image")
        seen_obs[key] = lineno
        observations.append(GcpObservation(xyz[0], xyz[1], xyz[2], values[3], values[4],
                                           image, name, lineno))

    if len(names) < min_gcps:
        raise InputError(f"{len(names)} distinct ground control point(s) found "
                         f"({', '.join(names) or 'none'}); georeferencing needs at least "
                         f"{min_gcps}",
                         path=path,
                         hint=f"mark at least {min_gcps} GCPs (spread over the area, each in 2 or "
                              "more photos), or remove the `positions.gcp_list` config key to "
                              "use GPS only")
    for name in names:
        count = sum(1 for o in observations if o.name == name)
        if count < 2:
            log.warning("%s: GCP %r is marked in only %d image; it cannot be triangulated and "
                        "only constrains that one view (mark it in 3 or more photos)",
                        path, name, count)
    return GcpList(crs=crs, observations=observations, crs_text=header.strip(), path=str(path),
                   names=names)
