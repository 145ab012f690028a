"""Stage 2 — structure from motion with pycolmap (CPU SIFT).

Images and their metadata (`ingest/exif.csv`) go in; a COLMAP binary model in
the SfM's own arbitrary frame comes out, plus `report.json`. GPS positions are
written to the database as pose priors: the spatial matcher pairs images by
them, and the georef stage maps the model onto them.

Cameras: one per (make, model, image size, calibration). A factory or configured
calibration (`ingest.calibration`, DJI DewarpData: see `aerosplat.calibration`)
starts its camera as COLMAP OPENCV (FULL_OPENCV when k3 is not zero) with the
unit's own distortion; other cameras start as `sfm.camera_model` with the
metadata focal (a calibrated focal, sensor width or 35 mm equivalent).

On a nadir-only flight over flat ground a camera cannot tell focal length from
flying height, so bundle adjustment is free to drift the focal (measured: 889 ->
1118 px on brighton_beach, 10 m of vertical error). With `refine_focal: auto` we
therefore hold a metadata focal fixed on nadir-only flights (and a calibrated
camera's distortion with it); georef reports what the heights rest on.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pycolmap

from . import calibration
from .errors import InputError, StageFailure
from .fileio import atomic_path, write_json
from .ingest import ImageMeta, read_exif_csv

log = logging.getLogger(__name__)

# A gimbal pitch within this many degrees of -90 counts as nadir.
NADIR_TOLERANCE_DEG = 10.0

HEURISTIC_FOCAL_SOURCES = ("sensor_width", "35mm_equivalent")
"""Focal estimates from EXIF (not a calibration of the lens): heights resting on them are checked."""

METADATA_FOCAL_SOURCES = calibration.SOURCES + HEURISTIC_FOCAL_SOURCES
"""focal_px sources SfM may hold fixed on a nadir-only flight (ingest.ImageMeta.focal_px_source)."""


@dataclass(frozen=True)
class SfmOptions:
    """The `sfm:` section of a scene YAML (defaults live in config/schema.yaml)."""

    matcher: str = "auto"  # auto | exhaustive | spatial
    exhaustive_max_images: int = 60  # auto: exhaustive up to this many images, spatial above
    spatial_max_neighbors: int = 30
    spatial_max_distance_m: float = 300.0
    mapper: str = "incremental"  # incremental | global
    camera_model: str = "SIMPLE_RADIAL"
    max_num_features: int = 8192
    refine_focal: str = "auto"  # auto | true | false
    min_registered_fraction: float = 0.5
    weak_connection_points: int = 30  # images sharing fewer points are not linked (weak-connection check)
    seed: int = 0

    @staticmethod
    def from_config(d: dict | None) -> "SfmOptions":
        d = dict(d or {})
        d["refine_focal"] = str(d.get("refine_focal", "auto")).lower()
        return SfmOptions(**d)


def is_nadir_only(metas: Sequence[ImageMeta]) -> bool | None:
    """True if every image's gimbal pitch says nadir, False if any is oblique,
    None when the metadata has no gimbal angles to tell."""
    pitches = [m.gimbal_pitch for m in metas if m.gimbal_pitch is not None]
    if len(pitches) < len(metas) or not pitches:
        return None
    return all(abs(p + 90.0) <= NADIR_TOLERANCE_DEG for p in pitches)


def choose_matcher(opts: SfmOptions, n_images: int, n_priors: int) -> str:
    if opts.matcher != "auto":
        if opts.matcher == "spatial" and n_priors < n_images // 2:
            raise InputError(
                f"`sfm.matcher: spatial` needs GPS priors, but only {n_priors} of {n_images} images have one",
                hint="use `matcher: exhaustive` or provide positions (EXIF GPS or geo.txt)",
            )
        return opts.matcher
    if n_images <= opts.exhaustive_max_images or n_priors < n_images // 2:
        return "exhaustive"
    return "spatial"


def _decide_refine_focal(opts: SfmOptions, metas: Sequence[ImageMeta]) -> tuple[bool, str]:
    if opts.refine_focal in ("true", "yes", "1"):
        return True, "config"
    if opts.refine_focal in ("false", "no", "0"):
        return False, "config"
    nadir = is_nadir_only(metas)
    trusted = all(m.focal_px_source in METADATA_FOCAL_SOURCES for m in metas)
    if nadir and trusted:
        return False, ("nadir-only flight with a metadata focal prior: focal (and a calibrated camera's "
                       "distortion) held fixed (nadir views cannot separate focal from flying height)")
    return True, "auto: focal refined (obliques present or no trusted focal prior)"


def camera_groups(metas: Sequence[ImageMeta]) -> list[list[ImageMeta]]:
    """Photos that share one COLMAP camera: same make, model, size and calibration (or heuristic focal)."""
    groups: dict[tuple, list[ImageMeta]] = {}
    for m in metas:
        cal = m.calibration()
        intrinsics = cal.key() if cal is not None else ("focal", round(m.focal_px or 0, 1))
        groups.setdefault((m.make, m.model, m.width, m.height, m.calib_source) + intrinsics, []).append(m)
    return list(groups.values())


def _reader_options(group: Sequence[ImageMeta], opts: SfmOptions) -> pycolmap.ImageReaderOptions:
    """The starting camera of one group: its full calibration (OPENCV), else the configured model."""
    reader = pycolmap.ImageReaderOptions()
    cal = group[0].calibration()
    if cal is not None and cal.has_distortion:
        reader.camera_model, params = cal.colmap()
        reader.camera_params = ",".join(repr(float(p)) for p in params)
    else:
        reader.camera_model = opts.camera_model
    return reader


def _write_database(db_path: Path, images_dir: Path, metas: Sequence[ImageMeta],
                    opts: SfmOptions) -> tuple[int, list[dict]]:
    """Import images (one camera per group), set focal priors, write GPS pose priors.

    Returns the number of priors and one line per camera saying where its intrinsics come from.
    """
    pycolmap.Database.open(str(db_path)).close()
    groups = camera_groups(metas)
    for group in groups:
        pycolmap.import_images(str(db_path), str(images_dir), camera_mode=pycolmap.CameraMode.SINGLE,
                               image_names=[m.name for m in group], options=_reader_options(group, opts))
    by_name = {m.name: m for m in metas}
    n_priors = 0
    with pycolmap.Database.open(str(db_path)) as db:
        images = db.read_all_images()
        # COLMAP already reads EXIF GPS on import (without a covariance); ours replace those.
        existing = {pp.corr_data_id.id: pp for pp in db.read_all_pose_priors()}
        cam_focals: dict[int, list[float]] = {}
        cam_metas: dict[int, ImageMeta] = {}
        for im in images:
            m = by_name[im.name]
            cam_metas.setdefault(im.camera_id, m)
            if m.focal_px:
                cam_focals.setdefault(im.camera_id, []).append(float(m.focal_px))
            pos = m.position_wgs84()
            if pos is not None:
                sh, _, sv = m.position_sigma()
                prior = existing.get(im.image_id) or pycolmap.PosePrior(corr_data_id=im.data_id)
                prior.position = np.asarray(pos, float)
                prior.position_covariance = np.diag([sh * sh, sh * sh, sv * sv])
                prior.coordinate_system = pycolmap.PosePriorCoordinateSystem.WGS84
                if im.image_id in existing:
                    db.update_pose_prior(prior)
                else:
                    db.write_pose_prior(prior)
                n_priors += 1
        cameras = []
        for cam in db.read_all_cameras():
            m = cam_metas[cam.camera_id]
            cal = m.calibration()
            focals = cam_focals.get(cam.camera_id)
            if focals and not (cal is not None and cal.has_distortion):
                params = np.array(cam.params, float)
                for i in cam.focal_length_idxs():
                    params[i] = statistics.median(focals)
                if cal is not None:  # a calibrated focal also knows its principal point
                    params[list(cam.principal_point_idxs())] = (cal.cx, cal.cy)
                cam.params = params
            if focals or cal is not None:
                cam.has_prior_focal_length = True
                db.update_camera(cam)
            cameras.append({"camera_id": cam.camera_id, "make": m.make, "model": m.model,
                            "width": cam.width, "height": cam.height, "model_start": cam.model_name,
                            "params_start": [float(p) for p in cam.params],
                            "intrinsics_source": m.focal_px_source, "calibration_date": m.calib_date,
                            "images": sum(1 for im in images if im.camera_id == cam.camera_id)})
    return n_priors, cameras


def _match(db_path: Path, matcher: str, opts: SfmOptions, threads: int) -> None:
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = threads
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(str(db_path), matching_options=mopts, device=pycolmap.Device.cpu)
    else:
        popts = pycolmap.SpatialPairingOptions()
        popts.max_num_neighbors = opts.spatial_max_neighbors
        popts.max_distance = opts.spatial_max_distance_m
        popts.ignore_z = True
        pycolmap.match_spatial(str(db_path), matching_options=mopts, pairing_options=popts,
                               device=pycolmap.Device.cpu)


def _map(db_path: Path, images_dir: Path, out_dir: Path, opts: SfmOptions, refine_focal: bool,
         refine_extra: bool, threads: int) -> dict[int, pycolmap.Reconstruction]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.mapper == "global":
        gopts = pycolmap.GlobalPipelineOptions()
        gopts.num_threads = threads
        gopts.random_seed = opts.seed
        gopts.mapper.bundle_adjustment.refine_focal_length = refine_focal
        gopts.mapper.bundle_adjustment.refine_extra_params = refine_extra
        gopts.mapper.global_positioning.use_gpu = False
        gopts.mapper.bundle_adjustment.ceres.use_gpu = False
        return pycolmap.global_mapping(str(db_path), str(images_dir), str(out_dir), gopts)
    iopts = pycolmap.IncrementalPipelineOptions()
    iopts.num_threads = threads
    iopts.random_seed = opts.seed
    iopts.ba_refine_focal_length = refine_focal
    iopts.mapper.abs_pose_refine_focal_length = refine_focal
    iopts.ba_refine_extra_params = refine_extra
    iopts.mapper.abs_pose_refine_extra_params = refine_extra
    return pycolmap.incremental_mapping(str(db_path), str(images_dir), str(out_dir), iopts)


def weak_connections(rec: pycolmap.Reconstruction, min_shared: int) -> dict | None:
    """Groups of images that only a few points hold together, or None when the model is one piece.

    Images are linked when they share at least `min_shared` points; more than one linked group
    means the model rests on the few points between them, and the groups may disagree in scale
    or bend apart (two strips that barely overlap). Returns the groups (largest first) and the
    number of points seen from more than one group.
    """
    ids = list(rec.reg_image_ids())
    pairs: Counter = Counter()
    for point in rec.points3D.values():
        seen = sorted({el.image_id for el in point.track.elements})
        for i, a in enumerate(seen):
            for b in seen[i + 1:]:
                pairs[a, b] += 1
    parent = {i: i for i in ids}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), n in pairs.items():
        if n >= min_shared:
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    if len(groups) < 2:
        return None
    group_of = {i: g for g, members in groups.items() for i in members}
    shared = sum(1 for point in rec.points3D.values()
                 if len({group_of[el.image_id] for el in point.track.elements}) > 1)
    named = sorted((sorted(rec.images[i].name for i in members) for members in groups.values()),
                   key=lambda g: (-len(g), g))
    return {"groups": named, "shared_points": shared, "min_shared_points": min_shared,
            "points": int(rec.num_points3D())}


def summarize(rec: pycolmap.Reconstruction, total: int) -> dict:
    """The figures a user checks first: how much registered, how well it fits."""
    cams = {str(cid): {"model": c.model_name, "width": c.width, "height": c.height,
                  "params": [float(p) for p in c.params]} for cid, c in rec.cameras.items()}
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    return {
        "registered": len(registered),
        "total": total,
        "registered_fraction": len(registered) / total if total else 0.0,
        "mean_reproj_error_px": float(rec.compute_mean_reprojection_error()),
        "num_points3d": int(rec.num_points3D()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "cameras": cams,
        "registered_images": registered,
    }


def run(images_dir: str | Path, exif_csv: str | Path, out_sparse: str | Path, out_report: str | Path,
        out_database: str | Path, *, options: SfmOptions | dict | None = None, threads: int = 2) -> dict:
    """Run SfM; write the largest model to `out_sparse` and the figures to `out_report`.

    Fails (StageFailure) when fewer than `min_registered_fraction` of the images
    register; the partial model is kept beside the outputs in `partial/`.
    """
    opts = options if isinstance(options, SfmOptions) else SfmOptions.from_config(options)
    images_dir, out_sparse, out_report = Path(images_dir), Path(out_sparse), Path(out_report)
    metas = read_exif_csv(exif_csv)
    total = len(metas)
    t0 = time.monotonic()
    pycolmap.set_random_seed(opts.seed)
    stage_dir = out_sparse.parent
    partial_dir = stage_dir / "partial"
    shutil.rmtree(partial_dir, ignore_errors=True)

    with atomic_path(out_database) as db_path, atomic_path(out_sparse) as sparse_tmp:
        n_priors, cameras = _write_database(db_path, images_dir, metas, opts)
        log.info("database: %d images, %d GPS pose priors, %d camera(s)", total, n_priors, len(cameras))
        for cam in cameras:
            log.info("camera %d (%s %s, %d x %d, %d images): %s from %s%s", cam["camera_id"], cam["make"],
                     cam["model"], cam["width"], cam["height"], cam["images"], cam["model_start"],
                     cam["intrinsics_source"], f" of {cam['calibration_date']}" if cam["calibration_date"] else "")

        ext = pycolmap.FeatureExtractionOptions()
        ext.num_threads = threads
        ext.sift.max_num_features = opts.max_num_features
        t = time.monotonic()
        pycolmap.extract_features(str(db_path), str(images_dir), image_names=[m.name for m in metas],
                                  extraction_options=ext, device=pycolmap.Device.cpu)
        log.info("SIFT extraction: %.1f s", time.monotonic() - t)

        matcher = choose_matcher(opts, total, n_priors)
        t = time.monotonic()
        _match(db_path, matcher, opts, threads)
        log.info("%s matching: %.1f s", matcher, time.monotonic() - t)

        refine_focal, why = _decide_refine_focal(opts, metas)
        # A full calibration's distortion is held with its focal; a heuristic camera's radial term is
        # always refined (it starts at zero and nothing else knows it).
        calibrated = all(cal is not None and cal.has_distortion for cal in (m.calibration() for m in metas))
        refine_extra = refine_focal or not calibrated
        log.info("focal refinement: %s (%s); distortion refined: %s", refine_focal, why, refine_extra)
        t = time.monotonic()
        maps_dir = sparse_tmp.parent / "models"
        recs = _map(db_path, images_dir, maps_dir, opts, refine_focal, refine_extra, threads)
        log.info("%s mapping: %.1f s, %d model(s)", opts.mapper, time.monotonic() - t, len(recs))

        best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
        summary = summarize(best, total) if best is not None else {
            "registered": 0, "total": total, "registered_fraction": 0.0}
        summary.update({
            "matcher": matcher, "mapper": opts.mapper, "num_models": len(recs),
            "pose_priors": n_priors, "refine_focal": refine_focal, "refine_focal_reason": why,
            "refine_distortion": refine_extra, "camera_sources": cameras,
            "focal_sources": dict(Counter(m.focal_px_source for m in metas)),
            "nadir_only": is_nadir_only(metas),
            "focal_prior_px": _median_or_none([m.focal_px for m in metas]),
            "unregistered_images": sorted(set(m.name for m in metas) - set(summary.get("registered_images", []))),
            "seconds": round(time.monotonic() - t0, 2),
        })
        if best is None or summary["registered_fraction"] < opts.min_registered_fraction:
            if best is not None:
                partial_dir.mkdir(parents=True, exist_ok=True)
                best.write(str(partial_dir))
            write_json(stage_dir / "report.partial.json", summary)
            raise StageFailure(
                f"SfM registered {summary['registered']}/{total} images "
                f"({summary['registered_fraction']:.0%}, below the required "
                f"{opts.min_registered_fraction:.0%}). "
                + (f"The partial model is kept for inspection in {partial_dir}. " if best is not None else "")
                + "Check that the photos overlap (>= 60% forward, >= 40% side) and show texture; "
                "unregistered: " + ", ".join(summary["unregistered_images"][:20])
            )
        weak = weak_connections(best, opts.weak_connection_points)
        summary["weak_connection"] = weak
        if weak:
            log.warning("the model holds together by only %d of its %d points between %d groups of images (no two "
                        "images across groups share %d points): %s. The groups may disagree in scale or bend apart; "
                        "fly more overlap between them, or process them as separate scenes", weak["shared_points"],
                        weak["points"], len(weak["groups"]), weak["min_shared_points"],
                        "; ".join(f"group {k + 1}: {_names(g)}" for k, g in enumerate(weak["groups"])))
        sparse_tmp.mkdir()
        best.write(str(sparse_tmp))
        shutil.rmtree(maps_dir, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    write_json(out_report, summary)
    log.info("SfM: %d/%d registered, %.3f px, %d points, %.1f s", summary["registered"], total,
             summary["mean_reproj_error_px"], summary["num_points3d"], summary["seconds"])
    return summary


def _names(names: Sequence[str], most: int = 8) -> str:
    """'a, b, c' or 'a, b, ... (n images)' for long lists."""
    return ", ".join(names) if len(names) <= most else f"{', '.join(names[:most])}, ... ({len(names)} images)"


def _median_or_none(values):
    v = [x for x in values if x]
    return float(statistics.median(v)) if v else None
