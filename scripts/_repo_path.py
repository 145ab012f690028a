"""Puts this checkout's workflow/ folder first on sys.path, so that a rule's script imports the
aerosplat package from the checkout in any environment: a per-stage conda env
(--software-deployment-method conda) holds only third-party packages. Snakemake puts scripts/ on
sys.path for every script it runs, which makes this module importable."""
import sys
from pathlib import Path

WORKFLOW_DIR = str(Path(__file__).resolve().parents[1] / "workflow")
if WORKFLOW_DIR not in sys.path:
    sys.path.insert(0, WORKFLOW_DIR)
