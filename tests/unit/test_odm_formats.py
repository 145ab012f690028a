"""Unit tests for aerosplat.odm_formats: ODM geo.txt / gcp_list.txt and CRS headers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS

from aerosplat.errors import InputError
from aerosplat.odm_formats import (
    GcpList,
    GeoTxt,
    parse_crs_header,
    parse_gcp_list,
    parse_geo_txt,
    to_crs,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------
# CRS headers


@pytest.mark.parametrize("header, epsg", [
    ("EPSG:32615", 32615),
    ("epsg:32615", 32615),
    ("WGS84 UTM 15N", 32615),
    ("WGS84 UTM 32S", 32732),
    ("WGS84 UTM 5n", 32605),
    ("+proj=utm +zone=32 +datum=WGS84 +units=m +no_defs", 32632),
    ("+proj=utm +zone=10 +ellps=WGS84 +datum=WGS84 +units=m +no_defs", 32610),
    ("+proj=utm +zone=32 +south +datum=WGS84 +units=m +no_defs", 32732),
    ("'+proj=utm +zone=15 +datum=WGS84 +units=m +no_defs=True'", 32615),  # as ODM writes it
    ("+proj=longlat +datum=WGS84 +no_defs", 4326),
    ("WGS84", 4326),
    ("EPSG:4326", 4326),
    ("  EPSG:2056  ", 2056),
])
def test_crs_header_resolves_to_epsg(header: str, epsg: int) -> None:
    assert parse_crs_header(header, "geo.txt", 1).to_epsg() == epsg


def test_crs_header_geographic_flag() -> None:
    assert parse_crs_header("WGS84", "x", 1).is_geographic
    assert not parse_crs_header("WGS84 UTM 15N", "x", 1).is_geographic


def test_crs_header_compound_epsg() -> None:
    crs = parse_crs_header("EPSG:32615+5703", "x", 1)
    assert crs.is_compound
    assert crs.sub_crs_list[0].to_epsg() == 32615


def test_crs_header_non_epsg_proj_string_is_kept() -> None:
    crs = parse_crs_header("+proj=tmerc +lat_0=0 +lon_0=9 +k=0.9996 +x_0=500000 +y_0=0 "
                           "+ellps=GRS80 +units=m +no_defs", "x", 1)
    assert crs.is_projected and crs.to_epsg() != 32632


@pytest.mark.parametrize("header", ["lat lon alt", "UTM 15N", "WGS84 UTM 61N", "EPSG:999999",
                                    "+proj=nonsense", ""])
def test_crs_header_unknown_is_input_error_with_line(header: str) -> None:
    with pytest.raises(InputError) as err:
        parse_crs_header(header, "geo.txt", 3)
    assert err.value.line == 3
    assert "geo.txt, line 3" in str(err.value)
    assert "EPSG:" in str(err.value)  # the hint lists accepted forms


def test_crs_header_data_line_gets_specific_hint() -> None:
    with pytest.raises(InputError, match="looks like a data line"):
        parse_crs_header("DJI_0001.JPG -91.99 46.84 198.6", "geo.txt", 1)


# ---------------------------------------------------------------------------
# geo.txt


GEO_OK = """\
# exported from the RTK log
EPSG:4326

DJI_0028.JPG -91.9942096111111 46.84252125 198.609
DJI_0029.JPG\t-91.9941 46.8425 198.7 45.0 -90.0 0.0
# a comment line
DJI_0030.JPG -91.9940 46.8426 198.8 45 -90 0 0.02 0.05
DJI_0031.JPG -91.9939 46.8427 198.9 0 0 0 0.02 0.05 label=strip2 extra
DJI_0032.JPG -91.9938 46.8428
"""


def test_geo_txt_happy_path(tmp_path: Path) -> None:
    geo = parse_geo_txt(write(tmp_path, "geo.txt", GEO_OK))
    assert isinstance(geo, GeoTxt)
    assert geo.crs.to_epsg() == 4326 and geo.crs_text == "EPSG:4326"
    assert [e.image for e in geo.entries] == [f"DJI_00{i}.JPG" for i in range(28, 33)]
    first, second, third, fourth, fifth = geo.entries
    # ODM convention for EPSG:4326: x = longitude, y = latitude.
    assert (first.x, first.y, first.z) == (-91.9942096111111, 46.84252125, 198.609)
    assert first.yaw is first.pitch is first.roll is first.h_acc is first.v_acc is None
    assert (second.yaw, second.pitch, second.roll, second.h_acc) == (45.0, -90.0, 0.0, None)
    assert (third.h_acc, third.v_acc) == (0.02, 0.05)
    assert (fourth.h_acc, fourth.v_acc) == (0.02, 0.05)  # extras after column 9 ignored
    assert fifth.z is None  # z is optional in ODM's format
    assert first.line == 4 and fifth.line == 9
    assert geo.by_image()["DJI_0030.JPG"] is third


def test_geo_txt_utm_and_crlf_bom(tmp_path: Path) -> None:
    path = tmp_path / "geo.txt"
    path.write_bytes(b"\xef\xbb\xbfWGS84 UTM 15N\r\nA.JPG 576000.5 5187500.25 160.0\r\n")
    geo = parse_geo_txt(path)
    assert geo.crs.to_epsg() == 32615
    assert geo.entries[0].x == 576000.5


@pytest.mark.parametrize("line, fragment", [
    ("DJI_0002.JPG -91.99 46.84 198.6 45", "5 field(s)"),
    ("DJI_0002.JPG -91.99 46.84 198.6 45 -90", "6 field(s)"),
    ("DJI_0002.JPG -91.99 46.84 198.6 45 -90 0 0.02", "8 field(s)"),
    ("DJI_0002.JPG -91.99", "2 field(s)"),
    ("DJI_0002.JPG -91,99 46.84 198.6", "'-91,99' is not a number"),
    ("DJI_0002.JPG -91.99 46.84 high", "z 'high' is not a number"),
    ("DJI_0002.JPG -91.99 46.84 198.6 0 0 0 nan 0.1", "'nan' is not a number"),
    ("DJI_0002.JPG -91.99 46.84 198.6 0 0 0 -1 0.1", "accuracy -1.0 is negative"),
    ("DJI_0002.JPG 46.84 -191.99 198.6", "not a longitude/latitude pair"),
])
def test_geo_txt_malformed_line_names_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(tmp_path, "geo.txt", f"EPSG:4326\n# c\nDJI_0001.JPG -91.99 46.84 198.6\n{line}\n")
    with pytest.raises(InputError) as err:
        parse_geo_txt(path)
    assert err.value.line == 4
    message = str(err.value)
    assert f"{path}, line 4" in message
    assert fragment in message
    assert "What to do:" in message


def test_geo_txt_malformed_line_is_shown(tmp_path: Path) -> None:
    path = write(tmp_path, "geo.txt", "EPSG:4326\nDJI_0001.JPG x 46.84 198.6\n")
    with pytest.raises(InputError, match=r"DJI_0001.JPG x 46.84 198.6"):
        parse_geo_txt(path)


def test_geo_txt_duplicate_image_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "geo.txt", "EPSG:4326\nA.JPG 1 2 3\nB.JPG 1 2 3\n\nA.JPG 1 2 4\n")
    with pytest.raises(InputError) as err:
        parse_geo_txt(path)
    assert "lines 2 and 5" in str(err.value)
    assert err.value.line == 5


def test_geo_txt_bad_header(tmp_path: Path) -> None:
    path = write(tmp_path, "geo.txt", "\n\nLatLong 84\nA.JPG 1 2 3\n")
    with pytest.raises(InputError) as err:
        parse_geo_txt(path)
    assert err.value.line == 3


def test_geo_txt_missing_header(tmp_path: Path) -> None:
    path = write(tmp_path, "geo.txt", "A.JPG -91.99 46.84 198.6\nB.JPG -91.99 46.84 198.6\n")
    with pytest.raises(InputError, match="(?s)line 1.*data line"):
        parse_geo_txt(path)


@pytest.mark.parametrize("text, fragment", [("", "is empty"), ("  \n\n", "is empty"),
                                            ("EPSG:4326\n# only comments\n", "no image lines")])
def test_geo_txt_empty(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_geo_txt(write(tmp_path, "geo.txt", text))


def test_geo_txt_missing_file_names_config_key(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        parse_geo_txt(tmp_path / "nope.txt")
    assert "nope.txt" in str(err.value) and "geo_txt" in str(err.value)


def test_geo_txt_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "geo.txt"
    path.write_bytes(b"EPSG:4326\n\xff\xfe\x00A\n")
    with pytest.raises(InputError, match="not a UTF-8"):
        parse_geo_txt(path)


# ---------------------------------------------------------------------------
# gcp_list.txt


GCP_NAMED = """\
WGS84 UTM 15N
576010.0 5187510.0 160.0 1200 800 A.JPG gcp_a
576010.0 5187510.0 160.0 1300 820 B.JPG gcp_a
576050.0 5187520.0 161.0 2200 900 A.JPG gcp_b
576050.0 5187520.0 161.0 2250 950 C.JPG gcp_b extra1 extra2
576030.0 5187560.0 159.5 100 1900 B.JPG gcp_c
576030.0 5187560.0 159.5 150 1950 C.JPG gcp_c
"""

GCP_UNNAMED = """\
EPSG:32615
# no names: grouped by identical coordinates
576010.0 5187510.0 160.0 1200 800 A.JPG
576050.0 5187520.0 161.0 2200 900 A.JPG
576010.0 5187510.0 160.0 1300 820 B.JPG
576030.0 5187560.0 159.5 100 1900 B.JPG
576050.0 5187520.0 161.0 2250 950 C.JPG
576030.0 5187560.0 159.5 150 1950 C.JPG
"""


def test_gcp_list_named(tmp_path: Path) -> None:
    gcps = parse_gcp_list(write(tmp_path, "gcp_list.txt", GCP_NAMED), {"A.JPG", "B.JPG", "C.JPG"})
    assert isinstance(gcps, GcpList)
    assert gcps.crs.to_epsg() == 32615
    assert gcps.names == ["gcp_a", "gcp_b", "gcp_c"]
    assert len(gcps.observations) == 6
    obs = gcps.observations[3]
    assert (obs.geo_x, obs.geo_y, obs.geo_z, obs.im_x, obs.im_y, obs.image, obs.name, obs.line) == \
        (576050.0, 5187520.0, 161.0, 2250.0, 950.0, "C.JPG", "gcp_b", 5)
    assert gcps.images() == {"A.JPG", "B.JPG", "C.JPG"}


def test_gcp_list_unnamed_grouped_by_coordinates(tmp_path: Path) -> None:
    gcps = parse_gcp_list(write(tmp_path, "gcp_list.txt", GCP_UNNAMED), None)
    assert gcps.names == ["gcp01", "gcp02", "gcp03"]
    by_name = {}
    for o in gcps.observations:
        by_name.setdefault(o.name, set()).add(o.image)
    assert by_name == {"gcp01": {"A.JPG", "B.JPG"}, "gcp02": {"A.JPG", "C.JPG"},
                       "gcp03": {"B.JPG", "C.JPG"}}
    assert gcps.observations[0].line == 3


def test_gcp_list_generated_names_avoid_given_names(tmp_path: Path) -> None:
    text = ("EPSG:32615\n1 2 3 10 10 A.JPG gcp01\n1 2 3 10 10 B.JPG gcp01\n"
            "4 5 6 10 10 A.JPG\n4 5 6 10 10 B.JPG\n7 8 9 10 10 A.JPG\n7 8 9 10 10 B.JPG\n")
    gcps = parse_gcp_list(write(tmp_path, "gcp_list.txt", text))
    assert gcps.names == ["gcp01", "gcp02", "gcp03"]
    assert [o.name for o in gcps.observations] == ["gcp01", "gcp01", "gcp02", "gcp02", "gcp03",
                                                   "gcp03"]


@pytest.mark.parametrize("line, fragment", [
    ("576010.0 5187510.0 160.0 1200 A.JPG", "5 field(s)"),
    ("576010.0 5187510.0 160.0 12o0 800 A.JPG", "im_x '12o0' is not a number"),
    ("576010.0 north 160.0 1200 800 A.JPG", "geo_y 'north' is not a number"),
    ("576010.0 5187510.0 160.0 -5 800 A.JPG", "negative"),
    ("576099.0 5187510.0 160.0 1200 800 B.JPG gcp_a", "different ground coordinates on lines 2 and 5"),
    ("576010.0 5187510.0 160.0 1250 810 A.JPG gcp_a", "marked twice in image 'A.JPG', on lines 2 and 5"),
])
def test_gcp_list_malformed_line_names_line(tmp_path: Path, line: str, fragment: str) -> None:
    lines = GCP_NAMED.splitlines()
    lines.insert(4, line)  # becomes line 5
    path = write(tmp_path, "gcp_list.txt", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        parse_gcp_list(path, {"A.JPG", "B.JPG", "C.JPG"})
    assert err.value.line == 5
    assert f"{path}, line 5" in str(err.value)
    assert fragment in str(err.value)


def test_gcp_list_unknown_image(tmp_path: Path) -> None:
    text = GCP_NAMED.replace("1300 820 B.JPG", "1300 820 DJI_9999.JPG")
    path = write(tmp_path, "gcp_list.txt", text)
    with pytest.raises(InputError) as err:
        parse_gcp_list(path, {"A.JPG", "B.JPG", "C.JPG"}, images_dir="/data/scene/images")
    message = str(err.value)
    assert err.value.line == 3
    assert "'DJI_9999.JPG'" in message and "/data/scene/images" in message
    assert "3 usable images" in message


def test_gcp_list_unknown_image_case_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "gcp_list.txt", GCP_NAMED.replace("A.JPG gcp_a", "a.jpg gcp_a"))
    with pytest.raises(InputError, match="case-sensitive: did you mean 'A.JPG'"):
        parse_gcp_list(path, {"A.JPG", "B.JPG", "C.JPG"})


def test_gcp_list_unusable_image_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, "gcp_list.txt", GCP_NAMED)
    with pytest.raises(InputError, match="'C.JPG' was found but cannot be used \\(truncated\\)"):
        parse_gcp_list(path, {"A.JPG", "B.JPG"}, unusable={"C.JPG": "truncated"})


def test_gcp_list_fewer_than_three_gcps(tmp_path: Path) -> None:
    text = "\n".join(GCP_NAMED.splitlines()[:5]) + "\n"  # gcp_a and gcp_b only
    with pytest.raises(InputError) as err:
        parse_gcp_list(write(tmp_path, "gcp_list.txt", text), None)
    assert "2 distinct ground control point(s)" in str(err.value)
    assert "at least 3" in str(err.value) and "gcp_list" in str(err.value)


def test_gcp_list_single_observation_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = GCP_NAMED + "576070.0 5187570.0 158.0 10 10 A.JPG lonely\n"
    with caplog.at_level(logging.WARNING, logger="aerosplat.odm_formats"):
        parse_gcp_list(write(tmp_path, "gcp_list.txt", text))
    assert "'lonely' is marked in only 1 image" in caplog.text


def test_gcp_list_geographic_xy_order(tmp_path: Path) -> None:
    text = ("EPSG:4326\n46.84 -91.99 160 1 1 A.JPG p1\n")
    with pytest.raises(InputError, match="(?s)line 2.*longitude/latitude"):
        parse_gcp_list(write(tmp_path, "gcp_list.txt", text))


def test_gcp_list_bad_header_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="line 1"):
        parse_gcp_list(write(tmp_path, "gcp_list.txt", "UTM15\n1 2 3 4 5 A.JPG\n"))
    with pytest.raises(InputError, match="gcp_list"):
        parse_gcp_list(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------
# to_crs


def test_to_crs_lonlat_to_utm_and_back() -> None:
    lonlat = np.array([[-91.99455988888889, 46.842607083333334, 198.309],
                       [-91.99345530555556, 46.842716555555555, 198.509]])
    utm = to_crs(lonlat, "EPSG:4326", CRS.from_epsg(32615))
    assert utm.shape == (2, 3)
    # Brighton Beach (MN) is in UTM 15N around E 576 km, N 5188 km.
    assert 570_000 < utm[0, 0] < 580_000 and 5_180_000 < utm[0, 1] < 5_195_000
    assert np.allclose(utm[:, 2], lonlat[:, 2])  # same ellipsoidal heights
    # Points 84 m apart in longitude at 46.8 deg N.
    assert abs(utm[1, 0] - utm[0, 0] - 84.1) < 1.0
    back = to_crs(utm, 32615, 4326)
    assert np.allclose(back, lonlat, atol=1e-9)


def test_to_crs_single_point_and_identity() -> None:
    point = [576000.0, 5187500.0, 160.0]
    out = to_crs(point, 32615, 32615)
    assert out.shape == (3,) and np.array_equal(out, point)
    lonlat = to_crs(point, 32615, 4326)
    assert lonlat.shape == (3,) and -93 < lonlat[0] < -91 and 46 < lonlat[1] < 47


def test_to_crs_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        to_crs(np.zeros((4, 2)), 4326, 32615)
