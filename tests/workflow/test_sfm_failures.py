"""SfM on photos that do not overlap: fail with the registered fraction, keep the partial model."""

from __future__ import annotations

import re
import shutil

import numpy as np
import piexif
import pytest
from PIL import Image

from aerosplat import ingest, sfm
from aerosplat.errors import StageFailure

pytestmark = pytest.mark.slow


def _unrelated_photo(path, seed, size=(640, 480)):
    """A textured photo of nothing the others show (smooth multi-scale noise), with GPS far away."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size[1], size[0], 3))
    for cells in (6, 12, 24, 48, 96):
        small = rng.random((cells * size[1] // size[0] + 1, cells + 1, 3))
        img += np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize(size, Image.BICUBIC)) / cells ** 0.3
    img = (255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)
    gps = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((10, 1), (seed, 1), (0, 1)),
           piexif.GPSIFD.GPSLongitudeRef: b"E", piexif.GPSIFD.GPSLongitude: ((20, 1), (0, 1), (0, 1)),
           piexif.GPSIFD.GPSAltitude: (100, 1)}
    Image.fromarray(img).save(path, exif=piexif.dump({"0th": {}, "Exif": {}, "GPS": gps}), quality=92)


def test_non_overlapping_photos_fail_with_fraction_and_keep_partial_model(sample_georef, tmp_path):
    src = sorted((sample_georef / "results/sample/synthetic/images").glob("*.jpg"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in src[:4]:  # four consecutive shots of one flight line overlap each other
        shutil.copy(p, photos / p.name)
    for i in range(6):  # six photos of unrelated places
        _unrelated_photo(photos / f"ZZ_{i:02d}.jpg", seed=i + 1)
    out = tmp_path / "r"
    ingest.run(photos, out / "ingest/images", out / "ingest/exif.csv", out_skipped_csv=out / "ingest/skipped.csv")
    with pytest.raises(StageFailure) as e:
        sfm.run(out / "ingest/images", out / "ingest/exif.csv", out / "sfm/sparse", out / "sfm/report.json",
                out / "sfm/database.db", options={"matcher": "exhaustive"}, threads=2)
    msg = str(e.value)
    m = re.search(r"registered (\d+)/10 images \((\d+)%", msg)
    assert m and 2 <= int(m.group(1)) <= 4 and int(m.group(2)) == 10 * int(m.group(1))
    assert "below the required 50%" in msg
    assert "partial" in msg and "overlap" in msg
    # Nothing that looks done; the partial model kept for inspection.
    assert not (out / "sfm/sparse").exists() and not (out / "sfm/report.json").exists()
    assert not (out / "sfm/database.db").exists()
    partial = out / "sfm/partial"
    assert (partial / "images.bin").exists() and (partial / "points3D.bin").exists()
