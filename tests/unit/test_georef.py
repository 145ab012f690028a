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


# ----------------------------------------------------------------------------- check points

UTM = "EPSG:32632"
ORIGIN = np.array([464000.0, 5249000.0, 450.0])  # local frame origin of the synthetic flight
W, H, FOCAL = 1000, 750, 800.0
# Surveyed ground points, local metres: four control points at the corners, two to check inside.
POINTS = {"gcp1": [-40.0, -30.0, 1.0], "gcp2": [40.0, -28.0, 0.0], "gcp3": [38.0, 32.0, 2.0],
          "gcp4": [-42.0, 30.0, 1.5], "CHK1": [5.0, -4.0, 0.5], "chk2": [-12.0, 14.0, 1.0]}


def _flight(tmp_path):
    """A nadir grid flight seen by an exact SfM model in an arbitrary frame (scale, rotation, shift):
    sparse/ and exif.csv (geo.txt positions with metre noise), and the true marks of `POINTS`."""
    import pycolmap
    from scipy.spatial.transform import Rotation

    from aerosplat.ingest import write_exif_csv
    from aerosplat.simfit import Similarity

    truth = Similarity(7.3, Rotation.from_euler("zyx", [31, 2, -1], degrees=True).as_matrix(), np.array([3.0, -2, 1]))
    inv = truth.inverse()
    R_nadir = np.diag([1.0, -1.0, -1.0])  # camera x east, y south, z down
    rng = np.random.default_rng(5)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=W, height=H,
                                                    params=[FOCAL, W / 2, H / 2], camera_id=1))
    metas, marks = [], []
    for i, (x, y) in enumerate([(x, y) for x in np.linspace(-45, 45, 4) for y in np.linspace(-35, 35, 3)], 1):
        name, centre = f"IMG_{i:04d}.jpg", np.array([x, y, 80.0])
        R = R_nadir @ truth.R  # the camera's rotation from the SfM frame
        im = pycolmap.Image(name=name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(pycolmap.Rotation3d(R),
                                                              -R @ inv.apply(centre[None])[0]))
        e, n, h = (float(v) for v in ORIGIN + centre + rng.normal(0, 1.0, 3))
        metas.append(ImageMeta(name, W, H, W, H, geo_x=e, geo_y=n, geo_z=h, geo_crs=UTM,
                               position_source="geo_txt", h_acc=1.0, v_acc=1.0))
        for label, p in POINTS.items():
            c = R_nadir @ (np.asarray(p) - centre)
            u, v = FOCAL * c[0] / c[2] + W / 2, FOCAL * c[1] / c[2] + H / 2
            if 10 < u < W - 10 and 10 < v < H - 10:
                marks.append((label, u, v, name))
    (tmp_path / "sparse").mkdir()
    rec.write(str(tmp_path / "sparse"))
    write_exif_csv(tmp_path / "exif.csv", metas)
    return marks


def _point_file(path, marks, names, moved=None, rename=None):
    """An ODM gcp_list.txt (UTM) of the points `names`; `moved` {name: shift} falsifies a survey."""
    lines = [UTM]
    for label, u, v, image in marks:
        if label in names:
            e, n, h = ORIGIN + POINTS[label] + np.asarray((moved or {}).get(label, [0, 0, 0]), float)
            lines.append(f"{e:.4f} {n:.4f} {h:.4f} {u:.3f} {v:.3f} {image} {(rename or {}).get(label, label)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _georef(tmp_path, tag, **kw):
    from aerosplat import georef

    out = tmp_path / tag
    return georef.run(tmp_path / "sparse", tmp_path / "exif.csv", out / "sparse", out / "frame.json", crs=UTM, **kw)


def _rows(frame, key="checkpoints"):
    return {r["gcp"]: r for r in frame[key]}


def test_check_point_names():
    from aerosplat.odm_formats import is_check_point

    assert all(is_check_point(n) for n in ("CHK1", "chk_north", "Chk-7"))
    assert not any(is_check_point(n) for n in ("gcp01", "GCP_CHK", "check1", "CH1"))


def test_check_points_stay_out_of_the_fit(tmp_path):
    """Moving a check point's survey by 5 m moves its residual by 5 m and nothing else; the same
    point as a control point would pull the fit."""
    marks = _flight(tmp_path)
    every = list(POINTS)
    a = _georef(tmp_path, "a", gcp_list=_point_file(tmp_path / "a.txt", marks, every))
    b = _georef(tmp_path, "b", gcp_list=_point_file(tmp_path / "b.txt", marks, every, moved={"chk2": [5, 0, 0]}))
    assert a["method"] == "gcp+gps"
    assert sorted(_rows(a, "gcps")) == ["gcp1", "gcp2", "gcp3", "gcp4"]
    assert sorted(_rows(a)) == ["CHK1", "chk2"]  # the prefix in any case
    assert a["sfm_to_local"] == b["sfm_to_local"] and a["origin"] == b["origin"] and a["gcps"] == b["gcps"]
    assert _rows(a)["CHK1"] == _rows(b)["CHK1"]
    assert _rows(b)["chk2"]["dx"] - _rows(a)["chk2"]["dx"] == pytest.approx(5.0, abs=1e-6)
    assert _rows(b)["chk2"]["xyz"] == pytest.approx(list(ORIGIN + POINTS["chk2"] + [5, 0, 0]), abs=1e-6)
    for r in a["checkpoints"]:
        assert r["role"] == "check" and r["used"] == r["observations"] >= 2 and r["reproj_px"] < 1e-3
    assert all(r["role"] == "control" and r["xyz"] for r in a["gcps"])
    # Exact marks, exact model: the check points land within centimetres of their survey.
    assert a["rmse_checkpoints_m"]["count"] == 2 and a["rmse_checkpoints_m"]["horizontal"] < 0.02
    assert a["rmse_gcp_m"]["count"] == 4
    # The same false survey as a control point moves the fit.
    c = _georef(tmp_path, "c", gcp_list=_point_file(tmp_path / "c.txt", marks, every, moved={"chk2": [5, 0, 0]},
                                                     rename={"chk2": "gcp6"}))
    assert len(c["gcps"]) == 5 and c["sfm_to_local"] != a["sfm_to_local"]


def test_check_points_from_their_own_file(tmp_path):
    """`positions.check_points`: any names, any CRS of the format; the same fit as CHK... names give."""
    marks = _flight(tmp_path)
    chk = _point_file(tmp_path / "chk.txt", marks, ["CHK1", "chk2"], rename={"CHK1": "p5", "chk2": "p6"})
    lines = chk.read_text().splitlines()
    wgs = [f"{lon:.10f} {lat:.10f} {h:.4f} " + " ".join(t[3:]) for t in (line.split() for line in lines[1:])
           for lon, lat, h in [to_crs(np.array([[float(v) for v in t[:3]]]), parse_delivery_crs(UTM), WGS84_3D)[0]]]
    # The delivery CRS keeps the file's heights (as for a gcp_list in lon/lat).
    chk.write_text("\n".join(["EPSG:4326", *wgs]) + "\n")
    own = _georef(tmp_path, "own", gcp_list=_point_file(tmp_path / "g.txt", marks, ["gcp1", "gcp2", "gcp3", "gcp4"]),
                  check_points=chk)
    named = _georef(tmp_path, "named", gcp_list=_point_file(tmp_path / "all.txt", marks, list(POINTS)))
    assert own["method"] == "gcp+gps" and len(own["gcps"]) == 4 and sorted(_rows(own)) == ["p5", "p6"]
    assert own["sfm_to_local"] == named["sfm_to_local"]
    for mine, theirs in (("p5", "CHK1"), ("p6", "chk2")):
        assert _rows(own)[mine]["dx"] == pytest.approx(_rows(named)[theirs]["dx"], abs=1e-4)
        assert _rows(own)[mine]["dz"] == pytest.approx(_rows(named)[theirs]["dz"], abs=1e-4)
    # A point cannot be both.
    from aerosplat.errors import InputError

    with pytest.raises(InputError, match="both"):
        _georef(tmp_path, "both", gcp_list=_point_file(tmp_path / "g5.txt", marks, ["gcp1", "gcp2", "gcp3", "gcp4"],
                                                         rename={"gcp4": "p5"}), check_points=chk)


def test_fewer_than_three_control_points_fall_back_to_gps(tmp_path, caplog):
    """Two control points left: `auto` (and `gps`) fits GPS alone, as with no gcp_list, says so, and
    scores every marked point as a check point; a GCP method stops instead."""
    from aerosplat.errors import InputError

    marks = _flight(tmp_path)
    few = _point_file(tmp_path / "few.txt", marks, list(POINTS), rename={"gcp3": "CHK3", "gcp4": "CHK4"})
    with caplog.at_level("WARNING", logger="aerosplat.georef"):
        frame = _georef(tmp_path, "few", gcp_list=few)
    assert any("2 control point(s)" in r.getMessage() and "GPS alone" in r.getMessage() for r in caplog.records)
    gps = _georef(tmp_path, "gps")
    assert frame["method"] == "gps" and frame["gcps"] == [] and frame["rmse_gcp_m"] is None
    assert frame["sfm_to_local"] == gps["sfm_to_local"] and frame["origin"] == gps["origin"]
    assert sorted(_rows(frame)) == sorted(["gcp1", "gcp2", "CHK3", "CHK4", "CHK1", "chk2"])
    assert frame["rmse_checkpoints_m"]["count"] == 6
    assert _georef(tmp_path, "few_gps", gcp_list=few, options={"method": "gps"})["sfm_to_local"] == gps["sfm_to_local"]
    for method in ("gcp+gps", "gcp"):
        with pytest.raises(InputError, match="2 control point"):
            _georef(tmp_path, method, gcp_list=few, options={"method": method})
