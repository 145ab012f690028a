# Everything that is not a rule: scene loading and validation, wildcard
# constraints, input functions and the final targets.
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from aerosplat.config import load_scene
from aerosplat.crs import check_area_of_use, parse_delivery_crs
from aerosplat.ingest import quick_positions
from aerosplat.errors import InputError
from aerosplat.layout import CELL_FILES, cell_outputs, product_outputs

BASE = Path(workflow.basedir)
SCHEMA = BASE / "config" / "schema.yaml"
SCENES_DIR = Path(config.get("scenes_dir") or BASE / "config" / "scenes")


def _resolve(scene, value):
    """Scene paths: `{synthetic}` is the scene's generator output; others are relative to the repo."""
    if value in (None, ""):
        return None
    text = str(value).replace("{synthetic}", f"results/{scene}/synthetic")
    if text.startswith("results/") or os.path.isabs(text):
        return text
    return str(BASE / text)


def _check_crs(cfg, path):
    """A configured CRS must be projected, metric and made for where the photos are (before any job)."""
    crs = parse_delivery_crs(cfg["crs"], source=str(path))
    images, geo_txt = cfg["images"], cfg["positions"]["geo_txt"]
    if images.startswith("results/"):
        return  # photos still to be generated: georef checks the CRS against them
    lat, lon = quick_positions(images, geo_txt if geo_txt and not geo_txt.startswith("results/") else None)
    check_area_of_use(crs, lat, lon, configured=cfg["crs"], source=str(path))


def _load_scenes(names):
    scenes = {}
    if isinstance(names, str):
        names = [names]
    if not names:
        raise WorkflowError("config/config.yaml: `scenes` is empty; list at least one scene name")
    for name in names:
        path = SCENES_DIR / f"{name}.yaml"
        try:
            cfg = load_scene(path, SCHEMA)
        except InputError as exc:
            raise WorkflowError(f"Scene '{name}': {exc}") from None
        cfg["_file"] = str(path)
        for key in ("images", "truth", "generate"):
            cfg[key] = _resolve(name, cfg.get(key))
        for key in ("geo_txt", "gcp_list", "check_points"):
            cfg["positions"][key] = _resolve(name, cfg["positions"].get(key))
        images = cfg["images"]
        if not images.startswith("results/") and not os.path.isdir(images):
            raise WorkflowError(
                f"Scene '{name}' ({path}): `images: {images}` is not a folder. "
                "What to do: point `images` at the folder of photos (relative to the repository root).")
        for key in ("geo_txt", "gcp_list", "check_points"):
            p = cfg["positions"][key]
            if p and not p.startswith("results/") and not os.path.isfile(p):
                raise WorkflowError(f"Scene '{name}' ({path}): `positions.{key}: {p}` does not exist.")
        if cfg["crs"] not in ("auto", None):
            try:
                _check_crs(cfg, path)
            except InputError as exc:
                raise WorkflowError(f"Scene '{name}': {exc}") from None
        scenes[name] = cfg
    return scenes


SCENES = _load_scenes(config.get("scenes"))


wildcard_constraints:
    scene="|".join(SCENES),
    pid=r"p\d+",


def get_ingest_inputs(wildcards):
    cfg = SCENES[wildcards.scene]
    inputs = {"images": cfg["images"]}
    for key in ("geo_txt", "gcp_list"):
        if cfg["positions"][key]:
            inputs[key] = cfg["positions"][key]
    return inputs


def get_georef_inputs(wildcards):
    cfg = SCENES[wildcards.scene]
    inputs = {
        "sparse": f"results/{wildcards.scene}/sfm/sparse",
        "exif": f"results/{wildcards.scene}/ingest/exif.csv",
    }
    for key in ("gcp_list", "check_points"):
        if cfg["positions"][key]:
            inputs[key] = cfg["positions"][key]
    if cfg["truth"]:
        inputs["truth"] = cfg["truth"]
    return inputs


def train_gpus(wildcards):
    """Training asks for one GPU unless the scene forces the CPU path."""
    return 0 if SCENES[wildcards.scene]["train"]["device"] == "cpu" else 1


def train_threads(wildcards):
    """Local runs share the cores among the scene's training jobs, which run side by side: one thread
    each when there are several, all of them for a scene of one partition (a SLURM profile sets its
    own count with `set-threads`)."""
    try:
        cores = workflow.cores
    except WorkflowError:  # no --cores (a cluster executor): the profile's set-threads decides
        return 1
    jobs = len(partition_ids(wildcards.scene)) + int(SCENES[wildcards.scene]["evaluate"]["compare_monolithic"])
    return max(1, int(cores) // max(jobs, 1))


def partition_ids(scene):
    """Partition ids from the checkpoint's manifest (re-evaluated once it exists)."""
    manifest = checkpoints.partition.get(scene=scene).output.manifest
    with open(manifest) as fh:
        return [p["id"] for p in json.load(fh)["partitions"]]


def get_partition_splats(wildcards):
    return [f"results/{wildcards.scene}/partitions/{pid}/splats.ply"
            for pid in partition_ids(wildcards.scene)]


def get_evaluate_inputs(wildcards):
    scene = wildcards.scene
    inputs = {
        "manifest": f"results/{scene}/partitions/manifest.json",
        "splats": f"results/{scene}/merged/splats.ply",
        "partition_metrics": [f"results/{scene}/partitions/{pid}/metrics.json"
                              for pid in partition_ids(scene)],
    }
    if SCENES[scene]["evaluate"]["compare_monolithic"]:
        inputs["monolithic"] = f"results/{scene}/monolithic/splats.ply"
    if SCENES[scene]["truth"]:
        inputs["truth"] = SCENES[scene]["truth"]
        inputs["frame"] = f"results/{scene}/georef/frame.json"
    return inputs


def get_final_outputs(wildcards):
    """Targets of `all`: each stage's JSON contract for every configured scene, every partition's
    trained model and every cell's product tiles, so that a deleted or failed partition or cell is
    redone (and what is made from it after it) even when the merged products are still on disk."""
    targets = []
    for scene in SCENES:
        targets += [
            f"results/{scene}/sfm/report.json",
            f"results/{scene}/georef/frame.json",
            f"results/{scene}/merged/metrics.json",
            f"results/{scene}/products/metrics.json",
            f"results/{scene}/report/{scene}.qgz",
            f"results/{scene}/report/report.html",
        ]
        targets += [f"results/{scene}/partitions/{pid}/{name}"
                    for pid in partition_ids(scene) for name in ("splats.ply", "metrics.json")]
        # Each cell's tiles too: Snakemake does not remake a deleted intermediate file while what was
        # made from it is on disk, and a user deletes a cell's tiles to have that cell redone.
        targets += [path for pid in partition_ids(scene)
                    for path in cell_outputs(f"results/{scene}/products/{pid}").values()]
    return targets


def get_mosaic_inputs(wildcards):
    scene = wildcards.scene
    inputs = {
        "manifest": f"results/{scene}/partitions/manifest.json",
        "cells": [f"results/{scene}/products/{pid}/{CELL_FILES['report']}" for pid in partition_ids(scene)],
        "tiles": [p for pid in partition_ids(scene)
                  for p in cell_outputs(f"results/{scene}/products/{pid}").values()],
    }
    if SCENES[scene]["truth"]:
        inputs["truth"] = SCENES[scene]["truth"]
    return inputs


def get_qgis_inputs(wildcards):
    scene = wildcards.scene
    inputs = {
        "frame": f"results/{scene}/georef/frame.json",
        "sparse": f"results/{scene}/georef/sparse",
        "manifest": f"results/{scene}/partitions/manifest.json",
        "exif": f"results/{scene}/ingest/exif.csv",
        "products": f"results/{scene}/products/metrics.json",
        "points": f"results/{scene}/products/points.laz",
    }
    if SCENES[scene]["positions"]["gcp_list"]:
        inputs["gcp_list"] = SCENES[scene]["positions"]["gcp_list"]
    return inputs


def get_report_inputs(wildcards):
    """The report comes last: after the products and, where QGIS can draw it, the project's map
    (it embeds it). Without QGIS here the report does not wait for a project job that will fail."""
    scene = wildcards.scene
    inputs = {
        "frame": f"results/{scene}/georef/frame.json",
        "manifest": f"results/{scene}/partitions/manifest.json",
        "merged": f"results/{scene}/merged/metrics.json",
        "products": f"results/{scene}/products/metrics.json",
    }
    if qgis_problem() is None:
        inputs["map"] = f"results/{scene}/report/map.png"
    return inputs


_QGIS_PROBLEM = []


def qgis_problem():
    """Why QGIS's Python cannot be used here (None when it can); asked once per run."""
    if not _QGIS_PROBLEM:
        from aerosplat.qgisproject import qgis_python, qgis_python_problem

        _QGIS_PROBLEM.append(qgis_python_problem(qgis_python(config.get("qgis_python"))))
    return _QGIS_PROBLEM[0]
