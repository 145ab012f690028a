"""Bad input at the workflow level: the run stops with the file, the key and what to do,
and leaves nothing behind that Snakemake would take as done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import piexif
import yaml
from PIL import Image

from conftest import run_snakemake


def _scene(tmp_path: Path, name: str, cfg: dict) -> Path:
    scenes = tmp_path / "scenes"
    scenes.mkdir(exist_ok=True)
    (scenes / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return scenes


def _photos(folder: Path, n: int, gps: bool) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        exif = {"0th": {piexif.ImageIFD.Make: b"Test", piexif.ImageIFD.Model: b"Cam"}, "Exif": {}, "GPS": {}}
        if gps:
            exif["GPS"] = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((47, 1), (20, 1), (i, 1)),
                           piexif.GPSIFD.GPSLongitudeRef: b"E", piexif.GPSIFD.GPSLongitude: ((8, 1), (30, 1), (0, 1))}
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(
            folder / f"IMG_{i:03d}.jpg", exif=piexif.dump(exif))


def _config_args(scenes: Path, name: str) -> list[str]:
    return ["--cores", "1", "--config", f"scenes_dir={scenes}", f"scenes=[{name}]"]


def test_misspelt_key_stops_before_any_job(tmp_path):
    _photos(tmp_path / "photos", 3, gps=True)
    scenes = _scene(tmp_path, "bad", {"images": str(tmp_path / "photos"), "sfm": {"matchr": "exhaustive"}})
    proc = run_snakemake(tmp_path, *_config_args(scenes, "bad"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "bad.yaml" in out and "sfm.matchr" in out and "did you mean `matcher`" in out
    assert not (tmp_path / "results").exists()


def test_unknown_epsg_stops_before_any_job(tmp_path):
    _photos(tmp_path / "photos", 3, gps=True)
    scenes = _scene(tmp_path, "epsg", {"images": str(tmp_path / "photos"), "crs": "EPSG:999999"})
    proc = run_snakemake(tmp_path, *_config_args(scenes, "epsg"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "epsg.yaml" in out and "EPSG:999999" in out
    assert "not a CRS pyproj knows" in out
    assert not (tmp_path / "results").exists()


def test_images_without_any_position_fail_in_ingest_with_advice(tmp_path):
    _photos(tmp_path / "photos", 4, gps=False)
    scenes = _scene(tmp_path, "nogps", {"images": str(tmp_path / "photos")})
    proc = run_snakemake(tmp_path, *_config_args(scenes, "nogps"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "position" in out and "geo_txt" in out and "gcp_list" in out
    ingest = tmp_path / "results" / "nogps" / "ingest"
    assert not (ingest / "exif.csv").exists() and not (ingest / "images").exists()
