import numpy as np
import pytest

from aerosplat.crs import WGS84_3D, parse_delivery_crs, to_crs
from aerosplat.georef import GeorefOptions, image_positions, triangulate_rays
from aerosplat.ingest import ImageMeta


def test_triangulate_rays_recovers_point():
    rng = np.random.default_rng(3)
    X = np.array([10.0, -4.0, 2.0])
    origins = rng.normal(0, 20, (5, 3)) + [0, 0, 60]
    dirs = X - origins
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert np.allclose(triangulate_rays(origins, dirs), X, atol=1e-9)


def test_positions_from_exif_and_geo_txt_land_in_delivery_crs():
    utm = parse_delivery_crs("EPSG:32632")
    # The same spot given as EXIF lat/lon and as geo.txt in UTM (ODM header style) and in lon/lat.
    lon, lat, h = 8.5480, 47.3962, 512.0
    e, n, _ = to_crs(np.array([[lon, lat, h]]), WGS84_3D, utm)[0]
    metas = [
        ImageMeta("a.jpg", 10, 10, 10, 10, lat=lat, lon=lon, alt=h, position_source="exif"),
        ImageMeta("b.jpg", 10, 10, 10, 10, geo_x=e, geo_y=n, geo_z=h, geo_crs="WGS84 UTM 32N",
                  position_source="geo_txt", h_acc=0.02, v_acc=0.05),
        ImageMeta("c.jpg", 10, 10, 10, 10, geo_x=lon, geo_y=lat, geo_z=h, geo_crs="EPSG:4326",
                  position_source="geo_txt"),
        ImageMeta("d.jpg", 10, 10, 10, 10),  # no position at all
    ]
    pos = image_positions(metas, utm, GeorefOptions(gps_sigma_h_m=2.0, gps_sigma_v_m=3.0))
    assert set(pos) == {"a.jpg", "b.jpg", "c.jpg"}
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        assert pos[name][0] == pytest.approx([e, n, h], abs=1e-6)
    assert list(pos["a.jpg"][1]) == [2.0, 2.0, 3.0]          # defaults for EXIF GPS
    assert list(pos["b.jpg"][1]) == [0.02, 0.02, 0.05]       # geo.txt's own accuracies
    assert pos["b.jpg"][2] == "geo_txt"
