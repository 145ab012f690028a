"""The partition manifest (partitions/manifest.json): the contract between the partition stage and
the training, merge and evaluation jobs. Kept apart from the partitioning itself so that those jobs
read it without the SfM stack (their cluster env has no pycolmap)."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .fileio import read_json

MANIFEST_VERSION = 1


def load_manifest(path: str | Path) -> dict:
    manifest = read_json(path)
    if manifest.get("version") != MANIFEST_VERSION:
        raise InputError(f"unsupported partition manifest version {manifest.get('version')}",
                         path=str(path), hint="re-run the partition stage")
    return manifest


def find_partition(manifest: dict, pid: str) -> dict:
    """The manifest entry of partition `pid` (or of the monolithic reference)."""
    if pid == "monolithic" and "monolithic" in manifest:
        return manifest["monolithic"]
    for p in manifest["partitions"]:
        if p["id"] == pid:
            return p
    raise InputError(f"partition '{pid}' is not in the manifest "
                     f"(has {[p['id'] for p in manifest['partitions']]})",
                     hint="re-run the partition stage, or target an existing partition")
