"""Camera calibration from DJI XMP (aerosplat.calibration and its use in ingest): parsers, scaling to a
downscaled image, the ranking of sources, bad tags, and the RTK accuracies of a position."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aerosplat import calibration, ingest
from aerosplat.calibration import Calibration, CalibrationError
from test_ingest import exif_bytes, make_jpeg, run_ingest

# A Phantom 4 RTK photo's XMP as the camera writes it (5472 x 3648, FC6310R), values typed from the
# format: CalibratedFocalLength/OpticalCenter in pixels, DewarpData "date;fx,fy,cx_off,cy_off,k1,k2,p1,p2,k3",
# RTK state and standard deviations in metres.
P4RTK_XMP = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="DJI Meta Data"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"
   xmp:ModifyDate="2023-05-11"
   xmp:CreateDate="2023-05-11"
   tiff:Make="DJI"
   tiff:Model="FC6310R"
   dc:format="image/jpg"
   drone-dji:GpsStatus="RTK"
   drone-dji:AltitudeType="RtkAlt"
   drone-dji:GpsLatitude="46.84260708"
   drone-dji:GpsLongtitude="-91.99455989"
   drone-dji:AbsoluteAltitude="+241.832"
   drone-dji:RelativeAltitude="+44.100"
   drone-dji:GimbalRollDegree="+0.00"
   drone-dji:GimbalYawDegree="+88.70"
   drone-dji:GimbalPitchDegree="-89.90"
   drone-dji:FlightRollDegree="+1.80"
   drone-dji:FlightYawDegree="+89.00"
   drone-dji:FlightPitchDegree="-2.10"
   drone-dji:RtkFlag="50"
   drone-dji:RtkStdLon="0.01384"
   drone-dji:RtkStdLat="0.01583"
   drone-dji:RtkStdHgt="0.02527"
   drone-dji:DewarpData="2022-06-08;3678.870000000000,3671.750000000000,7.020000000000,-8.720000000000,-0.268220000000,0.110590000000,0.000853000000,-0.000312000000,-0.035840000000"
   drone-dji:DewarpFlag="0"
   drone-dji:CalibratedFocalLength="3666.666504"
   drone-dji:CalibratedOpticalCenterX="2736.000000"
   drone-dji:CalibratedOpticalCenterY="1824.000000"
   crs:Version="7.0"
   crs:HasSettings="False"
   crs:HasCrop="False"
   crs:AlreadyApplied="False">
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""

P4RTK = (5472, 3648)


def p4rtk_photo(tmp_path: Path, name: str = "DJI_0001.JPG", size=(547, 365), xmp: bytes = P4RTK_XMP) -> Path:
    """A small JPEG carrying the P4RTK packet. Small pixels, so `orig_size` is passed explicitly where
    the calibration must meet the camera's native size."""
    return make_jpeg(tmp_path / name, size, exif=exif_bytes(gps=(46.8426, -91.9945, 241.8), model="FC6310R",
                                                            focal=8.8, focal_35=24), xmp=xmp)


def test_dewarp_data_parses_to_opencv_at_native_size():
    cal = calibration.parse_dewarp_data(
        "2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26822,0.11059,0.000853,-0.000312,-0.03584", *P4RTK)
    assert (cal.fx, cal.fy) == (3678.87, 3671.75)
    assert (cal.cx, cal.cy) == pytest.approx((2736 + 7.02, 1824 - 8.72))  # offsets from the image centre
    assert (cal.k1, cal.k2, cal.p1, cal.p2, cal.k3) == (-0.26822, 0.11059, 0.000853, -0.000312, -0.03584)
    assert cal.date == "2022-06-08" and cal.source == "dewarp_data"
    model, params = cal.colmap()
    assert model == "FULL_OPENCV" and params == [3678.87, 3671.75, cal.cx, cal.cy, -0.26822, 0.11059, 0.000853,
                                                 -0.000312, -0.03584, 0.0, 0.0, 0.0]
    model, params = calibration.parse_dewarp_data("2022-06-08;3678.87,3671.75,0,0,-0.2,0.1,0,0,0", *P4RTK).colmap()
    assert model == "OPENCV" and len(params) == 8  # k3 = 0: the 8-parameter model


@pytest.mark.parametrize("text, why", [
    ("2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26,0.11,0.0008,-0.0003", "8 comma-separated values"),
    ("2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03,0.1", "10 comma-separated"),
    ("2022-06-08;3678.87,abc,7.02,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03", "'abc' is not a number"),
    ("2022-06-08;3678.87,3671.75,nan,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03", "not a finite number"),
    ("2022-06-08;3678.87,3671.75,900,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03", "far from the centre"),
    ("2022-06-08;36.78,36.71,7.02,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03", "not a plausible focal"),
    ("2022-06-08;3678.87,2671.75,7.02,-8.72,-0.26,0.11,0.0008,-0.0003,-0.03", "differ by more than"),
])
def test_malformed_dewarp_data_is_refused_with_the_reason(text, why):
    with pytest.raises(CalibrationError, match=why):
        calibration.parse_dewarp_data(text, *P4RTK)


def test_scaling_to_a_downscaled_image_keeps_the_angles():
    cal = calibration.parse_dewarp_data("2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26822,0.11059,0,0,0", *P4RTK)
    small = cal.scaled(1600, 1067)
    sx, sy = 1600 / 5472, 1067 / 3648
    assert (small.fx, small.fy, small.cx, small.cy) == pytest.approx((3678.87 * sx, 3671.75 * sy,
                                                                      2743.02 * sx, 1815.28 * sy))
    assert (small.k1, small.k2) == (cal.k1, cal.k2)  # distortion works on normalised coordinates
    # The ray through the image corner is the same at both sizes.
    assert (0 - small.cx) / small.fx == pytest.approx((0 - cal.cx) / cal.fx)


def test_ranking_config_then_dewarp_then_calibrated_focal(caplog):
    xmp = {"DewarpData": "2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26822,0.11059,0.000853,-0.000312,-0.03584",
           "CalibratedFocalLength": "3666.666504", "CalibratedOpticalCenterX": "2736.0",
           "CalibratedOpticalCenterY": "1824.0", "DewarpFlag": 0.0}
    override = calibration.from_config({"width": 5472, "height": 3648, "fx": 3700.0})
    assert calibration.choose("a", xmp, P4RTK, P4RTK, override).source == "config"
    assert calibration.choose("a", xmp, P4RTK, P4RTK).source == "dewarp_data"
    focal_only = calibration.choose("a", {k: v for k, v in xmp.items() if k != "DewarpData"}, P4RTK, P4RTK)
    assert focal_only.source == "calibrated_focal_length" and focal_only.fx == 3666.666504
    assert not focal_only.has_distortion  # nothing known about the lens: the configured model refines it
    assert calibration.choose("a", {}, P4RTK, P4RTK) is None
    # An override for another image size does not apply to these photos.
    other = calibration.from_config({"width": 4000, "height": 3000, "fx": 2800.0})
    assert calibration.choose("a", xmp, P4RTK, P4RTK, other).source == "dewarp_data"
    # A malformed DewarpData: warned, with the photo, the tag and the next source, which is used.
    bad = dict(xmp, DewarpData="2022-06-08;3678.87,3671.75")
    with caplog.at_level(logging.WARNING):
        cal = calibration.choose("DJI_0007.JPG", bad, P4RTK, P4RTK)
    assert cal.source == "calibrated_focal_length"
    assert "DJI_0007.JPG: drone-dji:DewarpData has 2 comma-separated values" in caplog.text
    assert "using drone-dji:CalibratedFocalLength instead" in caplog.text
    # DewarpFlag = 1: the camera already undistorted the pixels.
    flat = calibration.choose("a", dict(xmp, DewarpFlag=1.0), P4RTK, P4RTK)
    assert flat.source == "dewarp_data" and (flat.k1, flat.k2, flat.p1, flat.p2, flat.k3) == (0, 0, 0, 0, 0)


def test_a_calibration_for_another_size_falls_back_to_the_exif_focal(caplog):
    """Photos resized before ingest: DJI's pixel values no longer fit them."""
    xmp = {"DewarpData": "2022-06-08;3678.87,3671.75,7.02,-8.72,-0.26822,0.11059,0.000853,-0.000312,-0.03584",
           "CalibratedFocalLength": "3666.666504", "CalibratedOpticalCenterX": "2736.0",
           "CalibratedOpticalCenterY": "1824.0"}
    exif_focal = 24 / 36 * 1600  # FC6310R's 35 mm equivalent at this width
    with caplog.at_level(logging.WARNING):
        assert calibration.choose("DJI_0001.JPG", xmp, (1600, 1067), (1600, 1067), exif_focal_px=exif_focal) is None
    # DewarpData's principal point is an offset, so only the focal betrays it; the absolute optical centre does.
    assert "DJI_0001.JPG: drone-dji:DewarpData fx = 3678.87 px disagrees with the EXIF focal length (1066.7 px)" \
        in caplog.text
    assert "DJI_0001.JPG: drone-dji:CalibratedFocalLength fx = 3666.67 px disagrees" in caplog.text
    assert "using the EXIF focal length (sensor width or 35 mm equivalent) instead" in caplog.text
    with pytest.raises(CalibrationError, match="principal point .2736, 1824. px is far from the centre"):
        calibration.from_calibrated_focal("1100", "2736", "1824", 1600, 1067)
    # The same tags at their native size agree with the EXIF estimate (P4RTK: 24 mm => 3648 px).
    assert calibration.choose("a", xmp, P4RTK, P4RTK, exif_focal_px=24 / 36 * 5472).source == "dewarp_data"


def test_ingest_reads_a_p4rtk_packet_and_scales_it(tmp_path):
    """The whole packet through ingest: calibration at the ingested size, RTK state, position sigmas."""
    native = make_jpeg(tmp_path / "native.jpg", P4RTK, xmp=P4RTK_XMP,
                       exif=exif_bytes(gps=(46.8426, -91.9945, 241.8), model="FC6310R", focal=8.8, focal_35=24))
    meta = ingest.read_image_meta(native, max_image_size=1600)
    assert (meta.width, meta.height) == (1600, 1067)
    s = 1600 / 5472
    assert meta.calib_source == "dewarp_data" and meta.focal_px_source == "dewarp_data"
    assert meta.focal_px == pytest.approx(3678.87 * s) and meta.calib_cx == pytest.approx(2743.02 * s)
    assert meta.calib_k3 == -0.03584 and meta.dewarp_flag == 0 and meta.calib_date == "2022-06-08"
    assert meta.rtk_flag == 50 and (meta.rtk_std_lon, meta.rtk_std_lat, meta.rtk_std_hgt) == (0.01384, 0.01583, 0.02527)
    assert meta.position_sigma() == (0.01384, 0.01583, 0.02527) and meta.position_accuracy_source == "rtk"
    assert meta.rel_alt == 44.1 and meta.gimbal_pitch == -89.9
    cal = meta.calibration()
    assert isinstance(cal, Calibration) and cal.colmap()[0] == "FULL_OPENCV"


def test_exif_csv_round_trips_calibration_and_rtk(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        p4rtk_photo(images, f"DJI_{i:04d}.JPG", size=(120, 80))
    # The tags describe 5472 x 3648; the photos are 120 x 80: the calibration is refused, the RTK kept.
    metas = run_ingest(tmp_path, images)
    back = ingest.read_exif_csv(tmp_path / "out" / "exif.csv")
    assert back == metas
    assert {m.calib_source for m in back} == {"none"} and {m.focal_px_source for m in back} == {"35mm_equivalent"}
    assert {m.rtk_flag for m in back} == {50} and back[0].position_sigma() == (0.01384, 0.01583, 0.02527)


def test_ingest_calibration_setting_outranks_the_tags_and_is_checked(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        p4rtk_photo(images, f"DJI_{i:04d}.JPG", size=(120, 80))
    metas = run_ingest(tmp_path, images, calibration_config={"width": 120, "height": 80, "fx": 100.0,
                                                             "k1": -0.1})
    assert {(m.calib_source, m.focal_px, m.calib_k1, m.calib_cx) for m in metas} == {("config", 100.0, -0.1, 60.0)}
    from aerosplat.errors import InputError
    with pytest.raises(InputError, match=r"`ingest.calibration` is for 640 x 480 photos, but the photos are 120 x 80"):
        run_ingest(tmp_path, images, calibration_config={"width": 640, "height": 480, "fx": 500.0})
    with pytest.raises(InputError, match="`ingest.calibration` cannot be used: fx = 5 px is not a plausible"):
        run_ingest(tmp_path, images, calibration_config={"width": 120, "height": 80, "fx": 5.0})


def test_position_sigma_ranks_geo_txt_then_rtk_then_default():
    m = ingest.ImageMeta(name="a", width=1, height=1, orig_width=1, orig_height=1, position_source="exif",
                         lat=1.0, lon=1.0, rtk_flag=50, rtk_std_lon=0.012, rtk_std_lat=0.0, rtk_std_hgt=0.03)
    assert m.position_sigma() == (2.0, 2.0, 3.0)  # a zero standard deviation is no accuracy at all
    m.rtk_std_lat = 0.001
    assert m.position_sigma() == (0.012, ingest.RTK_MIN_SIGMA_M, 0.03) and m.position_accuracy_source == "rtk"
    m.position_source, m.h_acc, m.v_acc = "geo_txt", 0.5, 0.8  # geo.txt replaced the position: its accuracy
    assert m.position_sigma() == (0.5, 0.5, 0.8) and m.position_accuracy_source == "geo_txt"


def test_one_colmap_camera_per_make_model_size_and_calibration():
    """sfm's camera groups: photos of one calibrated unit share one OPENCV camera starting at its
    calibration; a second unit (another DewarpData) or an uncalibrated photo gets its own camera."""
    from aerosplat.sfm import SfmOptions, _reader_options, camera_groups

    def photo(name, fx=None, k1=-0.1, model="FC6310R", focal_px=3648.0):
        extra = {} if fx is None else dict(calib_source="dewarp_data", calib_fx=fx, calib_fy=fx, calib_cx=2740.0,
                                            calib_cy=1820.0, calib_k1=k1, calib_k2=0.01, calib_p1=0.0, calib_p2=0.0,
                                            calib_k3=0.0, focal_px=fx, focal_px_source="dewarp_data")
        return ingest.ImageMeta(name=name, width=5472, height=3648, orig_width=5472, orig_height=3648, make="DJI",
                                model=model, **({"focal_px": focal_px, "focal_px_source": "35mm_equivalent"} | extra))

    metas = [photo("a", 3678.9), photo("b", 3678.9), photo("c", 3690.2), photo("d"), photo("e"),
             photo("f", model="FC6310S")]
    groups = camera_groups(metas)
    assert [[m.name for m in g] for g in groups] == [["a", "b"], ["c"], ["d", "e"], ["f"]]
    reader = _reader_options(groups[0], SfmOptions())
    assert reader.camera_model == "OPENCV"
    assert [float(v) for v in reader.camera_params.split(",")] == [3678.9, 3678.9, 2740.0, 1820.0, -0.1, 0.01, 0, 0]
    assert _reader_options(groups[2], SfmOptions()).camera_model == "SIMPLE_RADIAL"  # sfm.camera_model
