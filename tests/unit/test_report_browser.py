"""The report in a real browser: headless Chromium opens report.html from disk, with no network, and
the page loads (the scene's title is in the DOM), every image decodes, nothing is blocked or fails
and nothing reaches the console; its screenshot is not blank.

Errors are caught by a probe script put at the top of a copy of the page (before the page's own
Content-Security-Policy, which forbids scripts): it records load errors, uncaught exceptions,
policy violations and console.error calls in attributes of <html>, which `--dump-dom` returns once
the page has loaded. Chromium's own console log (stderr) is checked as well. A deliberately broken
page proves that the probe sees what it should."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from test_report import SCENE, build

from clients import BROWSER, NO_BROWSER, chromium, open_in_browser

pytestmark = pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)

def test_the_probe_sees_broken_images_exceptions_and_blocked_loads(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><script>throw new Error("boom")</script>'
                   '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:">'
                   '</head><body><h1>t</h1><img src="data:image/png;base64,AAAA">'
                   '<img src="http://example.invalid/x.png"></body></html>')
    r = open_in_browser(bad, tmp_path)
    text = " ".join(r["errors"])
    assert "boom" in text and "blocked: http://example.invalid/x.png" in text
    assert "failed to load: data:image/png" in text
    assert r["loaded"] == "images=2 broken=2"


def test_report_loads_in_chromium_without_errors_and_renders(tmp_path):
    _, _, page = build(tmp_path / "run")
    r = open_in_browser(page, tmp_path)
    assert r["returncode"] == 0
    assert f"<h1>{SCENE} — quality report</h1>" in r["dom"]
    assert "No DTM: products/dtm.tif is absent" in r["dom"]
    assert r["errors"] == [], r["errors"]
    assert r["console"] == [], r["console"]
    n = len(re.findall(r"<img\b", page.read_text(encoding="utf-8")))
    assert r["loaded"] == f"images={n} broken=0"

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (4000, 1280, 3)
    # Not blank: the dark header, white sections and the plots' colours are all there.
    assert img.std() > 30 and len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500
    assert (img[:150].mean(axis=(0, 1)) < 60).all()  # the dark header band at the top
    print(f"screenshot: {shot}")
