"""The quality report: from a small results tree laid out as the stages lay it out, report/metrics.json
carries the expected figures, each traceable to its stage file, and some are recomputed here straight
from the stage files (georef RMSE from per-image residuals, a product's size, a stage's wall time);
report.html is one offline file (every image a data URI, nothing fetched from elsewhere) that explains
what is missing (no DTM) instead of failing; a run with nothing in it still gets a report."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image

from aerosplat import report
from aerosplat.gisio import write_cog

SCENE = "demo"
EPSG = 32632
ORIGIN = [465_892.0, 5_249_293.0, 500.0]
NAMES = [f"IMG_{i:04d}.jpg" for i in range(1, 6)]
CAMS = {"IMG_0001.jpg": (-20.0, -10.0), "IMG_0002.jpg": (0.0, -10.0), "IMG_0003.jpg": (20.0, -10.0),
        "IMG_0004.jpg": (0.0, 10.0)}
# Per-image GPS residuals (m): IMG_0003 is the outlier.
RESIDUALS = {"IMG_0001.jpg": (0.5, -0.2, 0.3), "IMG_0002.jpg": (-0.4, 0.1, -0.2), "IMG_0003.jpg": (3.0, 2.0, -1.5),
             "IMG_0004.jpg": (0.1, 0.3, 0.1)}

TRAIN_LOG_P00 = """\
2026-01-01 10:00:00,000 INFO aerosplat.train: training p00 on cpu: 3 images, 500 initial Gaussians, 300 steps, scene scale 40.0 m
2026-01-01 10:00:01,000 INFO aerosplat.train: p00 step 100/300  60x45  loss 0.2000  psnr 18.00 dB  500 Gaussians  9.0 it/s  eta 20 s
2026-01-01 10:00:02,000 INFO aerosplat.train: p00 step 200/300  120x90  loss 0.1500  psnr 20.00 dB  520 Gaussians  9.0 it/s  eta 10 s
2026-01-01 10:00:02,500 WARNING aerosplat.train: something unrelated, step 999/300 loss 1 psnr 1 dB
2026-01-01 11:00:00,000 INFO aerosplat.train: resumed p00 from checkpoint at step 100/300 (500 Gaussians)
2026-01-01 11:00:00,100 INFO aerosplat.train: training p00 on cpu: 3 images, 500 initial Gaussians, 300 steps, scene scale 40.0 m
2026-01-01 11:00:01,000 INFO aerosplat.train: p00 step 200/300  120x90  loss 0.1400  psnr 21.00 dB  530 Gaussians  9.0 it/s  eta 10 s
2026-01-01 11:00:02,000 INFO aerosplat.train: p00 step 300/300  120x90  loss 0.1000  psnr nan dB  540 Gaussians  9.0 it/s  eta 0 s
2026-01-01 11:00:03,000 INFO aerosplat.train: p00 done: train PSNR 22.00 dB, 540 Gaussians, 3 s
"""
TRAIN_LOG_P01 = """\
2026-01-01 10:00:00,000 INFO aerosplat.train: training p01 on cpu: 3 images, 500 initial Gaussians, 200 steps, scene scale 40.0 m
2026-01-01 10:00:01,000 INFO aerosplat.train: p01 step 100/200  60x45  loss 0.3000  psnr 17.00 dB  500 Gaussians  9.0 it/s  eta 20 s
2026-01-01 10:00:02,000 INFO aerosplat.train: p01 step 200/200  120x90  loss 0.2000  psnr 19.50 dB  510 Gaussians  9.0 it/s  eta 0 s
"""
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _json(path: Path, data) -> Path:
    return _write(path, json.dumps(data, indent=1))


def _nadir_w2c(x, y, z=60.0):
    R = np.diag([1.0, -1.0, -1.0])
    return np.hstack([R, (-R @ np.array([x, y, z]))[:, None]]).tolist()


def make_scene(root: Path, *, dtm: bool = False, products: bool = True) -> Path:
    """A small finished run under `root` (results/, logs/, benchmarks/), shaped like the stages' files."""
    d = root / "results" / SCENE
    fields = ["name", "width", "height", "make", "model", "lat", "lon", "alt"]
    rows = [dict(zip(fields, [n, 640, 480, "aerosplat", "SimDrone 640", 47.39, 8.54, 510.0])) for n in NAMES]
    (d / "ingest").mkdir(parents=True)
    with open(d / "ingest" / "exif.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)
    _write(d / "ingest" / "skipped.csv", "name,reason\nbroken.jpg,unreadable image: truncated file\n")
    _json(d / "sfm" / "report.json", {
        "registered": 4, "total": 5, "registered_fraction": 0.8, "mean_reproj_error_px": 0.42,
        "num_points3d": 1234, "mean_track_length": 4.2, "matcher": "exhaustive", "mapper": "incremental",
        "cameras": {"1": {"model": "SIMPLE_RADIAL", "width": 640, "height": 480, "params": [531.5, 320, 240, -0.01]}},
        "camera_sources": [{"camera_id": 1, "make": "aerosplat", "model": "SimDrone 640", "width": 640, "height": 480,
                            "model_start": "SIMPLE_RADIAL", "params_start": [530.0, 320, 240, 0.0],
                            "intrinsics_source": "sensor_width", "calibration_date": None, "images": 5}],
        "focal_sources": {"sensor_width": 5}, "refine_focal": True, "unregistered_images": ["IMG_0005.jpg"],
        "seconds": 12.0})
    _json(d / "georef" / "frame.json", {
        "epsg": EPSG, "crs_name": "WGS 84 / UTM zone 32N", "origin": ORIGIN, "method": "gcp+gps", "scale": 10.2,
        "rmse_gps_m": {"horizontal": 9.9, "vertical": 9.9},  # deliberately not the RMS of per_image
        "outliers": ["IMG_0003.jpg"],
        "per_image": [{"image": n, "source": "exif", "dx": r[0], "dy": r[1], "dz": r[2],
                       "horizontal_m": math.hypot(r[0], r[1]), "inlier": n != "IMG_0003.jpg"}
                      for n, r in RESIDUALS.items()],
        "gcps": [{"gcp": "GCP01", "dx": 0.02, "dy": -0.01, "dz": 0.03, "observations": 5, "used": 5,
                  "reproj_px": 0.5, "inlier": True},
                 {"gcp": "GCP02", "dx": -0.01, "dy": 0.02, "dz": -0.02, "observations": 4, "used": 4,
                  "reproj_px": 0.6, "inlier": True}],
        "check_points": [{"gcp": "CHK01", "dx": 0.06, "dy": 0.08, "dz": -0.05, "observations": 3, "used": 3,
                          "reproj_px": 0.7}],
        "rmse_gcp_m": {"horizontal": 0.02, "vertical": 0.025}})
    cams = {n: {"width": 640, "height": 480, "K": [[530, 0, 320], [0, 530, 240], [0, 0, 1]], "w2c": _nadir_w2c(*xy)}
            for n, xy in CAMS.items()}
    _json(d / "partitions" / "manifest.json", {
        "version": 1, "frame": {"epsg": EPSG, "origin": ORIGIN}, "heldout": ["IMG_0004.jpg"],
        "train": ["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg"], "cameras": cams, "grid": [1, 2], "overlap": 0.2,
        "partitions": [{"id": "p00", "cell_bounds": [-30, -20, 0, 20], "expanded_bounds": [-36, -28, 6, 28],
                        "images": ["IMG_0001.jpg", "IMG_0002.jpg"]},
                       {"id": "p01", "cell_bounds": [0, -20, 30, 20], "expanded_bounds": [-6, -28, 36, 28],
                        "images": ["IMG_0002.jpg", "IMG_0003.jpg"]}], "warnings": []})
    for pid, psnr in (("p00", 22.0), ("p01", 20.5)):
        _json(d / "partitions" / pid / "metrics.json", {
            "partition": pid, "device": "cpu", "steps": 300, "num_gaussians": 540, "num_images": 2,
            "train_psnr": psnr, "seconds": 3.0, "iterations_per_second": 9.0, "resumed_from_step": None})
    _write(root / "logs" / "train" / SCENE / "p00.log", TRAIN_LOG_P00)
    _write(root / "logs" / "train" / SCENE / "p01.log", TRAIN_LOG_P01)
    _json(d / "merged" / "metrics.json", {
        "heldout_psnr": 21.25, "heldout_ssim": 0.71, "num_gaussians": 1000, "num_partitions": 2,
        "heldout_images": [{"name": "IMG_0004.jpg", "psnr": 21.25, "ssim": 0.71, "border": True}],
        "seam": {"border_views": ["IMG_0004.jpg"], "border_psnr": 21.25, "interior_psnr": None}})
    pair = np.zeros((48, 128, 3), np.uint8)
    pair[:, :64] = (200, 80, 40)
    pair[:, 64:] = (190, 90, 50)
    (d / "merged" / "heldout").mkdir(parents=True)
    Image.fromarray(pair).save(d / "merged" / "heldout" / "IMG_0004.png")
    _write(d / "merged" / "splats.ply", "ply\n" + "x" * 1000)
    if products:
        p = d / "products"
        transform = Affine(0.5, 0, ORIGIN[0] - 30, 0, -0.5, ORIGIN[1] + 20)
        yy, xx = np.mgrid[0:80, 0:120]
        dsm = (450 + 0.05 * xx + 5.0 * ((xx // 20 + yy // 20) % 2)).astype(np.float32)
        dsm[:5, :5] = -9999.0
        write_cog(p / "dsm.tif", dsm, transform, EPSG, nodata=-9999.0)
        if dtm:
            write_cog(p / "dtm.tif", (450 + 0.05 * xx).astype(np.float32), transform, EPSG, nodata=-9999.0)
        rgba = np.zeros((4, 80, 120), np.uint8)
        rgba[0], rgba[1], rgba[2], rgba[3] = (xx * 2) % 256, (yy * 3) % 256, 120, 255
        write_cog(p / "ortho.tif", rgba, transform, EPSG)
        _write(p / "points.laz", "L" * 4321)
        _json(p / "metrics.json", {
            "crs": f"EPSG:{EPSG}", "gsd_m": 0.25, "resolution_m": 0.5, "grid": {"width": 120, "height": 80},
            "completeness": 0.97, "footprint_m2": 2400.0,
            "points": {"count": 5000, "ground": 1200, "density_per_m2": 2.08, "spacing_m": 0.5, "ground_filter": "csf"},
            "accuracy": {"truth": "truth", "over": "cells seen by >= 2 photos",
                         "dsm": {"cells": 9000, "median_abs_m": 0.123, "p90_abs_m": 0.5, "rmse_m": 0.4, "bias_m": 0.01}},
            "files": {"points.laz": {"bytes": 1, "what": "dense point cloud"}},  # a stale size: must not be used
            "warnings": []})
    for rule, s, rss in (("sfm", 12.5, 300.25), ("georef", 1.5, 120.0)):
        _write(root / "benchmarks" / rule / f"{SCENE}.tsv", BENCH_HEADER + f"{s}\t0:00:12\t{rss}\t1000\t1\t1\t1\t1\t1\t{s / 2}\n")
    for pid, s in (("p00", 100.0), ("p01", 60.0), ("monolithic", 150.0)):
        _write(root / "benchmarks" / "train" / SCENE / f"{pid}.tsv",
               BENCH_HEADER + f"{s}\t0:01:40\t{s * 10}\t1000\t1\t1\t1\t1\t1\t{s}\n")
    _write(root / "benchmarks" / "sfm" / "other.tsv", BENCH_HEADER + "999\t0\t999\t1\t1\t1\t1\t1\t1\t1\n")
    return d


def build(root: Path, **kw) -> tuple[dict, Path, Path]:
    d = make_scene(root, **kw)
    out = d / "report"
    m = report.build_report(root / "results", root / "benchmarks", SCENE, out / "metrics.json", out / "report.html")
    return m, out / "metrics.json", out / "report.html"


def test_metrics_hold_the_figures_with_their_sources(tmp_path):
    m, mjson, _ = build(tmp_path)
    d = tmp_path / "results" / SCENE
    assert json.loads(mjson.read_text()) == json.loads(json.dumps(m))
    assert m["photos"]["used"] == 5 and m["photos"]["skipped"] == 1
    assert m["photos"]["registered"] == 4 and m["photos"]["unregistered"] == ["IMG_0005.jpg"]
    assert m["sfm"]["mean_reproj_error_px"] == 0.42
    cam = m["cameras"][0]
    assert cam["focal_px_start"] == 530.0 and cam["focal_px"] == 531.5 and cam["intrinsics_source"] == "sensor_width"
    assert m["focal_sources"] == {"sensor_width": 5}

    # Georef RMSE, recomputed here from the per-image residuals of frame.json (not the stage's summary).
    frame = json.loads((d / "georef" / "frame.json").read_text())
    dx = np.array([p["dx"] for p in frame["per_image"]])
    dy = np.array([p["dy"] for p in frame["per_image"]])
    dz = np.array([p["dz"] for p in frame["per_image"]])
    g = m["georef"]
    assert math.isclose(g["rmse_images_m"]["horizontal"], math.sqrt(np.mean(dx ** 2 + dy ** 2)), rel_tol=1e-12)
    assert math.isclose(g["rmse_images_m"]["vertical"], math.sqrt(np.mean(dz ** 2)), rel_tol=1e-12)
    assert g["outliers"] == ["IMG_0003.jpg"]
    # GCPs and check points apart; the headline is the check points' (independent of the fit).
    assert [p["name"] for p in g["gcps"]] == ["GCP01", "GCP02"] and [p["name"] for p in g["check_points"]] == ["CHK01"]
    assert math.isclose(g["rmse_check_m"]["horizontal"], 0.1) and m["headline"]["georef_rmse_m"]["over"] == "check points"
    assert math.isclose(m["headline"]["georef_rmse_m"]["value"], 0.1)

    # A product's size, measured on disk (the stage's stale figure is not used).
    files = {f["path"]: f for f in m["files"]}
    assert files["products/points.laz"]["bytes"] == (d / "products" / "points.laz").stat().st_size == 4321
    assert files["merged/splats.ply"]["bytes"] == (d / "merged" / "splats.ply").stat().st_size
    assert "orthophoto" in files["products/ortho.tif"]["what"]

    # A stage's wall time and memory, recomputed from its benchmark table.
    with open(tmp_path / "benchmarks" / "sfm" / f"{SCENE}.tsv", newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    stages = {s["stage"]: s for s in m["stages"]}
    assert stages["sfm"]["wall_s"] == float(row["s"]) and stages["sfm"]["max_rss_mb"] == float(row["max_rss"])
    assert stages["train"]["wall_s"] == 160.0 and stages["train"]["longest_s"] == 100.0
    assert stages["train"]["max_rss_mb"] == 1000.0 and len(stages["train"]["jobs"]) == 2
    assert stages["train_monolithic"]["wall_s"] == 150.0 and stages["train_monolithic"]["rule"] == "train"
    assert [s["stage"] for s in m["stages"]] == ["sfm", "georef", "train", "train_monolithic"]  # pipeline order

    assert m["heldout"]["psnr_db"] == 21.25 and m["heldout"]["ssim"] == 0.71
    assert m["products"]["gsd_m"] == 0.25 and m["products"]["points"]["count"] == 5000
    assert m["products"]["accuracy"]["dsm"]["median_abs_m"] == 0.123
    assert {k: v["text"] for k, v in m["headline"].items()} == {
        "registered_photos": "4 / 5", "georef_rmse_m": "0.100 m", "heldout_psnr_db": "21.25 dB",
        "dsm_median_error_m": "0.12 m"}
    assert m["partitions"]["count"] == 2 and m["partitions"]["heldout"] == ["IMG_0004.jpg"]

    # Every figure names a file that exists, relative to the working directory.
    src = m["sources"]
    for key in ("photos.used", "photos.registered", "georef.rmse_images_m", "georef.rmse_check_m",
                "heldout.psnr_db", "products.gsd_m", "stages.sfm.demo", "training.p00.curve",
                "headline.georef_rmse_m", "headline.dsm_median_error_m", "files.products/points.laz"):
        assert (tmp_path / src[key]["file"]).exists(), key
    assert src["georef.rmse_images_m"]["file"] == f"results/{SCENE}/georef/frame.json"
    assert src["stages.sfm.demo"]["file"] == f"benchmarks/sfm/{SCENE}.tsv"
    assert src["training.p00.curve"]["file"] == f"logs/train/{SCENE}/p00.log"
    assert m["missing"] == {}


def test_training_curves_come_from_the_logs_and_a_resumed_run_replaces_its_steps(tmp_path):
    m, _, _ = build(tmp_path)
    c = m["training"]["p00"]["curve"]
    # The first run's step 200 is replaced by the resumed run's; the unrelated warning line is ignored;
    # a NaN PSNR becomes null (strict JSON).
    assert c["step"] == [100, 200, 300]
    assert c["loss"] == [0.2, 0.14, 0.1] and c["psnr"] == [18.0, 21.0, None] and c["gaussians"] == [500, 530, 540]
    assert m["training"]["p01"]["curve"]["psnr"] == [17.0, 19.5]
    assert m["training"]["p00"]["train_psnr"] == 22.0
    # A fresh (not resumed) run discards the previous run's points.
    fresh = report.parse_training_log(TRAIN_LOG_P01 + TRAIN_LOG_P01.replace("17.00", "16.00").splitlines()[0] + "\n"
                                      + TRAIN_LOG_P01.splitlines()[1].replace("17.00", "16.00") + "\n", "p01")
    assert fresh["step"] == [100] and fresh["psnr"] == [16.0]
    # A curve stored in the trainer's metrics.json wins over the log.
    d = tmp_path / "results" / SCENE
    mp = d / "partitions" / "p01" / "metrics.json"
    _json(mp, {**json.loads(mp.read_text()), "curve": [{"step": 50, "loss": 0.5, "psnr": 15.0}]})
    m2 = report.collect_metrics(tmp_path / "results", tmp_path / "benchmarks", SCENE)
    assert m2["training"]["p01"]["curve"]["step"] == [50]
    assert m2["sources"]["training.p01.curve"]["file"].endswith("partitions/p01/metrics.json")


def test_metrics_json_is_strict_json(tmp_path):
    _, mjson, _ = build(tmp_path)

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    json.loads(mjson.read_text(), parse_constant=refuse)


def _attrs(page: str, name: str) -> list[str]:
    return re.findall(rf"""\b{name}\s*=\s*["']([^"']*)["']""", page, flags=re.I)


def test_html_is_one_offline_file_and_explains_a_missing_dtm(tmp_path):
    m, _, html_path = build(tmp_path, dtm=False)
    page = html_path.read_text(encoding="utf-8")
    assert not list(html_path.parent.glob(".*partial"))  # written atomically
    assert f"<h1>{SCENE} — quality report</h1>" in page
    # Nothing is fetched from elsewhere: no external src/href, no stylesheet links or script sources,
    # no CSS url(); every image is embedded.
    assert not re.search(r"""\b(src|href|action|poster|data)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert not re.search(r"<link\b|<script\b|@import|url\(", page, re.I)
    imgs = re.findall(r"<img\b[^>]*>", page, re.I)
    srcs = _attrs(" ".join(imgs), "src")
    assert len(imgs) == len(srcs) >= 6  # camera map, partitions, curves, render + photo, DSM, ortho
    assert all(s.startswith("data:image/") and ";base64," in s for s in srcs)
    assert all(h.startswith("#") for h in _attrs(page, "href"))
    assert "default-src 'none'" in page  # the browser itself refuses anything external
    # Missing inputs are explained: no DTM, no QGIS map.
    assert "No DTM: products/dtm.tif is absent" in page
    assert "No QGIS map: report/map.png is absent" in page
    # The headline figures and a table with units.
    for text in ("4 / 5", "0.100 m", "21.25 dB", "0.12 m", "Peak memory, largest job (MB)", "CHK01"):
        assert text in page
    # The files table shows the size measured on disk.
    assert re.search(r"products/points\.laz</code></td><td class=\"num\">4\.3 kB</td><td class=\"num\">4 321<", page)


def test_html_with_a_dtm_and_a_qgis_map(tmp_path):
    d = make_scene(tmp_path, dtm=True)
    (d / "report").mkdir()
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(d / "report" / "map.png")
    m = report.collect_metrics(tmp_path / "results", tmp_path / "benchmarks", SCENE)
    out = report.render_html(m, tmp_path / "results", tmp_path / "out" / "report.html")
    page = out.read_text(encoding="utf-8")
    assert "No DTM" not in page and "No QGIS map" not in page
    assert "The QGIS project&#x27;s map" in page
    assert {f["path"] for f in m["files"]} >= {"products/dtm.tif", "report/map.png"}


def test_a_run_with_nothing_yet_still_gets_a_report_that_says_why(tmp_path):
    (tmp_path / "results" / SCENE).mkdir(parents=True)
    m = report.build_report(tmp_path / "results", tmp_path / "benchmarks", SCENE,
                            tmp_path / "r" / "metrics.json", tmp_path / "r" / "report.html")
    assert set(m["missing"]) >= {"ingest", "sfm", "georef", "partitions", "training", "heldout", "products", "stages"}
    assert m["headline"] == {} and m["files"] == []
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "georef/frame.json is absent" in page and "products/metrics.json is absent" in page
    assert "partitions/manifest.json is absent" in page and "No DSM: products/dsm.tif is absent" in page
    assert page.count('class="card na"') == 4


def test_products_not_made_yet(tmp_path):
    m, _, html_path = build(tmp_path, products=False)
    page = html_path.read_text(encoding="utf-8")
    assert "products/metrics.json is absent: the products stage has not run yet" in page
    assert "No orthophoto: products/ortho.tif is absent" in page
    assert "dsm_median_error_m" not in m["headline"] and "products not made yet" in page
    # The camera and partition maps are drawn without an orthophoto behind them.
    assert "30 cameras" not in page and "4 cameras (local frame)." in page


def test_without_partitions_the_camera_map_says_where_positions_would_come_from(tmp_path):
    d = make_scene(tmp_path)
    (d / "partitions" / "manifest.json").unlink()
    m = report.collect_metrics(tmp_path / "results", tmp_path / "benchmarks", SCENE)
    page = report.render_html(m, tmp_path / "results", d / "report" / "report.html").read_text(encoding="utf-8")
    assert "No camera map: the camera positions come from partitions/manifest.json" in page
    assert "partitions/manifest.json is absent" in page
    assert m["training"]["p00"]["curve"]["step"] == [100, 200, 300]  # found by the partition folders
