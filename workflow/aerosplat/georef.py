"""Stage 3 — georeferencing: the SfM model onto a projected CRS, in the local frame.

The SfM frame is arbitrary (scale, rotation, translation). We fit a similarity
from it to the position sources — EXIF/geo.txt GPS at the camera centres and,
when given, ground control points triangulated from their image observations —
with a robust fit (`simfit`). The delivered model lives in the *local frame*:
delivery CRS coordinates minus `origin`, Z up, metres.

Each position weighs by its own accuracy: the receiver's RTK standard deviations
(DJI XMP), geo.txt's accuracies, else the consumer-GPS default (`gps_sigma_*`);
`frame.json` lists the accuracy each position was given and the RTK share.

Nadir-only flights: over flat ground a nadir camera cannot separate focal length
from flying height, so the model's heights are only as good as the focal prior
SfM held. We say so in `frame.json` (`height_prior`), and compare the model's
flying height above the ground it sees with the relative altitude (DJI XMP
`RelativeAltitude`, height above the take-off point): when the focal is an
estimate (sensor width, 35 mm equivalent) and the two disagree by more than
`height_check_tolerance`, a warning names both heights and both explanations. With
`height_prior: relative_altitude` the focal is rescaled until they match (bundle
adjustment re-run with the focal held each time) — right only when the drone
took off at the level of the mapped ground, hence opt-in.

Check points: gcp_list.txt points named CHK... (any case) and the points of
`positions.check_points` are split off before anything uses GCPs (the CRS zone,
the origin, the fit and its outlier tests), then triangulated in the final model
and compared with their survey (`checkpoints`, `rmse_checkpoints_m`): the one
accuracy figure the fit could not tune itself to. With fewer than 3 control
points left, `method: auto` georeferences as it does without a gcp_list (GPS) and
reports every marked point as a check point.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from pyproj import CRS

from . import crs as crsmod
from .errors import InputError, StageFailure
from .fileio import atomic_path, read_json, remove_paths, write_json
from .ingest import DEFAULT_GPS_SIGMA_H_M, DEFAULT_GPS_SIGMA_V_M, RTK_FLAGS, ImageMeta, read_exif_csv
from .odm_formats import GcpList, parse_crs_header, parse_gcp_list, split_check_points
from .sfm import HEURISTIC_FOCAL_SOURCES, is_nadir_only
from .simfit import FitResult, Similarity, fit_similarity_robust

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeorefOptions:
    """The `georef:` section of a scene YAML (defaults in config/schema.yaml)."""

    method: str = "auto"  # auto | gps | gcp | gcp+gps
    gps_sigma_h_m: float = DEFAULT_GPS_SIGMA_H_M  # used when a position carries no accuracy of its own
    gps_sigma_v_m: float = DEFAULT_GPS_SIGMA_V_M
    gcp_sigma_m: float = 0.05
    outlier_sigmas: float = 3.0  # RANSAC threshold, in sigmas
    # check: report model flying height vs relative altitude | relative_altitude: rescale the focal to match
    # it on nadir-only flights | off
    height_prior: str = "check"
    height_prior_tolerance: float = 0.005  # stop when model AGL matches the prior to this fraction
    height_check_tolerance: float = 0.05  # warn when model AGL and relative altitude differ by more
    model_sigma_gsd: float = 2.0  # the model's own camera-centre uncertainty, in ground pixels
    max_outlier_share: float = 0.2  # more outliers than this: the fit is not trusted
    max_attitude_error_deg: float = 20.0  # cameras' optical axes vs their gimbal pitch
    max_ground_tilt_deg: float = 30.0  # without gimbal angles: the ground plane vs horizontal
    gcp_max_reproj_px: float = 5.0
    seed: int = 0

    @staticmethod
    def from_config(d: dict | None) -> "GeorefOptions":
        return GeorefOptions(**dict(d or {}))


# ----------------------------------------------------------------------------- positions

def image_positions(metas: list[ImageMeta], delivery: CRS, opts: GeorefOptions):
    """Positions of the images in the delivery CRS with their sigmas.

    Returns {name: (xyz [3], sigma [3], source)} for every image that has one.
    """
    out = {}
    geo_groups: dict[str, list[ImageMeta]] = {}
    for m in metas:
        if m.position_source == "geo_txt" and m.geo_x is not None:
            geo_groups.setdefault(m.geo_crs, []).append(m)
    exif = [m for m in metas if m.position_source == "exif" and m.lat is not None and m.lon is not None]
    for m, xyz in zip(exif, crsmod.to_crs(
            np.array([[m.lon, m.lat, m.alt if m.alt is not None else 0.0] for m in exif]).reshape(-1, 3),
            crsmod.WGS84_3D, delivery)):
        out[m.name] = (xyz, np.array(m.position_sigma(opts.gps_sigma_h_m, opts.gps_sigma_v_m)), "exif")
    for crs_text, group in geo_groups.items():
        src = parse_crs_header(crs_text)
        if src.to_epsg() == 4326:
            src = crsmod.WGS84_3D  # geo.txt heights are ellipsoidal like EXIF
        pts = np.array([[m.geo_x, m.geo_y, m.geo_z if m.geo_z is not None else 0.0] for m in group])
        for m, xyz in zip(group, crsmod.to_crs(pts, src, delivery)):
            out[m.name] = (xyz, np.array(m.position_sigma(opts.gps_sigma_h_m, opts.gps_sigma_v_m)), "geo_txt")
    return out


def geographic_centroid(metas: list[ImageMeta], gcp_wgs84: np.ndarray | None):
    """(lat, lon) arrays of every known position, for choosing the UTM zone."""
    lats, lons = [], []
    for pos in filter(None, (m.position_wgs84() for m in metas)):
        lats.append(pos[0])
        lons.append(pos[1])
    if gcp_wgs84 is not None and len(gcp_wgs84):
        lons.extend(gcp_wgs84[:, 0])
        lats.extend(gcp_wgs84[:, 1])
    return np.array(lats, float), np.array(lons, float)


# ----------------------------------------------------------------------------- GCPs

def triangulate_rays(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares intersection of rays (origins [N, 3], unit dirs [N, 3])."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    return np.linalg.solve(A, b)


def triangulate_gcps(rec: pycolmap.Reconstruction, gcps, metas_by_name: dict[str, ImageMeta],
                     max_reproj_px: float, kind: str = "GCP"):
    """Triangulate each GCP from its image observations in the SfM frame.

    Image coordinates in gcp_list.txt refer to the original photos (ODM's
    convention), so they are scaled to the ingested size. Returns
    {gcp_name: {"xyz_sfm", "geo", "observations", "used", "reproj_px"}}.
    """
    by_name = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    groups: dict[str, list] = {}
    for ob in gcps.observations:
        groups.setdefault(ob.name, []).append(ob)
    out = {}
    for name, obs in groups.items():
        rays_o, rays_d, used = [], [], []
        for ob in obs:
            im = by_name.get(ob.image)
            if im is None:
                continue
            meta = metas_by_name[ob.image]
            s = meta.width / meta.orig_width if meta.orig_width else 1.0
            uv = np.array([ob.im_x * s, ob.im_y * s], float)
            cam = rec.cameras[im.camera_id]
            xy = np.asarray(cam.cam_from_img(uv), float).ravel()[:2]
            d_cam = np.array([xy[0], xy[1], 1.0])
            R = np.asarray(im.cam_from_world().rotation.matrix())
            d = R.T @ d_cam
            rays_o.append(np.asarray(im.projection_center(), float))
            rays_d.append(d / np.linalg.norm(d))
            used.append((ob, im, uv))
        if len(used) < 2:
            log.warning("%s %s: seen in %d registered image(s); needs 2 to triangulate, skipped", kind, name,
                        len(used))
            continue
        X = triangulate_rays(np.array(rays_o), np.array(rays_d))
        errs = []
        for ob, im, uv in used:
            p = rec.cameras[im.camera_id].img_from_cam(np.asarray(im.cam_from_world() * X, float))
            errs.append(float(np.linalg.norm(np.asarray(p, float).ravel()[:2] - uv)))
        keep = [e <= max_reproj_px for e in errs]
        if sum(keep) >= 2 and not all(keep):
            X = triangulate_rays(np.array(rays_o)[keep], np.array(rays_d)[keep])
        if sum(keep) < 2:
            log.warning("%s %s: reprojection errors %s px exceed %.1f px; skipped (check its image marks)",
                        kind, name, [round(e, 1) for e in errs], max_reproj_px)
            continue
        out[name] = {"xyz_sfm": X, "geo": np.array([obs[0].geo_x, obs[0].geo_y, obs[0].geo_z], float),
                     "observations": len(obs), "used": int(sum(keep)),
                     "reproj_px": float(np.median(np.array(errs)[keep]))}
    return out


# ----------------------------------------------------------------------------- height prior

def model_agl(rec: pycolmap.Reconstruction, sim: Similarity) -> float | None:
    """Median over images of camera height above the median height of the points it sees (metres)."""
    heights = []
    for iid in rec.reg_image_ids():
        im = rec.images[iid]
        c = sim.apply(np.asarray(im.projection_center(), float)[None])[0]
        zs = [rec.points3D[p.point3D_id].xyz for p in im.points2D if p.has_point3D()]
        if len(zs) < 20:
            continue
        z = sim.apply(np.asarray(zs, float))[:, 2]
        heights.append(c[2] - float(np.median(z)))
    return float(np.median(heights)) if heights else None


def ground_pixel(rec: pycolmap.Reconstruction, sim: Similarity) -> float | None:
    """Metres per pixel at the model's median flying height (None when it has no positive height)."""
    agl = model_agl(rec, sim)
    focal = float(np.median([c.mean_focal_length() for c in rec.cameras.values()]))
    return agl / focal if agl and agl > 0 and focal > 0 else None


def attitude_errors(rec: pycolmap.Reconstruction, sim: Similarity, metas: dict[str, ImageMeta]) -> list[float]:
    """Per image with a gimbal pitch: |elevation of the model's optical axis - gimbal pitch| (degrees)."""
    out = []
    for iid in rec.reg_image_ids():
        im = rec.images[iid]
        pitch = metas[im.name].gimbal_pitch if im.name in metas else None
        if pitch is None:
            continue
        axis = sim.R @ (np.asarray(im.cam_from_world().rotation.matrix()).T @ np.array([0.0, 0.0, 1.0]))
        elevation = np.degrees(np.arcsin(np.clip(axis[2] / np.linalg.norm(axis), -1, 1)))
        out.append(float(abs(elevation - pitch)))
    return out


def ground_tilt_deg(rec: pycolmap.Reconstruction, sim: Similarity) -> float | None:
    """Angle (degrees) between vertical and the normal of the plane best fitting the model's points."""
    pts = np.array([p.xyz for p in rec.points3D.values()])
    if len(pts) < 10:
        return None
    pts = sim.apply(pts)
    # A few points triangulated near the horizon (kilometres off) would decide the plane alone.
    lo, hi = np.percentile(pts, [5, 95], axis=0)
    pts = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]
    _, _, vt = np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)
    return float(np.degrees(np.arccos(min(1.0, abs(vt[2, 2])))))


def geometry_checks(rec: pycolmap.Reconstruction, sim: Similarity, metas: dict[str, ImageMeta],
                    n_positions: int, outliers: list[str], opts: "GeorefOptions") -> tuple[dict, list[str]]:
    """Whether the fitted model stands upright above its ground and agrees with most positions.

    Returns the figures (for frame.json) and the reasons the result must not be delivered.
    A failed RANSAC on a badly connected model exits with a tilted, upside-down or mostly
    "outlier" fit that still has a small residual on the few positions it kept.
    """
    errors = attitude_errors(rec, sim, metas)
    agl = model_agl(rec, sim)
    tilt = ground_tilt_deg(rec, sim)
    figures = {"outlier_share": len(outliers) / n_positions if n_positions else 0.0,
               "attitude_error_deg_median": float(np.median(errors)) if errors else None,
               "ground_tilt_deg": tilt, "model_agl_m": agl}
    problems = []
    if n_positions and figures["outlier_share"] > opts.max_outlier_share:
        problems.append(f"{len(outliers)} of {n_positions} positions ({figures['outlier_share']:.0%}) disagree with the "
                        f"model beyond {opts.outlier_sigmas:g} sigma (limit `georef.max_outlier_share` "
                        f"{opts.max_outlier_share:.0%}): {', '.join(outliers[:12])}{', ...' if len(outliers) > 12 else ''}")
    if errors and figures["attitude_error_deg_median"] > opts.max_attitude_error_deg:
        problems.append(f"the model is not upright: its cameras look {figures['attitude_error_deg_median']:.0f} degrees "
                        f"away from their gimbal pitch (median; limit `georef.max_attitude_error_deg` "
                        f"{opts.max_attitude_error_deg:g})")
    elif not errors and tilt is not None and tilt > opts.max_ground_tilt_deg:
        problems.append(f"the model is not upright: its ground leans {tilt:.0f} degrees from horizontal (limit "
                        f"`georef.max_ground_tilt_deg` {opts.max_ground_tilt_deg:g})")
    if agl is not None and agl <= 0:
        problems.append(f"the cameras fly {agl:.1f} m above the ground they see: below it")
    return figures, problems


def rescale_focal(rec: pycolmap.Reconstruction, factor: float) -> None:
    """Multiply every camera's focal by `factor` and re-run bundle adjustment with it held fixed."""
    for cam in rec.cameras.values():
        params = np.array(cam.params, float)
        for i in cam.focal_length_idxs():
            params[i] *= factor
        cam.params = params
    ba = pycolmap.BundleAdjustmentOptions()
    ba.refine_focal_length = False
    ba.refine_principal_point = False
    ba.refine_extra_params = True
    ba.print_summary = False
    pycolmap.bundle_adjustment(rec, ba)


def _height_prior(rec, fit, metas, opts, refit, current):
    """Compare (and optionally match) the model's flying height with the relative altitude.

    The relative altitude is the height above the *take-off point*; it equals the height above the
    mapped ground only when the drone took off at the ground's level, which is why matching it is
    opt-in (`height_prior: relative_altitude`) and the default only checks and reports.
    """
    src, dst, sig, kinds, tri = current
    info = {"nadir_only": is_nadir_only(metas), "mode": opts.height_prior, "applied": False}
    rel = [m.rel_alt for m in metas if m.rel_alt is not None]
    if info["nadir_only"] is None:
        info["note"] = "no gimbal angles in the metadata: could not tell whether the flight is nadir-only"
        return info, fit, src, dst, sig, kinds, tri
    focal_src = sorted({m.focal_px_source for m in metas})
    if info["nadir_only"]:
        info["note"] = (f"nadir-only flight: flying height (and so every height) rests on the focal-length prior "
                        f"({', '.join(focal_src)}); a focal error of x % is a height error of about x % of the "
                        f"flying height")
    if opts.height_prior == "off" or len(rel) < max(3, len(metas) // 2):
        return info, fit, src, dst, sig, kinds, tri
    prior = float(statistics.median(rel))
    takeoff = [m.alt - m.rel_alt for m in metas if m.alt is not None and m.rel_alt is not None]
    agl = model_agl(rec, fit.sim)
    info.update({"relative_altitude_m": prior, "model_agl_m": agl,
                 "takeoff_altitude_m": float(statistics.median(takeoff)) if takeoff else None,
                 "focal_px": [float(c.mean_focal_length()) for c in rec.cameras.values()]})
    if agl is not None:
        info["ground_above_takeoff_m"] = prior - agl
        check = height_check(agl, prior, focal_src, info["focal_px"], opts.height_check_tolerance)
        if check and info["nadir_only"]:
            info["warning" if set(focal_src) & set(HEURISTIC_FOCAL_SOURCES + ("none",)) else "check"] = check
            if "warning" in info:
                log.warning("%s", check)
            else:
                log.info("%s", check)
    if opts.height_prior == "relative_altitude" and info["nadir_only"]:
        for it in range(6):
            if agl is None or abs(agl / prior - 1.0) <= opts.height_prior_tolerance:
                break
            rescale_focal(rec, prior / agl)
            src, dst, sig, kinds, tri = refit()
            fit = _fit(src, dst, sig, opts)
            agl = model_agl(rec, fit.sim)
            log.info("height prior iteration %d: model AGL %.2f m vs relative altitude %.2f m", it + 1, agl, prior)
            info["applied"] = True
        info.update({"model_agl_after_m": agl,
                     "focal_px_after": [float(c.mean_focal_length()) for c in rec.cameras.values()],
                     "note": "nadir-only flight: flying height set from the relative altitude, assuming the take-off "
                             "point is at the level of the mapped ground"})
    return info, fit, src, dst, sig, kinds, tri


def height_check(agl: float, prior: float, focal_sources: list[str], focal_px: list[float],
                 tolerance: float) -> str | None:
    """The message for a model flying height that disagrees with the relative altitude, else None.

    Two explanations fit a nadir-only flight, and only the user knows which: the take-off point is
    not at the level of the mapped ground, or the focal prior is off by the same ratio.
    """
    ratio = agl / prior
    if abs(ratio - 1.0) <= tolerance:
        return None
    focal = ", ".join(f"{f:.1f}" for f in focal_px)
    return (f"model flying height {agl:.1f} m vs relative altitude {prior:.1f} m ({100 * (ratio - 1):+.1f} %, "
            f"tolerance {100 * tolerance:.0f} %): either the take-off point is {abs(prior - agl):.1f} m "
            f"{'below' if prior > agl else 'above'} the mapped ground, or the focal-length prior "
            f"({', '.join(focal_sources)}; {focal} px) is off by {100 * abs(1 / ratio - 1):.1f} % and every height "
            f"with it. Choose with `georef.height_prior` in the scene YAML: `relative_altitude` rescales the "
            f"focal to the relative altitude (right when the drone took off at ground level), `check` keeps the "
            f"focal (right when the take-off point was higher or lower); a factory calibration "
            f"(`ingest.calibration`) settles it.")


def position_accuracy(metas: list[ImageMeta], positions: dict) -> dict:
    """Share of RTK-fixed photos and the accuracies the positions were given, for frame.json."""
    used = [m for m in metas if m.name in positions]
    flags = [RTK_FLAGS.get(m.rtk_flag, "none" if m.rtk_flag is None else f"flag {m.rtk_flag}") for m in used]
    sig = np.array([positions[m.name][1] for m in used]).reshape(-1, 3)
    return {
        "rtk_fixed_share": (flags.count("fixed") / len(used)) if used else 0.0,
        "rtk_solutions": {k: flags.count(k) for k in sorted(set(flags))},
        "accuracy_sources": {k: [m.position_accuracy_source for m in used].count(k)
                             for k in sorted({m.position_accuracy_source for m in used})},
        "sigma_median_m": {"horizontal": float(np.median(sig[:, :2])) if len(sig) else None,
                           "vertical": float(np.median(sig[:, 2])) if len(sig) else None},
    }


# ----------------------------------------------------------------------------- main

def _fit(src, dst, sig, opts) -> FitResult:
    return fit_similarity_robust(src, dst, sig, ransac_threshold=opts.outlier_sigmas, seed=opts.seed)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a ** 2))) if a.size else float("nan")


MIN_CONTROL_POINTS = 3  # a similarity has 7 degrees of freedom; 3 points fix it


def _split_points(gcp_list, check_points, known: set[str], method: str, scene_config: str):
    """(control GcpList or None, [check GcpList...], method) from the scene's point files.

    Check points leave here, before anything uses GCPs. With fewer than 3 control points left,
    `auto` (and `gps`) does what it does without a gcp_list (GPS) and every marked point becomes
    a check point; a GCP method (`gcp`, `gcp+gps`) cannot and stops.
    """
    control, checks = None, []
    if gcp_list:
        control, chk = split_check_points(parse_gcp_list(gcp_list, known, min_gcps=1))
        checks.append(chk)
    if check_points:
        checks.append(parse_gcp_list(check_points, known, min_gcps=1))
    checks = [c for c in checks if c.names]
    seen: dict[str, str] = {n: str(gcp_list) for n in (control.names if control else [])}
    for c in checks:
        for n in c.names:
            if n in seen:
                raise InputError(f"point {n!r} is listed both in {seen[n]} and in {c.path}", path=c.path,
                                 hint="a point is either a control point or a check point: rename or remove one")
            seen[n] = c.path
    if control is not None and len(control.names) < MIN_CONTROL_POINTS:
        n_check = sum(len(c.names) for c in checks)
        what = (f"{len(control.names)} control point(s) ({', '.join(control.names) or 'none'}) besides "
                f"{n_check} check point(s) in {gcp_list}; fitting to GCPs needs {MIN_CONTROL_POINTS}")
        if "gcp" in method:
            raise InputError(what, path=scene_config,
                             hint=f"`georef.method: {method}` fits to GCPs: name fewer points CHK... (check points) "
                                  "or set `georef.method: auto` to fall back to GPS")
        log.warning("%s: georeferencing from GPS alone, as `georef.method: %s` does without a gcp_list; "
                    "every marked point is reported as a check point", what, method)
        if control.names:
            checks.insert(0, control)
        control = None
    if method == "auto":
        method = "gcp+gps" if control is not None else "gps"
    return control, checks, method


def _point_rows(tri: dict, geo_delivery: dict, origin: np.ndarray, sim: Similarity, role: str,
                inlier_of: dict | None = None) -> list[dict]:
    """Residual rows (surveyed minus model, metres) of triangulated GCPs or check points."""
    rows = []
    for name, g in tri.items():
        r = geo_delivery[name] - origin - sim.apply(g["xyz_sfm"][None])[0]
        row = {"gcp": name, "role": role, "xyz": [float(v) for v in geo_delivery[name]],
               "dx": float(r[0]), "dy": float(r[1]), "dz": float(r[2]), "horizontal_m": float(np.hypot(r[0], r[1])),
               "observations": g["observations"], "used": g["used"], "reproj_px": g["reproj_px"]}
        if inlier_of is not None:
            row["inlier"] = inlier_of.get(("gcp", name))
        rows.append(row)
    return rows


def _point_rmse(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    return {"horizontal": _rms(np.array([r["horizontal_m"] for r in rows])),
            "vertical": _rms(np.array([r["dz"] for r in rows])), "count": len(rows)}


def _delivery_positions(points: GcpList, delivery: CRS) -> dict[str, np.ndarray]:
    """{name: surveyed position in the delivery CRS}."""
    first = {}
    for o in points.observations:
        first.setdefault(o.name, (o.geo_x, o.geo_y, o.geo_z))
    xyz = crsmod.to_crs(np.array(list(first.values()), float).reshape(-1, 3), points.crs, delivery)
    return dict(zip(first, xyz))


def run(sfm_sparse: str | Path, exif_csv: str | Path, out_sparse: str | Path, out_frame: str | Path, *,
        crs: str | int | None = "auto", gcp_list: str | Path | None = None,
        check_points: str | Path | None = None, truth_dir: str | Path | None = None,
        options: GeorefOptions | dict | None = None, scene_config: str = "scene config") -> dict:
    """Georeference `sfm_sparse`; write the local-frame model and `frame.json`."""
    t0 = time.monotonic()
    opts = options if isinstance(options, GeorefOptions) else GeorefOptions.from_config(options)
    metas = read_exif_csv(exif_csv)
    metas_by_name = {m.name: m for m in metas}
    rec = pycolmap.Reconstruction(str(sfm_sparse))
    # name -> image id; poses are always read from the current model (bundle adjustment may move them).
    reg = {rec.images[i].name: i for i in rec.reg_image_ids()}

    def centre(model: pycolmap.Reconstruction, name: str) -> np.ndarray:
        return np.asarray(model.images[reg[name]].projection_center(), float)

    gcps, check_lists, method = _split_points(gcp_list, check_points, set(metas_by_name), opts.method, scene_config)
    gcp_wgs84 = None
    if gcps is not None:
        g = np.array([[o.geo_x, o.geo_y, o.geo_z] for o in gcps.observations], float)
        gcp_wgs84 = crsmod.to_crs(g, gcps.crs, crsmod.WGS84_3D)
    lat, lon = geographic_centroid(metas, gcp_wgs84)
    delivery = crsmod.choose_delivery_crs(crs, lat, lon, source=scene_config)
    if crs not in (None, "", "auto"):
        crsmod.check_area_of_use(delivery, lat, lon, configured=crs, source=scene_config)
    epsg = delivery.to_epsg()
    log.info("delivery CRS: %s (EPSG:%s)", delivery.name, epsg)

    positions = image_positions(metas, delivery, opts)
    if "gcp" in method and gcps is None:
        raise InputError(f"`georef.method: {method}` needs `gcp_list` in the scene YAML", path=scene_config,
                         hint="add `gcp_list: path/to/gcp_list.txt` (OpenDroneMap format) or use `method: gps`")

    cam_names = [n for n in reg if n in positions]
    all_dst = [positions[n][0] for n in cam_names]
    gcp_geo_delivery = _delivery_positions(gcps, delivery) if gcps is not None else {}
    all_dst += list(gcp_geo_delivery.values())
    if not all_dst:
        raise InputError("no registered image has a position and no GCP is usable", path=exif_csv,
                         hint="provide EXIF GPS, a geo.txt or a gcp_list.txt (see config/README.md)")
    origin = np.round(np.mean(np.array(all_dst), axis=0))

    model_sigma = 0.0  # the SfM camera centres' own uncertainty (m), added to each position's

    def correspondences(rec_now):
        src, dst, sig, kinds = [], [], [], []
        if method in ("gps", "gcp+gps"):
            for n in cam_names:
                src.append(centre(rec_now, n))
                dst.append(positions[n][0] - origin)
                sig.append(np.hypot(positions[n][1], model_sigma))
                kinds.append(("image", n))
        tri = {}
        if gcps is not None:
            tri = triangulate_gcps(rec_now, gcps, metas_by_name, opts.gcp_max_reproj_px)
            for name, g in tri.items():
                src.append(g["xyz_sfm"])
                dst.append(gcp_geo_delivery[name] - origin)
                sig.append(np.full(3, opts.gcp_sigma_m))
                kinds.append(("gcp", name))
        if len(src) < 3:
            raise StageFailure(
                f"only {len(src)} usable correspondences for georeferencing (method {method}); need 3. "
                + ("Check the GCP image marks (gcp_list.txt) and that the GCP images registered."
                   if gcps is not None else "Too few registered images carry GPS."))
        return np.array(src), np.array(dst), np.array(sig), kinds, tri

    src, dst, sig, kinds, tri = correspondences(rec)
    fit = _fit(src, dst, sig, opts)
    # A similarity cannot make the model's camera centres better than its own precision (about a
    # ground pixel or two): against RTK's 2 cm, decimetres of model error would otherwise be "outliers".
    gsd = ground_pixel(rec, fit.sim)
    if gsd and opts.model_sigma_gsd > 0 and method != "gcp":
        model_sigma = opts.model_sigma_gsd * gsd
        src, dst, sig, kinds, tri = correspondences(rec)
        fit = _fit(src, dst, sig, opts)

    # Nadir-only flights: the flying height rests on the focal prior; the relative altitude checks it
    # (or, when configured, sets it).
    height_info, fit, src, dst, sig, kinds, tri = _height_prior(
        rec, fit, [metas_by_name[n] for n in reg], opts, lambda: correspondences(rec), (src, dst, sig, kinds, tri))

    sim = fit.sim
    # Residuals of every positioned image (inliers or not) and GCP.
    per_image = []
    cam_res = []
    for n in cam_names:
        c = sim.apply(centre(rec, n)[None])[0]
        r = positions[n][0] - origin - c
        per_image.append({"image": n, "source": positions[n][2], "dx": float(r[0]), "dy": float(r[1]),
                          "dz": float(r[2]), "horizontal_m": float(np.hypot(r[0], r[1])),
                          "sigma_m": [round(float(v), 4) for v in positions[n][1]],
                          "accuracy_source": metas_by_name[n].position_accuracy_source})
        cam_res.append(r)
    inlier_of = {k: bool(fit.inliers[i]) for i, k in enumerate(kinds)}
    for p in per_image:
        p["inlier"] = inlier_of.get(("image", p["image"]), None)
    cam_res = np.array(cam_res).reshape(-1, 3)
    inl = np.array([p["inlier"] is not False for p in per_image], bool)
    gcp_rows = _point_rows(tri, gcp_geo_delivery, origin, sim, "control", inlier_of)
    # Check points: triangulated in the final model, after the fit that never saw them.
    check_rows = []
    for points in check_lists:
        check_tri = triangulate_gcps(rec, points, metas_by_name, opts.gcp_max_reproj_px, kind="check point")
        check_rows += _point_rows(check_tri, _delivery_positions(points, delivery), origin, sim, "check")
    n_check = sum(len(c.names) for c in check_lists)
    rmse_check = _point_rmse(check_rows)
    if rmse_check:
        log.info("check points (not in the fit): %d of %d triangulated, RMSE %.3f m horizontal, %.3f m vertical",
                 len(check_rows), n_check, rmse_check["horizontal"], rmse_check["vertical"])
    elif n_check:
        log.warning("none of the %d check point(s) could be triangulated (see above): no check-point RMSE", n_check)
    outliers = [p["image"] for p in per_image if p["inlier"] is False]
    if outliers:
        log.warning("GPS outliers (excluded from the fit): %s", ", ".join(outliers))

    frame = {
        "epsg": epsg,
        "crs_name": delivery.name,
        "crs_wkt": delivery.to_wkt(),
        "origin": [float(v) for v in origin],
        "frame": "local = delivery CRS - origin; Z up; metres",
        "vertical_reference": "as the position source (EXIF GPS altitude / geo.txt / GCP z), unchanged",
        "method": method,
        "scale": float(sim.scale),
        "sfm_to_local": sim.to_dict(),
        # The headline is over every position: a fit that keeps only the positions it agrees with
        # must not look good for it. The inliers' figures stand beside it.
        "rmse_gps_m": {
            "horizontal": _rms(np.hypot(cam_res[:, 0], cam_res[:, 1])),
            "vertical": _rms(cam_res[:, 2]),
            "horizontal_inliers": _rms(np.hypot(cam_res[inl, 0], cam_res[inl, 1])),
            "vertical_inliers": _rms(cam_res[inl, 2]),
        },
        "model_sigma_m": model_sigma,
        "num_images_with_position": len(cam_names),
        "positions": position_accuracy([metas_by_name[n] for n in cam_names], positions),
        "num_inliers": int(inl.sum()),
        "outliers": outliers,
        "per_image": per_image,
        "gcps": gcp_rows,
        "rmse_gcp_m": _point_rmse(gcp_rows),
        # Points kept out of the fit: the independent accuracy figure.
        "checkpoints": check_rows,
        "rmse_checkpoints_m": rmse_check,
        "height_prior": height_info,
    }

    local_rec = pycolmap.Reconstruction(rec)
    local_rec.transform(pycolmap.Sim3d(sim.scale, pycolmap.Rotation3d(sim.R), sim.t))
    if truth_dir:
        frame.update(compare_to_truth(local_rec, origin, delivery, Path(truth_dir)))
        if method == "gcp+gps" and cam_names:
            # What GPS alone would have given, for the record.
            gsrc = np.array([centre(rec, n) for n in cam_names])
            gdst = np.array([positions[n][0] - origin for n in cam_names])
            gsig = np.array([positions[n][1] for n in cam_names])
            gps_only = pycolmap.Reconstruction(rec)
            gsim = _fit(gsrc, gdst, gsig, opts).sim
            gps_only.transform(pycolmap.Sim3d(gsim.scale, pycolmap.Rotation3d(gsim.R), gsim.t))
            frame["gt_camera_rmse_gps_only_m"] = compare_to_truth(gps_only, origin, delivery,
                                                                  Path(truth_dir))["gt_camera_rmse_m"]
    frame["checks"], problems = geometry_checks(rec, sim, metas_by_name, len(cam_names), outliers, opts)
    frame["seconds"] = round(time.monotonic() - t0, 2)
    if problems:
        partial = Path(out_sparse).parent / "partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        local_rec.write(str(partial))
        write_json(Path(out_frame).with_suffix(".partial.json"), frame)
        hint = f" Height check: {height_info['warning']}" if height_info.get("warning") else ""
        raise StageFailure(
            "georeferencing gives a wrong model: " + "; ".join(problems) + f". GPS residual RMSE over all "
            f"positions {frame['rmse_gps_m']['horizontal']:.2f} m horizontal, {frame['rmse_gps_m']['vertical']:.2f} m "
            f"vertical. Likely causes: the SfM model is two weakly connected pieces (see the sfm log's "
            f"weak-connection warning), wrong positions, or a wrong focal prior.{hint} The model and the figures "
            f"are kept for inspection in {partial} and {Path(out_frame).with_suffix('.partial.json')}.")
    remove_paths([Path(out_sparse).parent / "partial", Path(out_frame).with_suffix(".partial.json")])

    with atomic_path(out_sparse) as tmp:
        tmp.mkdir()
        local_rec.write(str(tmp))
    write_json(out_frame, frame)
    log.info("georef: EPSG:%s, scale %.4f, GPS RMSE h %.2f m v %.2f m, %d outlier(s)%s", epsg, sim.scale,
             frame["rmse_gps_m"]["horizontal"], frame["rmse_gps_m"]["vertical"], len(outliers),
             f", truth RMSE {frame['gt_camera_rmse_m']:.3f} m" if "gt_camera_rmse_m" in frame else "")
    return frame


def compare_to_truth(local_rec: pycolmap.Reconstruction, origin: np.ndarray, delivery: CRS,
                     truth_dir: Path) -> dict:
    """Camera-centre error against the synthetic scene's true poses, in metres."""
    truth = read_json(truth_dir / "cameras.json")
    tcrs = CRS.from_epsg(int(truth["epsg"]))
    names = {t["name"]: np.asarray(t["center"], float) for t in truth["images"]}
    ours, theirs = [], []
    for iid in local_rec.reg_image_ids():
        im = local_rec.images[iid]
        if im.name in names:
            ours.append(np.asarray(im.projection_center(), float) + origin)
            theirs.append(names[im.name])
    if not ours:
        return {}
    theirs = crsmod.to_crs(np.array(theirs), tcrs, delivery)
    d = np.array(ours) - theirs
    return {"gt_camera_rmse_m": _rms(np.linalg.norm(d, axis=1)),
            "gt_camera_rmse_horizontal_m": _rms(np.hypot(d[:, 0], d[:, 1])),
            "gt_camera_rmse_vertical_m": _rms(d[:, 2]),
            "gt_cameras_compared": len(ours)}
