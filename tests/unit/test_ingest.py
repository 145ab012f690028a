"""Unit tests for aerosplat.ingest (stage 1): metadata, focal length, verification, outputs."""

from __future__ import annotations

import csv
import hashlib
import logging
import struct
from pathlib import Path

import piexif
import pytest
from PIL import Image, ImageFile

from aerosplat import ingest
from aerosplat.errors import InputError
from aerosplat.ingest import ImageMeta

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
BRIGHTON = DATASETS / "brighton_beach" / "images"

DJI_NS = "http://www.dji.com/drone-dji/1.0/"


# ---------------------------------------------------------------------------
# Building test photos


def _rational(value: float, den: int = 10000) -> tuple[int, int]:
    return round(value * den), den


def _dms(deg: float) -> tuple[tuple[int, int], ...]:
    deg = abs(deg)
    d = int(deg)
    m = int((deg - d) * 60)
    s = (deg - d - m / 60) * 3600
    return (d, 1), (m, 1), _rational(s)


def exif_bytes(*, gps: tuple[float, float, float] | None = None, alt_ref: int = 0,
               make: str | None = "DJI", model: str | None = "FC300S",
               focal: float | None = 3.61, focal_35: int | None = 20,
               focal_plane: tuple[tuple[int, int], int] | None = None,
               datetime: str | None = "2016:06:23 16:31:59") -> bytes:
    """An EXIF block (b'Exif\\0\\0...') made with piexif."""
    zeroth: dict[int, object] = {}
    exif: dict[int, object] = {}
    gps_ifd: dict[int, object] = {}
    if make:
        zeroth[piexif.ImageIFD.Make] = make.encode()
    if model:
        zeroth[piexif.ImageIFD.Model] = model.encode()
    if focal is not None:
        exif[piexif.ExifIFD.FocalLength] = _rational(focal, 100)
    if focal_35 is not None:
        exif[piexif.ExifIFD.FocalLengthIn35mmFilm] = focal_35
    if focal_plane is not None:
        exif[piexif.ExifIFD.FocalPlaneXResolution] = focal_plane[0]
        exif[piexif.ExifIFD.FocalPlaneResolutionUnit] = focal_plane[1]
    if datetime:
        exif[piexif.ExifIFD.DateTimeOriginal] = datetime.encode()
    if gps is not None:
        lat, lon, alt = gps
        gps_ifd = {
            piexif.GPSIFD.GPSLatitudeRef: b"S" if lat < 0 else b"N",
            piexif.GPSIFD.GPSLatitude: _dms(lat),
            piexif.GPSIFD.GPSLongitudeRef: b"W" if lon < 0 else b"E",
            piexif.GPSIFD.GPSLongitude: _dms(lon),
            piexif.GPSIFD.GPSAltitudeRef: alt_ref,
            piexif.GPSIFD.GPSAltitude: _rational(alt, 1000),
        }
    return piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps_ifd})


def dji_xmp(*, as_elements: bool = False, namespace: str = DJI_NS, **values: str) -> bytes:
    """A DJI-style XMP packet; values as attributes of rdf:Description or as child elements."""
    if as_elements:
        attrs = ""
        children = "".join(f"<drone-dji:{k}>{v}</drone-dji:{k}>" for k, v in values.items())
    else:
        attrs = " ".join(f'drone-dji:{k}="{v}"' for k, v in values.items())
        children = ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="DJI Meta Data" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        f'xmlns:drone-dji="{namespace}" tiff:Make="DJI" {attrs}>{children}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def insert_xmp_segment(jpeg: bytes, xmp: bytes) -> bytes:
    """Insert an APP1 XMP segment right after SOI, as cameras write it."""
    assert jpeg[:2] == b"\xff\xd8"
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def make_jpeg(path: Path, size: tuple[int, int] = (120, 90), *, exif: bytes | None = None,
              xmp: bytes | None = None, seed: int = 0) -> Path:
    """A small JPEG with some texture (so it is not trivially compressible)."""
    im = Image.effect_noise(size, 40 + seed).convert("RGB")
    kwargs = {"quality": 90}
    if exif is not None:
        kwargs["exif"] = exif
    im.save(path, "JPEG", **kwargs)
    if xmp is not None:
        path.write_bytes(insert_xmp_segment(path.read_bytes(), xmp))
    return path


def make_truncated_jpeg(path: Path) -> Path:
    make_jpeg(path, (200, 150), exif=exif_bytes(gps=(46.84, -91.99, 198.0)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BRIGHTON_GPS = (46.842607083, -91.994559889, 198.309)


def survey(folder: Path, n: int = 3, *, gps: bool = True, size: tuple[int, int] = (120, 90)) -> Path:
    """A folder of n small drone-like JPEGs 10 m apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        position = (BRIGHTON_GPS[0] + i * 1e-4, BRIGHTON_GPS[1], BRIGHTON_GPS[2]) if gps else None
        make_jpeg(folder / f"DJI_{i + 1:04d}.JPG", size, exif=exif_bytes(gps=position),
                  xmp=dji_xmp(RelativeAltitude="+40.00", GimbalPitchDegree="-90.00"), seed=i)
    return folder


def run_ingest(tmp_path: Path, images: Path, **kwargs) -> list[ImageMeta]:
    out = tmp_path / "out"
    return ingest.run(images, out / "images", out / "exif.csv",
                      out_skipped_csv=out / "skipped.csv", **kwargs)


def outputs(tmp_path: Path) -> list[Path]:
    out = tmp_path / "out"
    return [p for p in (out / "images", out / "exif.csv", out / "skipped.csv") if p.exists()]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------
# Pure helpers


def test_gps_degrees_signs_and_bad_values() -> None:
    from fractions import Fraction

    dms = [Fraction(46), Fraction(50), Fraction(66771, 2000)]
    assert ingest.gps_degrees(dms, "N") == pytest.approx(46.842607083)
    assert ingest.gps_degrees(dms, "S") == pytest.approx(-46.842607083)
    assert ingest.gps_degrees([Fraction(91), Fraction(59), Fraction(40)], "W") < 0
    assert ingest.gps_degrees([12.5], "E") == 12.5  # decimal degrees in one value
    assert ingest.gps_degrees(None, "N") is None
    assert ingest.gps_degrees([1, "x", 2], "N") is None


def test_scaled_size_never_upscales() -> None:
    assert ingest.scaled_size(4000, 2250, 1600) == (1600, 900)
    assert ingest.scaled_size(2250, 4000, 1600) == (900, 1600)
    assert ingest.scaled_size(1000, 500, 1600) == (1000, 500)
    assert ingest.scaled_size(1600, 900, 1600) == (1600, 900)
    assert ingest.scaled_size(4000, 2250, None) == (4000, 2250)


@pytest.mark.parametrize("model, width", [
    ("FC300S", 6.17), ("FC300X", 6.17), ("FC330", 6.17), ("FC6310", 13.2), ("FC6310S", 13.2),
    ("FC6310R", 13.2), ("FC220", 6.17), ("FC7303", 6.17), ("L1D-20c", 13.2), ("FC3582", 9.7),
    ("ZenmuseP1", 35.9), (" fc300s ", 6.17), ("Unknown-Cam", None), (None, None),
])
def test_camera_table(model: str | None, width: float | None) -> None:
    assert ingest.camera_sensor_width(model) == width


def test_focal_plane_sensor_width_units_and_plausibility() -> None:
    assert ingest.focal_plane_sensor_width(4000, 4000 / 13.2 * 25.4, 2) == pytest.approx(13.2)
    assert ingest.focal_plane_sensor_width(4000, 4000 / 1.32, 3) == pytest.approx(13.2)
    assert ingest.focal_plane_sensor_width(4000, 4000 / 13.2, 4) == pytest.approx(13.2)
    assert ingest.focal_plane_sensor_width(4000, 4000 / 13.2 * 25.4, None) == pytest.approx(13.2)
    assert ingest.focal_plane_sensor_width(4000, 72, 2) is None  # 1411 mm: a "72 dpi" value
    assert ingest.focal_plane_sensor_width(4000, 4000 / 0.5, 4) is None  # 0.5 mm
    assert ingest.focal_plane_sensor_width(4000, 1000, 1) is None  # unit 1 = no unit
    assert ingest.focal_plane_sensor_width(4000, None, 2) is None


def test_focal_in_pixels_sources() -> None:
    # Phantom 3 at 1600 px wide: 3.61 mm / 6.17 mm * 1600 px.
    # A sensor width measured into the EXIF wins.
    px, src = ingest.focal_in_pixels(focal_mm=3.61, focal_35mm=20, sensor_width_mm=6.17,
                                     width=1600, height=900, orig_width=4000)
    assert src == "sensor_width" and round(px) == 936
    # A nominal (table) sensor width comes after the manufacturer's 35 mm equivalent, over the width.
    px, src = ingest.focal_in_pixels(focal_mm=3.61, focal_35mm=20, sensor_width_mm=6.17,
                                     width=1600, height=900, orig_width=4000, sensor_width_source="camera_table")
    assert src == "35mm_equivalent" and px == pytest.approx(20 / 36 * 1600)
    px, src = ingest.focal_in_pixels(focal_mm=3.61, focal_35mm=None, sensor_width_mm=6.17,
                                     width=1600, height=900, orig_width=4000, sensor_width_source="camera_table")
    assert src == "sensor_width" and round(px) == 936
    px, src = ingest.focal_in_pixels(focal_mm=3.61, focal_35mm=20, sensor_width_mm=None,
                                     width=1600, height=900, orig_width=4000)
    assert src == "35mm_equivalent" and px == pytest.approx(20 / 36 * 1600)
    assert ingest.focal_in_pixels(focal_mm=3.61, focal_35mm=None, sensor_width_mm=None,
                                  width=1600, height=900, orig_width=4000) == (None, "none")


# ---------------------------------------------------------------------------
# Metadata of one photo


def test_read_image_meta_exif_and_xmp(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "DJI_0001.JPG", (400, 225),
                     exif=exif_bytes(gps=(-33.5, -70.25, 512.5)),
                     xmp=dji_xmp(RelativeAltitude="+39.80", AbsoluteAltitude="+600.0",
                                 GimbalPitchDegree="-89.90", GimbalYawDegree="+45.00",
                                 GimbalRollDegree="+0.00", FlightYawDegree="+46.00"))
    meta = ingest.read_image_meta(path, max_image_size=160)
    assert (meta.name, meta.width, meta.height, meta.orig_width, meta.orig_height) == \
        ("DJI_0001.JPG", 160, 90, 400, 225)
    assert (meta.make, meta.model, meta.focal_mm, meta.focal_35mm) == ("DJI", "FC300S", 3.61, 20)
    assert (meta.sensor_width_mm, meta.sensor_width_source) == (6.17, "camera_table")
    assert meta.focal_px_source == "35mm_equivalent"
    assert meta.focal_px == pytest.approx(20 / 36 * 160)
    assert meta.lat == pytest.approx(-33.5, abs=1e-7) and meta.lon == pytest.approx(-70.25, abs=1e-7)
    assert meta.alt == pytest.approx(512.5)  # EXIF wins over XMP AbsoluteAltitude
    assert (meta.rel_alt, meta.gimbal_pitch, meta.gimbal_yaw, meta.gimbal_roll, meta.flight_yaw) \
        == (39.8, -89.9, 45.0, 0.0, 46.0)
    assert meta.datetime == "2016:06:23 16:31:59"
    assert meta.position_source == "exif"
    assert meta.geo_x is meta.geo_crs is meta.h_acc is None


def test_xmp_values_as_child_elements(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", exif=exif_bytes(gps=None),
                     xmp=dji_xmp(as_elements=True, RelativeAltitude="+120.5",
                                 GimbalPitchDegree="-45.0", AbsoluteAltitude="+310.25"))
    meta = ingest.read_image_meta(path)
    assert meta.rel_alt == 120.5 and meta.gimbal_pitch == -45.0
    assert meta.alt == 310.25  # no EXIF GPS altitude: XMP AbsoluteAltitude is used
    assert meta.position_source == "none"


def test_xmp_other_namespace_ignored_and_bad_xmp_tolerated(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    other = make_jpeg(tmp_path / "other.jpg", xmp=dji_xmp(namespace="http://example.com/cam/",
                                                          RelativeAltitude="50"))
    assert ingest.read_image_meta(other).rel_alt is None
    bad = make_jpeg(tmp_path / "bad.jpg", xmp=b"<x:xmpmeta><unclosed>")
    with caplog.at_level(logging.WARNING):
        meta = ingest.read_image_meta(bad)
    assert meta.rel_alt is None and "XMP" in caplog.text


def test_gps_altitude_below_sea_level(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", exif=exif_bytes(gps=(31.5, 35.5, 420.0), alt_ref=1))
    meta = ingest.read_image_meta(path)
    assert meta.alt == pytest.approx(-420.0)
    assert meta.lat > 0 and meta.lon > 0


def test_gps_zero_zero_is_no_fix(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", exif=exif_bytes(gps=(0.0, 0.0, 0.0)))
    assert ingest.read_image_meta(path).position_source == "none"


@pytest.mark.parametrize("focal_plane, expected_sensor", [
    (((round(120 / 6.4 * 25.4 * 100), 100), 2), 6.4),   # pixels per inch
    (((round(120 / 0.64 * 100), 100), 3), 6.4),          # pixels per cm
    (((round(120 / 6.4 * 100), 100), 4), 6.4),           # pixels per mm
])
def test_focal_from_focal_plane_resolution(tmp_path: Path, focal_plane, expected_sensor) -> None:
    path = make_jpeg(tmp_path / "a.jpg", (120, 90),
                     exif=exif_bytes(model="SomeCam", focal=4.5, focal_plane=focal_plane))
    meta = ingest.read_image_meta(path, max_image_size=60)
    assert meta.sensor_width_source == "exif_focal_plane"
    assert meta.sensor_width_mm == pytest.approx(expected_sensor, rel=1e-3)
    assert meta.focal_px == pytest.approx(4.5 / expected_sensor * 60, rel=1e-3)


def test_implausible_focal_plane_falls_back_to_table(tmp_path: Path) -> None:
    # 10 px/inch on a 120 px wide image would mean a 305 mm wide sensor: ignored.
    path = make_jpeg(tmp_path / "a.jpg", (120, 90),
                     exif=exif_bytes(model="FC6310", focal=8.8, focal_35=None,
                                     focal_plane=((10, 1), 2)))
    meta = ingest.read_image_meta(path)
    assert (meta.sensor_width_mm, meta.sensor_width_source) == (13.2, "camera_table")
    assert meta.focal_px == pytest.approx(8.8 / 13.2 * 120)


def test_focal_35mm_fallback_and_none(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", (120, 90), exif=exif_bytes(model="NoSuchCam", focal_35=24))
    meta = ingest.read_image_meta(path)
    assert meta.sensor_width_source == "none" and meta.sensor_width_mm is None
    assert meta.focal_px_source == "35mm_equivalent"
    assert meta.focal_px == pytest.approx(24 / 36 * 120)
    bare = make_jpeg(tmp_path / "b.jpg", (120, 90),
                     exif=exif_bytes(make=None, model=None, focal=None, focal_35=None))
    meta = ingest.read_image_meta(bare)
    assert (meta.focal_px, meta.focal_px_source, meta.make) == (None, "none", None)


# ---------------------------------------------------------------------------
# The stage


def mixed_folder(tmp_path: Path) -> Path:
    """2 small JPEGs, a large one, a truncated JPEG, a PNG without EXIF, a TIFF, clutter."""
    folder = tmp_path / "images"
    survey(folder, 2, size=(80, 60))
    make_jpeg(folder / "big.jpeg", (400, 300), exif=exif_bytes(gps=(46.8427, -91.9946, 199.0)),
              xmp=dji_xmp(RelativeAltitude="+40.1"))
    make_truncated_jpeg(folder / "DJI_0003.JPG")
    Image.effect_noise((80, 60), 30).convert("RGB").save(folder / "plain.PNG")
    tif = Image.effect_noise((300, 200), 30).convert("RGB")
    tif.save(folder / "multi.tif", exif=exif_bytes(gps=(46.8428, -91.9947, 197.0)))
    (folder / "notes.txt").write_text("flight log")
    (folder / "._DJI_0001.JPG").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (folder / "sub").mkdir()
    return folder


def test_run_mixed_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = mixed_folder(tmp_path)
    with caplog.at_level(logging.INFO):
        metas = run_ingest(tmp_path, folder, max_image_size=100)
    out = tmp_path / "out"
    names = ["DJI_0001.JPG", "DJI_0002.JPG", "big.jpeg", "multi.tif", "plain.PNG"]
    assert [m.name for m in metas] == names
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(names)

    # The truncated photo is skipped, logged and listed with a reason.
    skipped = read_csv(out / "skipped.csv")
    assert [r["name"] for r in skipped] == ["DJI_0003.JPG"]
    assert "truncated" in skipped[0]["reason"]
    assert any(r.levelno == logging.WARNING and "DJI_0003.JPG" in r.getMessage()
               and "truncated" in r.getMessage() for r in caplog.records)
    assert "\r" not in caplog.text

    by_name = {m.name: m for m in metas}
    # Downscaled: longest side 100, aspect kept, EXIF GPS and XMP still in the output file.
    big = by_name["big.jpeg"]
    assert (big.width, big.height, big.orig_width, big.orig_height) == (100, 75, 400, 300)
    with Image.open(out / "images" / "big.jpeg") as im:
        assert im.format == "JPEG" and im.size == (100, 75)
        assert im.getxmp()["xmpmeta"]["RDF"]["Description"]["RelativeAltitude"] == "+40.1"
    gps = piexif.load(str(out / "images" / "big.jpeg"))["GPS"]
    assert gps[piexif.GPSIFD.GPSLatitudeRef] == b"N" and gps[piexif.GPSIFD.GPSLongitudeRef] == b"W"
    assert big.focal_px == pytest.approx(20 / 36 * 100)  # 35 mm equivalent over the width
    # Smaller than the limit: copied byte for byte, never upscaled.
    for name in ("DJI_0001.JPG", "plain.PNG"):
        assert (out / "images" / name).read_bytes() == (folder / name).read_bytes()
    small = by_name["DJI_0001.JPG"]
    assert (small.width, small.height, small.orig_width) == (80, 60, 80)
    # PNG without EXIF: usable, but nothing known about it.
    png = by_name["plain.PNG"]
    assert (png.width, png.height, png.make, png.focal_px_source, png.position_source) == \
        (80, 60, None, "none", "none")
    # TIFF: downscaled in its own format, EXIF GPS kept.
    tif = by_name["multi.tif"]
    assert (tif.width, tif.height, tif.position_source) == (100, 67, "exif")
    with Image.open(out / "images" / "multi.tif") as im:
        assert im.format == "TIFF" and im.size == (100, 67)
    again = ingest.read_image_meta(out / "images" / "multi.tif")
    assert again.lat == pytest.approx(46.8428) and again.orig_width == 100

    # exif.csv has the documented columns and reads back identically.
    rows = read_csv(out / "exif.csv")
    assert tuple(rows[0].keys()) == ingest.EXIF_CSV_COLUMNS
    assert ingest.read_exif_csv(out / "exif.csv") == metas
    # No temporary leftovers beside the outputs.
    assert sorted(p.name for p in out.iterdir()) == ["exif.csv", "images", "skipped.csv"]


def test_run_downscales_all_and_reads_back_types(tmp_path: Path) -> None:
    metas = run_ingest(tmp_path, survey(tmp_path / "images", 3), max_image_size=60)
    assert all((m.width, m.height) == (60, 45) for m in metas)
    back = ingest.read_exif_csv(tmp_path / "out" / "exif.csv")
    assert back == metas
    first = back[0]
    assert isinstance(first.width, int) and isinstance(first.focal_px, float)
    assert isinstance(first.lat, float) and first.geo_x is None and first.make == "DJI"
    assert first.rel_alt == 40.0 and first.gimbal_pitch == -90.0
    assert read_csv(tmp_path / "out" / "skipped.csv") == []


def test_run_without_downscale_copies_bytes(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3)
    run_ingest(tmp_path, folder)
    for src in folder.iterdir():
        copy = tmp_path / "out" / "images" / src.name
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_run_threads_give_same_result(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path)
    one = run_ingest(tmp_path, folder, max_image_size=100)
    two = ingest.run(folder, tmp_path / "o2" / "images", tmp_path / "o2" / "exif.csv",
                     out_skipped_csv=tmp_path / "o2" / "skipped.csv", max_image_size=100, threads=2)
    assert one == two


def test_truncated_detected_even_if_pillow_set_to_tolerate(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    folder = survey(tmp_path / "images", 3)
    make_truncated_jpeg(folder / "DJI_0009.JPG")
    metas = run_ingest(tmp_path, folder)
    assert [m.name for m in metas] == ["DJI_0001.JPG", "DJI_0002.JPG", "DJI_0003.JPG"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_not_an_image_is_skipped(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3)
    (folder / "fake.jpg").write_text("this is not a photo")
    (folder / "empty.JPG").write_bytes(b"")
    Image.new("RGB", (10, 10)).save(folder / "gif_inside.png", "GIF")
    run_ingest(tmp_path, folder)
    reasons = {r["name"]: r["reason"] for r in read_csv(tmp_path / "out" / "skipped.csv")}
    assert set(reasons) == {"empty.JPG", "fake.jpg", "gif_inside.png"}
    assert "GIF" in reasons["gif_inside.png"]


def test_too_few_images(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 2)
    make_truncated_jpeg(folder / "DJI_0007.JPG")
    # Stale outputs from an earlier run must not survive a failed run.
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "exif.csv").write_text("old")
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, folder)
    message = str(err.value)
    assert "only 2 usable photo(s)" in message and "at least 3" in message
    assert "1 unreadable file(s) skipped: DJI_0007.JPG" in message
    assert str(folder) in message and err.value.hint
    assert outputs(tmp_path) == []
    assert not [p for p in (tmp_path / "out").iterdir()]  # no temporary leftovers either


def test_min_images_is_configurable(tmp_path: Path) -> None:
    assert len(run_ingest(tmp_path, survey(tmp_path / "images", 2), min_images=2)) == 2


def test_no_position_source(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3, gps=False)
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, folder)
    message = str(err.value)
    assert "no position source" in message
    assert "`positions.geo_txt`" in message and "`positions.gcp_list`" in message and "GPS" in message
    assert outputs(tmp_path) == []


GCPS = """\
WGS84 UTM 15N
576010.0 5187510.0 160.0 12 8 DJI_0001.JPG
576010.0 5187510.0 160.0 13 8 DJI_0002.JPG
576050.0 5187520.0 161.0 22 9 DJI_0001.JPG
576050.0 5187520.0 161.0 22 9 DJI_0003.JPG
576030.0 5187560.0 159.5 10 19 DJI_0002.JPG
576030.0 5187560.0 159.5 15 19 DJI_0003.JPG
"""


def test_no_gps_but_gcp_list_is_fine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = survey(tmp_path / "images", 3, gps=False)
    gcp = tmp_path / "gcp_list.txt"
    gcp.write_text(GCPS)
    with caplog.at_level(logging.INFO):
        metas = run_ingest(tmp_path, folder, gcp_list=gcp)
    assert all(m.position_source == "none" for m in metas)
    assert "6 observations of 3 GCPs in 3 images" in caplog.text


def test_gcp_list_with_unknown_or_skipped_image(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3)
    make_truncated_jpeg(folder / "DJI_0004.JPG")
    gcp = tmp_path / "gcp_list.txt"
    gcp.write_text(GCPS + "576030.0 5187560.0 159.5 15 19 DJI_0099.JPG\n")
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, folder, gcp_list=gcp)
    assert err.value.line == 8 and "'DJI_0099.JPG'" in str(err.value)
    assert str(folder) in str(err.value)
    assert outputs(tmp_path) == []
    gcp.write_text(GCPS + "576030.0 5187560.0 159.5 15 19 DJI_0004.JPG\n")
    with pytest.raises(InputError, match="'DJI_0004.JPG' was found but cannot be used"):
        run_ingest(tmp_path, folder, gcp_list=gcp)


def test_gcp_list_syntax_error_fails_before_decoding(tmp_path: Path) -> None:
    gcp = tmp_path / "gcp_list.txt"
    gcp.write_text(GCPS.replace("161.0 22 9 DJI_0001", "161.0 2x2 9 DJI_0001"))
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, survey(tmp_path / "images", 3), gcp_list=gcp)
    assert err.value.line == 4


def test_geo_txt_overrides_exif(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3, gps=False)
    make_jpeg(folder / "DJI_0004.JPG", exif=exif_bytes(gps=BRIGHTON_GPS))
    geo = tmp_path / "geo.txt"
    geo.write_text("WGS84 UTM 15N\n"
                   "DJI_0001.JPG 576000.0 5187500.0 160.0\n"
                   "DJI_0002.JPG 576010.0 5187500.0 160.5 45 -90 0 0.02 0.05\n"
                   "DJI_0004.JPG 576020.0 5187500.0 161.0\n"
                   "NOT_HERE.JPG 576030.0 5187500.0 161.0\n")
    metas = {m.name: m for m in run_ingest(tmp_path, folder, geo_txt=geo)}
    first, second, third, fourth = (metas[f"DJI_000{i}.JPG"] for i in range(1, 5))
    assert first.position_source == "geo_txt" and first.lat is None
    assert (first.geo_x, first.geo_y, first.geo_z, first.geo_crs) == \
        (576000.0, 5187500.0, 160.0, "WGS84 UTM 15N")
    assert (second.h_acc, second.v_acc) == (0.02, 0.05)
    assert third.position_source == "none" and third.geo_x is None
    # geo.txt wins over EXIF, and EXIF values are still reported.
    assert fourth.position_source == "geo_txt" and fourth.geo_x == 576020.0
    assert fourth.lat == pytest.approx(BRIGHTON_GPS[0])
    back = {m.name: m for m in ingest.read_exif_csv(tmp_path / "out" / "exif.csv")}
    assert back["DJI_0002.JPG"] == second


def test_geo_txt_matching_no_image_is_an_error(tmp_path: Path) -> None:
    geo = tmp_path / "geo.txt"
    geo.write_text("EPSG:4326\ndji_0001.jpg -91.99 46.84 198.6\n")
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, survey(tmp_path / "images", 3), geo_txt=geo)
    assert err.value.line == 2 and "none of the 1 images" in str(err.value)
    assert outputs(tmp_path) == []


def test_geo_txt_malformed_fails_with_line(tmp_path: Path) -> None:
    geo = tmp_path / "geo.txt"
    geo.write_text("EPSG:4326\nDJI_0001.JPG -91.99 46.84 198.6\nDJI_0002.JPG -91.99 46.84 x\n")
    with pytest.raises(InputError) as err:
        run_ingest(tmp_path, survey(tmp_path / "images", 3), geo_txt=geo)
    assert err.value.line == 3 and str(geo) in str(err.value)


def test_empty_missing_and_cluttered_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no JPEG, PNG or TIFF photos found \\(the folder is empty"):
        run_ingest(tmp_path, empty)
    with pytest.raises(InputError, match="images folder not found"):
        run_ingest(tmp_path, tmp_path / "nope")
    clutter = tmp_path / "clutter"
    (clutter / "DCIM").mkdir(parents=True)
    (clutter / "DJI_0001.MP4").write_bytes(b"")
    with pytest.raises(InputError, match="1 other file\\(s\\) ignored: DJI_0001.MP4; 1 subfolder"):
        run_ingest(tmp_path, clutter)
    assert outputs(tmp_path) == []


def test_output_must_not_replace_input(tmp_path: Path) -> None:
    folder = survey(tmp_path / "images", 3)
    with pytest.raises(InputError, match="would replace the input images folder"):
        ingest.run(folder, folder, tmp_path / "exif.csv", out_skipped_csv=tmp_path / "s.csv")
    with pytest.raises(InputError, match="would replace the input images folder"):
        ingest.run(folder, tmp_path, tmp_path / "exif.csv", out_skipped_csv=tmp_path / "s.csv")
    assert len(list(folder.iterdir())) == 3


@pytest.mark.parametrize("value", [0, -5, 1.5, "2000", True])
def test_bad_max_image_size(tmp_path: Path, value: object) -> None:
    with pytest.raises(InputError, match="max_image_size"):
        run_ingest(tmp_path, survey(tmp_path / "images", 3), max_image_size=value)


def test_read_exif_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="re-run the ingest stage"):
        ingest.read_exif_csv(tmp_path / "missing.csv")
    bad = tmp_path / "exif.csv"
    bad.write_text("name,width\nA.JPG,10\n")
    with pytest.raises(InputError, match="lacks columns"):
        ingest.read_exif_csv(bad)
    metas = run_ingest(tmp_path, survey(tmp_path / "images", 3))
    text = (tmp_path / "out" / "exif.csv").read_text().splitlines()
    text[2] = text[2].replace(f"{metas[1].width},", "wide,", 1)
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match="(?s)line 3.*'width'"):
        ingest.read_exif_csv(bad)


def test_write_exif_csv_atomic_roundtrip(tmp_path: Path) -> None:
    meta = ImageMeta(name="a,b.jpg", width=10, height=5, orig_width=20, orig_height=10,
                     geo_crs="+proj=utm +zone=15 +datum=WGS84", geo_x=1.0000000000000002,
                     position_source="geo_txt")
    ingest.write_exif_csv(tmp_path / "t" / "exif.csv", [meta])
    assert ingest.read_exif_csv(tmp_path / "t" / "exif.csv") == [meta]


# ---------------------------------------------------------------------------
# The real photos (metadata only, plus one downscale)

needs_brighton = pytest.mark.skipif(
    not BRIGHTON.is_dir(),
    reason=f"real test photos not present ({BRIGHTON.parent} relative to the repository's parent)")


@needs_brighton
def test_brighton_beach_metadata() -> None:
    photos = sorted(BRIGHTON.glob("DJI_00*.JPG"))
    assert len(photos) == 18
    for path in photos:
        meta = ingest.read_image_meta(path, max_image_size=1600)
        assert (meta.make, meta.model) == ("DJI", "FC300S")
        assert (meta.orig_width, meta.orig_height, meta.width, meta.height) == (4000, 2250, 1600, 900)
        assert meta.focal_mm == pytest.approx(3.61)
        assert (meta.sensor_width_mm, meta.sensor_width_source) == (6.17, "camera_table")
        assert meta.sensor_width_mm == 6.17 and meta.focal_35mm == 20
        assert meta.focal_px_source == "35mm_equivalent" and round(meta.focal_px) == 889
        assert meta.rel_alt == pytest.approx(40, abs=1.5)
        assert meta.gimbal_pitch == pytest.approx(-89.9, abs=0.2)
        assert 46.84 < meta.lat < 46.85 and -92.0 < meta.lon < -91.99
        assert 190 < meta.alt < 205 and meta.position_source == "exif"
        assert meta.datetime.startswith("2016:06:23")


@needs_brighton
def test_brighton_beach_one_downscale(tmp_path: Path) -> None:
    src = BRIGHTON / "DJI_0018.JPG"
    with ingest.strict_decoding():
        meta = ingest.ingest_image(src, tmp_path / src.name, max_image_size=1600)
    assert (meta.width, meta.height) == (1600, 900) and round(meta.focal_px) == 889
    with Image.open(tmp_path / src.name) as im:
        assert im.size == (1600, 900) and im.format == "JPEG"
    again = ingest.read_image_meta(tmp_path / src.name)
    assert again.lat == pytest.approx(meta.lat) and again.lon == pytest.approx(meta.lon)
    assert again.rel_alt == meta.rel_alt and again.model == "FC300S"
    assert again.focal_px == pytest.approx(888.89, abs=0.01)
