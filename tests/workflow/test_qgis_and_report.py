"""The sample's QGIS project and report, opened by the real clients: QGIS (headless, its own
Python) and Chromium; the report's figures traced back to the stage files they came from.

Uses the session's `sample_run` (the whole workflow at the test settings)."""

from __future__ import annotations

import json
import subprocess

import laspy
import numpy as np
import pytest

from clients import BROWSER, NO_BROWSER, QGIS_PROBLEM, chromium, open_in_browser, reopen_project
from conftest import SAMPLE_CONFIG, SNAKEMAKE, ROOT

pytestmark = pytest.mark.slow


def _json(path):
    return json.loads(path.read_text())


@pytest.mark.skipif(QGIS_PROBLEM is not None, reason=f"QGIS not available: {QGIS_PROBLEM}")
def test_qgis_opens_every_product_of_the_sample_in_the_delivery_crs(sample_run):
    res = sample_run / "results/sample"
    seen = reopen_project(res / "report/sample.qgz")
    assert seen["read"] and seen["crs"] == "EPSG:32632"
    layers = {layer["name"]: layer for layer in seen["layers"]}
    assert all(layer["valid"] for layer in layers.values()), [n for n, layer in layers.items() if not layer["valid"]]
    assert all(layer["crs"] == "EPSG:32632" for layer in layers.values())
    names = " ".join(layers).lower()
    for what in ("ortho", "dsm", "dtm", "height", "camera", "footprint", "partition", "gcp", "point cloud"):
        assert what in names, (what, sorted(layers))
    # The point cloud layer (EPT, QGIS's own provider) holds every point of points.laz.
    cloud = next(layer for name, layer in layers.items() if "point cloud" in name.lower())
    assert cloud["points"] == laspy.read(res / "products/points.laz").header.point_count
    # The orthophoto's extent is the products grid's.
    grid = _json(res / "products/metrics.json")["grid"]
    ortho = next(layer for name, layer in layers.items() if "ortho" in name.lower())
    assert ortho["extent"][0] == pytest.approx(grid["west"]) and ortho["extent"][3] == pytest.approx(grid["north"])
    assert seen["map"][2] > 100  # the rendered map is a picture, not a blank


def test_report_figures_trace_back_to_the_stage_files(sample_run):
    res = sample_run / "results/sample"
    m = _json(res / "report/metrics.json")
    frame = _json(res / "georef/frame.json")
    # Recomputed here from the stage files, independently of the report's code.
    d = np.array([[r["dx"], r["dy"]] for r in frame["per_image"]])
    assert m["georef"]["rmse_images_m"]["horizontal"] == pytest.approx(np.sqrt((d ** 2).sum(1).mean()), abs=1e-3)
    assert m["heldout"]["psnr_db"] == pytest.approx(_json(res / "merged/metrics.json")["heldout_psnr"], abs=1e-3)
    dsm = next(f for f in m["files"] if f["path"] == "products/dsm.tif")
    assert dsm["bytes"] == (res / "products/dsm.tif").stat().st_size
    for key in ("georef.rmse_images_m", "heldout.psnr_db"):
        assert key in m["sources"]


@pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)
def test_the_sample_report_loads_in_chromium_with_no_error(sample_run, tmp_path):
    page = sample_run / "results/sample/report/report.html"
    seen = open_in_browser(page, tmp_path)
    assert "sample" in seen["dom"] and not seen["errors"] and not seen["console"], seen["errors"] + seen["console"]
    assert seen["loaded"] and "broken=0" in seen["loaded"], seen["loaded"]
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,3000", page.as_uri())
    assert shot.stat().st_size > 50_000


def test_snakemake_report_carries_the_main_figures(sample_run, tmp_path):
    out = tmp_path / "report.zip"
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(sample_run),
                           "--report", str(out), *SAMPLE_CONFIG], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = subprocess.run(["unzip", "-l", str(out)], capture_output=True, text=True).stdout
    assert "map.png" in names and names.count("report.html") >= 2
