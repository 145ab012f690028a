"""Camera intrinsics from the photos' own metadata: a factory calibration beats any estimate.

On a nadir-only flight the focal length and the flying height cannot be told apart, so every
height of the model is only as good as the focal SfM starts from (and then holds). DJI survey
cameras (Phantom 4 RTK, Mavic 3 Enterprise, Zenmuse P1, Matrice 4E, ...) write their calibration
into XMP, namespace ``http://www.dji.com/drone-dji/1.0/``:

- ``DewarpData = "YYYY-MM-DD;fx,fy,cx_offset,cy_offset,k1,k2,p1,p2,k3"``: the unit's own dated
  calibration, pixels at the photo's native size, principal point as an offset from the image
  centre, OpenCV distortion coefficients; ``DewarpFlag = 1`` means the camera already removed the
  distortion from the pixels;
- ``CalibratedFocalLength`` (pixels) and ``CalibratedOpticalCenterX/Y`` (pixels): the model's
  nominal calibration, no distortion.

The ranking (`choose`): the scene YAML's ``ingest.calibration`` > ``DewarpData`` >
``CalibratedFocalLength`` > the heuristics of `aerosplat.ingest` (sensor width, 35 mm
equivalent). A tag that is malformed or does not fit the image (a principal point far from the
centre, a focal no lens has) is skipped with a warning naming the photo and the tag, and the
next source is used: a calibration made for another image size is worse than none.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

LOG = logging.getLogger(__name__)

MAX_PRINCIPAL_OFFSET = 0.1
"""Largest distance of the principal point from the image centre, as a share of width/height."""

FOCAL_RANGE_WIDTHS = (0.2, 20.0)
"""Plausible focal lengths in image widths (fields of view from about 3 to 136 degrees)."""

MAX_EXIF_MISMATCH = 0.3
"""Largest disagreement of a calibrated focal with the EXIF focal length's estimate (which may be
~10 % off): beyond it the calibration belongs to another image size or lens."""

MAX_ASPECT_MISMATCH = 0.1
"""fx and fy of one calibration differ by less than this share (square-ish pixels)."""

EXIF_FALLBACK = "the EXIF focal length (sensor width or 35 mm equivalent)"
"""What a photo falls back to when none of its calibration sources can be used."""

SOURCES = ("config", "dewarp_data", "calibrated_focal_length")
"""Calibration sources, most trusted first; what `ImageMeta.calib_source` may hold besides none."""


@dataclass(frozen=True)
class Calibration:
    """Pinhole intrinsics plus OpenCV distortion, in pixels of an image of `width` x `height`.

    Pixel convention as COLMAP's: the top-left corner of the top-left pixel is (0, 0), so the
    image centre is (width / 2, height / 2). `k1` is None when the distortion is unknown (a
    focal-only source), 0.0 when known to be zero.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    k1: float | None = None
    k2: float | None = None
    p1: float | None = None
    p2: float | None = None
    k3: float | None = None
    source: str = "none"
    date: str | None = None

    @property
    def has_distortion(self) -> bool:
        """Whether the distortion is known (possibly zero)."""
        return self.k1 is not None

    def scaled(self, width: int, height: int) -> "Calibration":
        """The same camera for the image resized to `width` x `height` (distortion is unitless)."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                                   cx=self.cx * sx, cy=self.cy * sy)

    def undistorted(self) -> "Calibration":
        """The camera of a photo whose pixels were already undistorted (DewarpFlag = 1)."""
        return dataclasses.replace(self, k1=0.0, k2=0.0, p1=0.0, p2=0.0, k3=0.0)

    def colmap(self) -> tuple[str, list[float]]:
        """COLMAP camera model and parameters: OPENCV, or FULL_OPENCV when k3 is not zero.

        Only for calibrations with a known distortion; focal-only ones seed the configured model.
        """
        if not self.has_distortion:
            raise ValueError("a focal-only calibration has no distortion to build an OPENCV camera from")
        base = [self.fx, self.fy, self.cx, self.cy, self.k1, self.k2, self.p1, self.p2]
        if self.k3:
            return "FULL_OPENCV", base + [self.k3, 0.0, 0.0, 0.0]
        return "OPENCV", base

    def key(self) -> tuple:
        """Rounded values that say whether two photos share one camera (1e-3 px, 1e-6)."""
        dist = tuple(None if v is None else round(v, 6) for v in (self.k1, self.k2, self.p1, self.p2, self.k3))
        return (self.width, self.height, round(self.fx, 3), round(self.fy, 3), round(self.cx, 3),
                round(self.cy, 3)) + dist


class CalibrationError(ValueError):
    """A calibration tag or setting that cannot be used; str() says why."""


def _number(text: Any, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise CalibrationError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CalibrationError(f"{what} {text!r} is not a finite number")
    return value


def check_fits(cal: Calibration, exif_focal_px: float | None = None) -> Calibration:
    """`cal` itself when it is plausible for its image size (and near the EXIF focal length's
    estimate `exif_focal_px`, in pixels of the same size, when known), else CalibrationError saying why."""
    w, h = cal.width, cal.height
    if exif_focal_px and abs(cal.fx / exif_focal_px - 1.0) > MAX_EXIF_MISMATCH:
        raise CalibrationError(f"fx = {cal.fx:g} px disagrees with the EXIF focal length ({exif_focal_px:.1f} px) "
                               f"by more than {MAX_EXIF_MISMATCH:.0%}: the calibration is for another image size "
                               f"or lens")
    lo, hi = FOCAL_RANGE_WIDTHS
    for name, f in (("fx", cal.fx), ("fy", cal.fy)):
        if not lo * w <= f <= hi * w:
            raise CalibrationError(f"{name} = {f:g} px is not a plausible focal length for a {w} px wide "
                                   f"image ({lo:g} to {hi:g} image widths)")
    if abs(cal.fx / cal.fy - 1.0) > MAX_ASPECT_MISMATCH:
        raise CalibrationError(f"fx = {cal.fx:g} and fy = {cal.fy:g} px differ by more than "
                               f"{MAX_ASPECT_MISMATCH:.0%}")
    if abs(cal.cx - w / 2) > MAX_PRINCIPAL_OFFSET * w or abs(cal.cy - h / 2) > MAX_PRINCIPAL_OFFSET * h:
        raise CalibrationError(f"principal point ({cal.cx:g}, {cal.cy:g}) px is far from the centre of a "
                               f"{w} x {h} image: the calibration is for another image size")
    return cal


def parse_dewarp_data(text: str, width: int, height: int, exif_focal_px: float | None = None) -> Calibration:
    """DJI ``DewarpData`` ("date;fx,fy,cx_offset,cy_offset,k1,k2,p1,p2,k3") for a `width` x `height` photo."""
    date, sep, values = str(text).strip().partition(";")
    if not sep:
        date, values = "", date
    fields = [v for v in values.split(",")]
    if len(fields) != 9:
        raise CalibrationError(f"has {len(fields)} comma-separated values after the date, expected 9 "
                               f"(fx,fy,cx_offset,cy_offset,k1,k2,p1,p2,k3)")
    names = ("fx", "fy", "cx_offset", "cy_offset", "k1", "k2", "p1", "p2", "k3")
    v = dict(zip(names, (_number(f, n) for f, n in zip(fields, names))))
    return check_fits(Calibration(width, height, v["fx"], v["fy"], width / 2 + v["cx_offset"],
                                  height / 2 + v["cy_offset"], v["k1"], v["k2"], v["p1"], v["p2"], v["k3"],
                                  source="dewarp_data", date=date.strip() or None), exif_focal_px)


def from_calibrated_focal(focal: Any, cx: Any, cy: Any, width: int, height: int,
                          exif_focal_px: float | None = None) -> Calibration:
    """DJI ``CalibratedFocalLength`` / ``CalibratedOpticalCenterX/Y`` (centre when absent); distortion unknown."""
    f = _number(focal, "CalibratedFocalLength")
    ccx = width / 2 if cx is None else _number(cx, "CalibratedOpticalCenterX")
    ccy = height / 2 if cy is None else _number(cy, "CalibratedOpticalCenterY")
    return check_fits(Calibration(width, height, f, f, ccx, ccy, source="calibrated_focal_length"), exif_focal_px)


def from_config(cfg: Mapping[str, Any]) -> Calibration:
    """The scene YAML's ``ingest.calibration`` (pixels at the photos' original size); distortion 0 if unset."""
    w, h = int(cfg["width"]), int(cfg["height"])
    fy = cfg.get("fy") if cfg.get("fy") is not None else cfg["fx"]
    cx = cfg.get("cx") if cfg.get("cx") is not None else w / 2
    cy = cfg.get("cy") if cfg.get("cy") is not None else h / 2
    dist = {k: float(cfg.get(k) or 0.0) for k in ("k1", "k2", "p1", "p2", "k3")}
    return check_fits(Calibration(w, h, float(cfg["fx"]), float(fy), float(cx), float(cy), **dist,
                                  source="config"))


def choose(name: str, xmp: Mapping[str, Any], orig_size: tuple[int, int], size: tuple[int, int],
           override: Calibration | None = None, exif_focal_px: float | None = None,
           log: logging.Logger = LOG) -> Calibration | None:
    """The most trusted usable calibration of one photo, at the ingested `size`; None when it has none.

    `orig_size` is the photo as given (the size DJI's pixel values refer to); `exif_focal_px` the
    EXIF focal length's estimate at that size, if any, against which the tags are checked. Each
    source that cannot be used is reported (photo, tag, why) and the next one is tried. The
    scene's own setting is taken as given.
    """
    w, h = orig_size
    candidates = []
    if override is not None and (override.width, override.height) == (w, h):
        candidates.append(("ingest.calibration", lambda: override))
    if xmp.get("DewarpData") is not None:
        candidates.append(("drone-dji:DewarpData", lambda: parse_dewarp_data(xmp["DewarpData"], w, h, exif_focal_px)))
    if xmp.get("CalibratedFocalLength") is not None:
        candidates.append(("drone-dji:CalibratedFocalLength", lambda: from_calibrated_focal(
            xmp["CalibratedFocalLength"], xmp.get("CalibratedOpticalCenterX"),
            xmp.get("CalibratedOpticalCenterY"), w, h, exif_focal_px)))
    for i, (tag, build) in enumerate(candidates):
        try:
            cal = build()
        except CalibrationError as exc:
            nxt = candidates[i + 1][0] if i + 1 < len(candidates) else EXIF_FALLBACK
            log.warning("%s: %s %s; using %s instead", name, tag, exc, nxt)
            continue
        if cal.source == "dewarp_data" and xmp.get("DewarpFlag") == 1:
            cal = cal.undistorted()
        return cal.scaled(*size) if size != (w, h) else cal
    return None
