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


def test_rtk_positions_outweigh_consumer_gps_in_the_fit():
    """A flight mixing RTK-fixed photos (2 cm) and photos without RTK (consumer GPS, metres of noise):
    each position weighs by its own accuracy, so the fit lands at centimetres; weighting every
    position alike (the consumer default) leaves it decimetres to metres off."""
    from aerosplat.georef import position_accuracy
    from aerosplat.simfit import Similarity, fit_similarity_robust
    from scipy.spatial.transform import Rotation

    utm = parse_delivery_crs("EPSG:32632")
    rng = np.random.default_rng(7)
    truth = Similarity(7.3, Rotation.from_euler("zyx", [31, 2, -1], degrees=True).as_matrix(), np.zeros(3))
    grid = np.array([[x, y, 45.0] for x in np.linspace(-40, 40, 5) for y in np.linspace(-30, 30, 4)])
    origin = to_crs(np.array([[8.5480, 47.3962, 495.0]]), WGS84_3D, utm)[0]
    metas, src = [], []
    for i, local in enumerate(grid):
        rtk = i % 2 == 0
        noisy = local + rng.normal(0, 1, 3) * ([0.02, 0.02, 0.03] if rtk else [2.0, 2.0, 3.0])
        lon, lat, h = to_crs((origin + noisy)[None], utm, WGS84_3D)[0]
        metas.append(ImageMeta(f"{i}.jpg", 10, 10, 10, 10, lat=lat, lon=lon, alt=h, position_source="exif",
                               **({"rtk_flag": 50, "rtk_std_lon": 0.02, "rtk_std_lat": 0.02, "rtk_std_hgt": 0.03}
                                  if rtk else {})))
        src.append(truth.inverse().apply(local[None])[0])  # the camera in the SfM frame, exact
    pos = image_positions(metas, utm, GeorefOptions())
    dst = np.array([pos[m.name][0] - origin for m in metas])
    sig = np.array([pos[m.name][1] for m in metas])
    assert list(sig[0]) == [0.02, 0.02, 0.03] and list(sig[1]) == [2.0, 2.0, 3.0]
    weighted = fit_similarity_robust(np.array(src), dst, sig).sim
    alike = fit_similarity_robust(np.array(src), dst, np.full_like(sig, 2.0)).sim
    err = lambda sim: np.sqrt(np.mean(np.sum((sim.apply(np.array(src)) - grid) ** 2, axis=1)))  # noqa: E731
    rtk = [i for i, m in enumerate(metas) if m.rtk_flag == 50]
    rtk_only = fit_similarity_robust(np.array(src)[rtk], dst[rtk], sig[rtk]).sim
    # As good as ignoring the consumer positions altogether (2.6 cm here, the RTK noise's own share).
    assert err(weighted) < 0.05 and err(weighted) < 1.05 * err(rtk_only), (err(weighted), err(rtk_only))
    assert err(alike) > 0.2, err(alike)  # 0.76 m here
    acc = position_accuracy(metas, pos)
    assert acc["rtk_fixed_share"] == 0.5 and acc["rtk_solutions"] == {"fixed": 10, "none": 10}
    assert acc["accuracy_sources"] == {"default": 10, "rtk": 10}
