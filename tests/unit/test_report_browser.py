"""The report in a real browser: headless Chromium opens report.html from disk, with no network, and
the page loads (the scene's title is in the DOM), every image decodes, nothing is blocked or fails
and nothing reaches the console; its screenshot is not blank.

Errors are caught by a probe script put at the top of a copy of the page (before the page's own
Content-Security-Policy, which forbids scripts): it records load errors, uncaught exceptions,
policy violations and console.error calls in attributes of <html>, which `--dump-dom` returns once
the page has loaded. Chromium's own console log (stderr) is checked as well. A deliberately broken
page proves that the probe sees what it should."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report import SCENE, build

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome on PATH (install Debian's `chromium`)")

PROBE = """<script>
(function () {
  var errs = [];
  function rec(m) { errs.push(String(m)); document.documentElement.setAttribute("data-errors", JSON.stringify(errs)); }
  window.addEventListener("error", function (e) {
    rec(e.message ? "error: " + e.message
                  : "failed to load: " + String((e.target && (e.target.src || e.target.href)) || "?").slice(0, 80));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { rec("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { rec("blocked: " + e.blockedURI); });
  var ce = console.error;
  console.error = function () { rec("console.error: " + Array.prototype.join.call(arguments, " ")); return ce.apply(console, arguments); };
  window.addEventListener("load", function () {
    var broken = 0;
    for (var i = 0; i < document.images.length; i++) {
      var im = document.images[i];
      if (!im.complete || im.naturalWidth === 0) broken++;
    }
    document.documentElement.setAttribute("data-loaded", "images=" + document.images.length + " broken=" + broken);
  });
})();
</script>"""


def _chromium(tmp: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def open_in_browser(page: Path, tmp: Path) -> dict:
    """Load a probed copy of `page`: {dom, errors, loaded, console} after the load event."""
    text = page.read_text(encoding="utf-8")
    probed = tmp / f"probed_{page.name}"
    probed.write_text(re.sub(r"<head>", "<head>" + PROBE, text, count=1), encoding="utf-8")
    proc = _chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    dom = proc.stdout
    root = re.search(r"<html\b[^>]*>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', root.group(0))) if root else {}
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return {"dom": dom, "errors": json.loads(html.unescape(attrs.get("data-errors", "[]"))),
            "loaded": attrs.get("data-loaded"), "console": console, "returncode": proc.returncode}


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
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (4000, 1280, 3)
    # Not blank: the dark header, white sections and the plots' colours are all there.
    assert img.std() > 30 and len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500
    assert (img[:150].mean(axis=(0, 1)) < 60).all()  # the dark header band at the top
    print(f"screenshot: {shot}")
