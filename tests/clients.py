"""Real clients the products and the report are opened in, for the unit and the workflow tests:
QGIS (its own Python, headless) and Chromium (headless)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from aerosplat import qgisproject as qp

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(b)), None)
NO_BROWSER = "no Chromium or Chrome on PATH (install Debian's `chromium`; `make install` does)"

QGIS_PROBLEM = qp.qgis_python_problem(qp.qgis_python())

REOPEN = r"""
import json, sys
from qgis.core import QgsApplication, QgsProject, QgsPointXY, QgsMapLayer
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QImage
plain = lambda v: None if isinstance(v, QVariant) else v
app = QgsApplication([], False)
app.initQgis()
project = QgsProject.instance()
ok = project.read(sys.argv[1])
layers = []
for layer in project.mapLayers().values():
    e = layer.extent()
    row = {"name": layer.name(), "valid": layer.isValid(), "crs": layer.crs().authid(),
           "provider": layer.providerType(), "source": layer.source(),
           "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]}
    if layer.type() == QgsMapLayer.VectorLayer:
        row["features"] = layer.featureCount()
        row["attributes"] = [[plain(v) for v in f.attributes()] for f in layer.getFeatures()]
        row["fields"] = [f.name() for f in layer.fields()]
    elif layer.type() == QgsMapLayer.RasterLayer:
        row["renderer"] = layer.renderer().type()
        if "Heights" in layer.name():
            c = layer.extent().center()
            row["centre_value"] = layer.dataProvider().sample(QgsPointXY(c.x(), c.y()), 1)[0]
            row["corner_value"] = layer.dataProvider().sample(QgsPointXY(e.xMinimum() + 5, e.yMinimum() + 5), 1)[0]
    elif layer.type() == QgsMapLayer.PointCloudLayer:
        row["points"] = layer.pointCount()
    layers.append(row)
img = QImage(sys.argv[2])
colours = set()
for x in range(0, img.width(), 7):
    for y in range(0, img.height(), 7):
        colours.add(img.pixel(x, y))
root = project.layerTreeRoot()
print("RESULT" + json.dumps({"read": ok, "crs": project.crs().authid(), "layers": layers,
                             "checked": [l.name() for l in root.checkedLayers()],
                             "order": [n.name() for n in root.findLayers()],
                             "map": [img.width(), img.height(), len(colours)]}))
"""


def reopen_project(qgz: Path) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([qp.qgis_python(), "-c", REOPEN, str(qgz), str(qgz.parent / "map.png")],
                          capture_output=True, text=True, timeout=120, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line[len("RESULT"):])


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


def chromium(tmp: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def open_in_browser(page: Path, tmp: Path) -> dict:
    """Load a probed copy of `page`: {dom, errors, loaded, console} after the load event."""
    text = page.read_text(encoding="utf-8")
    probed = tmp / f"probed_{page.name}"
    probed.write_text(re.sub(r"<head>", "<head>" + PROBE, text, count=1), encoding="utf-8")
    proc = chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    dom = proc.stdout
    root = re.search(r"<html\b[^>]*>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', root.group(0))) if root else {}
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return {"dom": dom, "errors": json.loads(html.unescape(attrs.get("data-errors", "[]"))),
            "loaded": attrs.get("data-loaded"), "console": console, "returncode": proc.returncode}


