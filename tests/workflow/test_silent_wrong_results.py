"""No silent wrong results: inputs that used to give a run that exits 0 with a wrong model now stop
it, or say so on the console and in the summary (the sample's own photos, as a user would feed them)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import run_snakemake

pytestmark = pytest.mark.slow


def _scene(tmp_path: Path, name: str, cfg: dict) -> list[str]:
    scenes = tmp_path / "scenes"
    scenes.mkdir(exist_ok=True)
    (scenes / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return ["--config", f"scenes_dir={scenes}", f"scenes=[{name}]"]


def _photos(sample_georef: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        shutil.copy2(sample_georef / "results/sample/synthetic/images" / name, dst / name)
    return dst


def test_two_barely_overlapping_strips_stop_at_georef_with_the_groups_named(sample_georef, tmp_path):
    """Two strips sharing a handful of points: SfM registers all 12 in one model, but the strips
    disagree; a fit that kept one strip and called the other 'outliers' used to exit 0 with a tilted
    model. Now SfM names the two groups, and georef fails, keeping the model for inspection."""
    names = [f"IMG_{i:04d}.jpg" for i in (*range(1, 7), *range(19, 25))]
    photos = _photos(sample_georef, tmp_path / "photos", names)
    args = _scene(tmp_path, "strips", {"images": str(photos), "georef": {"method": "gps"}})
    proc = run_snakemake(tmp_path, "--cores", "2", "results/strips/georef/frame.json", *args, check=False)
    console = proc.stdout + proc.stderr
    res = tmp_path / "results/strips"
    report = json.loads((res / "sfm/report.json").read_text())
    weak = report["weak_connection"]
    assert report["registered"] == 12 and weak is not None, report.get("weak_connection")
    assert sorted(sum(weak["groups"], [])) == names and len(weak["groups"]) >= 2
    assert "WARNING [sfm]: the model holds together by only" in console and "group 1: IMG_00" in console
    assert proc.returncode != 0
    assert "georeferencing gives a wrong model" in console
    assert not (res / "georef/frame.json").exists() and not (res / "georef/sparse").exists()  # nothing done
    partial = json.loads((res / "georef/frame.partial.json").read_text())
    assert (res / "georef/partial/images.bin").is_file()
    checks = partial["checks"]
    assert checks["outlier_share"] > 0.2 or checks["attitude_error_deg_median"] > 20 or checks["model_agl_m"] <= 0
    print("strips:", json.dumps(checks), "rmse", partial["rmse_gps_m"], "weak", weak["shared_points"], "points")


def test_a_crs_made_for_elsewhere_is_refused_before_any_job(sample_georef, tmp_path):
    """UTM 15N on a Swiss scene projected fine, into northings of 11,000 km and a wrong scale."""
    photos = _photos(sample_georef, tmp_path / "photos", [f"IMG_{i:04d}.jpg" for i in range(1, 31)])
    args = _scene(tmp_path, "wrongcrs", {"images": str(photos), "crs": "EPSG:32615"})
    proc = run_snakemake(tmp_path, "--cores", "1", "--dry-run", *args, check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for words in ("wrongcrs.yaml", "`crs: EPSG:32615` (WGS 84 / UTM zone 15N) is made for",
                  "longitude -96 to -90", "30 of 30 photo positions lie outside it",
                  "`crs: auto` (here EPSG:32632, WGS 84 / UTM zone 32N)"):
        assert words in console, console[-3000:]
    assert not (tmp_path / "results").exists()


def test_duplicate_photos_are_skipped_listed_and_summarised(sample_georef, tmp_path):
    """Three photos again under other names (a byte copy and two re-encodings with the same pixels):
    skipped, each with the photo it repeats, in skipped.csv, on the console and in the summary."""
    from aerosplat.summary import summarize

    photos = _photos(sample_georef, tmp_path / "photos", [f"IMG_{i:04d}.jpg" for i in range(1, 31)])
    shutil.copy2(photos / "IMG_0003.jpg", photos / "IMG_0003_copy.jpg")
    for name in ("IMG_0010", "IMG_0025"):
        Image.open(photos / f"{name}.jpg").save(photos / f"{name}_export.png")  # lossless: the same pixels
    args = _scene(tmp_path, "dups", {"images": str(photos)})
    proc = run_snakemake(tmp_path, "--cores", "2", "results/dups/ingest/exif.csv", *args)
    console = proc.stdout + proc.stderr
    with open(tmp_path / "results/dups/ingest/skipped.csv", newline="") as fh:
        skipped = {r["name"]: r["reason"] for r in csv.DictReader(fh)}
    assert skipped == {"IMG_0003_copy.jpg": "duplicate of IMG_0003.jpg (the same file)",
                       "IMG_0010_export.png": "duplicate of IMG_0010.jpg (the same pixels)",
                       "IMG_0025_export.png": "duplicate of IMG_0025.jpg (the same pixels)"}
    assert "WARNING [ingest]:" in console and "IMG_0010_export.png: skipped: duplicate of IMG_0010.jpg" in console
    summary = summarize(tmp_path / "results/dups")
    print(summary)
    assert "ingest: 30 photos used, 3 skipped (3 duplicate: IMG_0003_copy.jpg, IMG_0010_export.png, " \
           "IMG_0025_export.png; see" in summary
    assert "warnings [ingest]: 3, e.g." in summary


def test_an_upside_down_or_tilted_fit_is_refused(sample_georef):
    """The checks on the sample's own model: its fit passes; the same fit turned upside down (the
    cameras below their ground, looking up) or tipped over by 40 degrees does not."""
    import numpy as np
    import pycolmap
    from scipy.spatial.transform import Rotation

    from aerosplat.georef import GeorefOptions, geometry_checks
    from aerosplat.ingest import read_exif_csv
    from aerosplat.simfit import Similarity

    res = sample_georef / "results/sample"
    rec = pycolmap.Reconstruction(str(res / "sfm/sparse"))
    metas = {m.name: m for m in read_exif_csv(res / "ingest/exif.csv")}
    sim = Similarity.from_dict(json.loads((res / "georef/frame.json").read_text())["sfm_to_local"])
    opts = GeorefOptions()
    figures, problems = geometry_checks(rec, sim, metas, 30, [], opts)
    assert problems == [] and figures["attitude_error_deg_median"] < 2 and figures["model_agl_m"] > 50
    flipped = Similarity(sim.scale, np.diag([1.0, -1.0, -1.0]) @ sim.R, sim.t)
    figures, problems = geometry_checks(rec, flipped, metas, 30, [], opts)
    assert figures["model_agl_m"] < 0 and any("below it" in p for p in problems), problems
    assert any("not upright" in p for p in problems), problems
    tipped = Similarity(sim.scale, Rotation.from_euler("x", 40, degrees=True).as_matrix() @ sim.R, sim.t)
    _, problems = geometry_checks(rec, tipped, metas, 30, [], opts)
    assert any("cameras look" in p and "gimbal pitch" in p for p in problems), problems
    # Without gimbal angles, the ground plane tells.
    figures, problems = geometry_checks(rec, sim, {}, 30, [], opts)
    assert problems == [] and figures["ground_tilt_deg"] < 10, figures
    _, problems = geometry_checks(rec, tipped, {}, 30, [], opts)
    assert any("its ground leans" in p for p in problems), problems
    _, problems = geometry_checks(rec, sim, metas, 30, [f"IMG_{i:04d}.jpg" for i in range(1, 8)], opts)
    assert any("7 of 30 positions (23%)" in p for p in problems), problems
