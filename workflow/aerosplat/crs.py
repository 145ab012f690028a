"""Choosing and checking the delivery CRS.

Every product is delivered in a projected CRS in metres: the UTM zone of the
scene centroid unless the scene YAML names one. Geometry itself lives in the
*local frame* (delivery CRS minus an origin offset, see `georef`), because
float32 cannot hold UTM coordinates to millimetres.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from .errors import InputError

# WGS 84 geographic with ellipsoidal height: what EXIF GPS is (close enough; DJI
# altitudes may be MSL-referenced, which we carry through unchanged as "z").
WGS84_3D = CRS.from_epsg(4979)


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lat, lon), with the Norway
    and Svalbard exceptions of the UTM grid."""
    if not (-80.0 <= lat <= 84.0):
        raise InputError(
            f"latitude {lat:.4f} is outside UTM coverage (80S..84N)",
            hint="name a polar projected CRS (e.g. EPSG:3413 or EPSG:3031) as `crs` in the scene YAML",
        )
    lon = ((lon + 180.0) % 360.0) - 180.0
    zone = int(math.floor((lon + 180.0) / 6.0)) + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    if 72.0 <= lat < 84.0 and lon >= 0.0:
        if lon < 9.0:
            zone = 31
        elif lon < 21.0:
            zone = 33
        elif lon < 33.0:
            zone = 35
        elif lon < 42.0:
            zone = 37
    zone = min(zone, 60)
    return (32600 if lat >= 0 else 32700) + zone


def parse_delivery_crs(value: str | int, *, source: str = "scene config", key: str = "crs") -> CRS:
    """Resolve the configured delivery CRS; it must be projected and in metres."""
    text = str(value).strip()
    try:
        crs = CRS.from_user_input(f"EPSG:{text}" if text.isdigit() else text)
    except CRSError as exc:
        raise InputError(
            f"`{key}: {value}` is not a CRS pyproj knows ({exc})",
            path=source,
            hint="use an EPSG code such as `EPSG:32632`, or `auto` for the UTM zone of the scene",
        ) from None
    if not crs.is_projected:
        raise InputError(
            f"`{key}: {value}` ({crs.name}) is not a projected CRS",
            path=source,
            hint="deliverables need metres on the ground: pick a projected CRS, e.g. the UTM zone, or `auto`",
        )
    unit = crs.axis_info[0].unit_name if crs.axis_info else ""
    if unit not in ("metre", "meter"):
        raise InputError(
            f"`{key}: {value}` ({crs.name}) has axis unit '{unit}', not metres",
            path=source,
            hint="choose the metric variant of the CRS (most state planes have one), or `auto`",
        )
    return crs


def choose_delivery_crs(configured: str | int | None, lat: np.ndarray, lon: np.ndarray,
                        *, source: str = "scene config") -> CRS:
    """The configured CRS, or the UTM zone of the centroid of the given positions."""
    if configured not in (None, "", "auto"):
        return parse_delivery_crs(configured, source=source)
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        raise InputError(
            "no geographic position to choose a UTM zone from",
            path=source,
            hint="set `crs: EPSG:<code>` in the scene YAML, or provide GPS (EXIF, geo.txt or gcp_list.txt)",
        )
    # Mean of unit vectors: correct across the antimeridian.
    lam = np.radians(lon[ok])
    mean_lon = math.degrees(math.atan2(np.sin(lam).mean(), np.cos(lam).mean()))
    return CRS.from_epsg(utm_epsg(float(lat[ok].mean()), mean_lon))


AREA_MARGIN_DEG = 1.0
"""How far (degrees) outside a CRS's published area of use positions may lie (a scene across a zone edge)."""


def check_area_of_use(crs: CRS, lat: npt.ArrayLike, lon: npt.ArrayLike, *, configured: str | int,
                      source: str = "scene config", key: str = "crs") -> None:
    """Refuse a configured CRS whose area of use (EPSG's, plus AREA_MARGIN_DEG) misses the positions.

    A UTM zone 100 degrees away still projects, into northings of 11,000 km and a wrong scale:
    a silent wrong result. The message names the CRS, its area and what `auto` would pick.
    """
    area = crs.area_of_use
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    ok = np.isfinite(lat) & np.isfinite(lon)
    if area is None or not ok.any():
        return
    lat, lon = lat[ok], lon[ok]
    w, s, e, n = area.bounds
    m = AREA_MARGIN_DEG
    lon_in = (lon >= w - m) & (lon <= e + m) if w <= e else (lon >= w - m) | (lon <= e + m)  # across 180
    outside = ~(lon_in & (lat >= s - m) & (lat <= n + m))
    if not outside.any():
        return
    auto = choose_delivery_crs("auto", lat, lon)
    raise InputError(
        f"`{key}: {configured}` ({crs.name}) is made for {area.name.rstrip('.')} (longitude {w:g} to {e:g}, "
        f"latitude {s:g} to {n:g}), but {int(outside.sum())} of {len(lat)} photo positions lie outside it, "
        f"e.g. latitude {lat[outside][0]:.5f}, longitude {lon[outside][0]:.5f}",
        path=source,
        hint=f"use `{key}: auto` (here EPSG:{auto.to_epsg()}, {auto.name}) or a CRS made for this area",
    )


def to_crs(points_xyz: npt.ArrayLike, src_crs: CRS | str | int, dst_crs: CRS | str | int) -> np.ndarray:
    """Transform points [N, 3] or [3] from `src_crs` to `dst_crs` (x = lon/easting, y = lat/northing).

    Returns a new float64 array of the same shape. Raises pyproj's ProjError when a point
    cannot be transformed (e.g. far outside the target projection) rather than returning inf.
    """
    pts = np.array(points_xyz, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(-1, 3)
    if pts.shape[-1] != 3 or pts.ndim not in (1, 2):
        raise ValueError(f"expected points of shape (N, 3) or (3,), got {pts.shape}")
    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if src == dst:
        return pts
    flat = pts.reshape(-1, 3)
    x, y, z = Transformer.from_crs(src, dst, always_xy=True).transform(flat[:, 0], flat[:, 1], flat[:, 2],
                                                                        errcheck=True)
    return np.column_stack([np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)]).reshape(pts.shape)
