import numpy as np
import pytest

from aerosplat.crs import WGS84_3D, choose_delivery_crs, parse_delivery_crs, to_crs, utm_epsg
from aerosplat.errors import InputError


@pytest.mark.parametrize("lat,lon,epsg", [
    (47.3962, 8.5480, 32632),     # Zurich
    (29.76, -95.09, 32615),       # Texas (brighton_beach)
    (-33.86, 151.21, 32756),      # Sydney, southern hemisphere
    (60.39, 5.32, 32632),         # Bergen: Norway exception (would be 31)
    (78.22, 15.65, 32633),        # Svalbard exception
    (0.0, 179.99, 32660),
    (10.0, -180.0, 32601),
])
def test_utm_zone(lat, lon, epsg):
    assert utm_epsg(lat, lon) == epsg


def test_auto_uses_centroid_and_wraps_antimeridian():
    crs = choose_delivery_crs("auto", np.array([-16.5, -16.6]), np.array([179.9, -179.9]))
    assert crs.to_epsg() in (32701, 32760)


def test_configured_crs_must_be_projected_metres():
    assert parse_delivery_crs("EPSG:2056").to_epsg() == 2056  # Swiss LV95
    assert parse_delivery_crs(32615).to_epsg() == 32615
    with pytest.raises(InputError, match="not a CRS pyproj knows"):
        parse_delivery_crs("EPSG:999999", source="config/scenes/x.yaml")
    with pytest.raises(InputError, match="not a projected CRS"):
        parse_delivery_crs("EPSG:4326")
    with pytest.raises(InputError, match="not metres"):
        parse_delivery_crs("EPSG:2277")  # Texas central, US survey feet


def test_lonlat_to_utm_known_points():
    utm32 = parse_delivery_crs("EPSG:32632")
    # On the zone's central meridian (9 E) at the equator: false easting 500 km, northing 0.
    xyz = to_crs(np.array([[9.0, 0.0, 12.5], [8.0, 47.0, 400.0], [10.0, 47.0, 400.0]]), WGS84_3D, utm32)
    assert xyz[0] == pytest.approx([500_000.0, 0.0, 12.5], abs=1e-3)
    # Symmetric about the central meridian; heights pass through unchanged.
    assert xyz[1, 0] - 500_000.0 == pytest.approx(500_000.0 - xyz[2, 0], abs=1e-3)
    assert xyz[1, 1] == pytest.approx(xyz[2, 1], abs=1e-3)
    assert xyz[1, 2] == 400.0
    # One degree of longitude at 47 N is about 76 km (scale factor 0.9996 included).
    assert 500_000.0 - xyz[1, 0] == pytest.approx(76_000, rel=0.01)
