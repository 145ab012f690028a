"""GIS writers: the LAZ and the COG read back with their CRS, precision and structure."""

from __future__ import annotations

import laspy
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import ColorInterp

from aerosplat.errors import InputError
from aerosplat.gisio import GROUND_CLASS, write_cog, write_laz


def test_laz_is_las14_format7_with_crs_millimetres_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    xyz = np.array([465_812.0, 5_249_610.0, 450.0]) + rng.uniform(0, 100, (1000, 3))  # UTM 32N metres
    rgb = rng.uniform(0, 1, (1000, 3))
    cls = np.where(xyz[:, 2] < 500, GROUND_CLASS, 1)
    write_laz(tmp_path / "cloud.laz", xyz, rgb, "EPSG:32632", classification=cls)
    las = laspy.read(tmp_path / "cloud.laz")
    assert (las.header.version.major, las.header.version.minor, las.header.point_format.id) == (1, 4, 7)
    assert las.header.parse_crs().to_epsg() == 32632
    back = np.column_stack([las.x, las.y, las.z])
    assert np.abs(back - xyz).max() <= 0.0005 + 1e-9  # 1 mm integers, offsets hold the magnitude
    assert np.array_equal(np.asarray(las.classification), cls)
    assert np.abs(np.asarray(las.red) / 65535 - rgb[:, 0]).max() < 1e-4
    assert not list(tmp_path.glob(".*partial"))


def test_cog_reads_back_as_a_cog_with_its_crs_nodata_and_overviews(tmp_path):
    dsm = np.full((600, 700), 452.5, np.float32)
    dsm[:10] = -9999.0
    transform = Affine(0.25, 0, 465_800.0, 0, -0.25, 5_249_700.0)
    write_cog(tmp_path / "dsm.tif", dsm, transform, CRS.from_epsg(32632), nodata=-9999.0)
    with rasterio.open(tmp_path / "dsm.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform == transform and ds.nodata == -9999.0
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
        assert np.array_equal(ds.read(1), dsm)
    rgba = np.zeros((4, 300, 300), np.uint8)
    rgba[3, 50:] = 255
    write_cog(tmp_path / "ortho.tif", rgba, transform, "EPSG:32632")
    with rasterio.open(tmp_path / "ortho.tif") as ds:
        assert ds.count == 4 and ds.colorinterp[3] == ColorInterp.alpha


def test_rasters_and_clouds_refuse_a_geographic_crs(tmp_path):
    with pytest.raises(InputError, match="needs a projected CRS"):
        write_cog(tmp_path / "x.tif", np.zeros((4, 4), np.float32), Affine.identity(), "EPSG:4326")
    with pytest.raises(InputError, match="needs a projected CRS"):
        write_laz(tmp_path / "x.laz", np.zeros((3, 3)), None, "EPSG:4326")
    assert not list(tmp_path.iterdir())
