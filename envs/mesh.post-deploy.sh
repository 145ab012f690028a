#!/usr/bin/env bash
# Runs once inside the new conda env (snakemake --software-deployment-method conda). Snakemake runs a
# copy of this file from .snakemake/conda/, so the checkout comes from AEROSPLAT_ROOT, which the
# Snakefile exports. --no-deps: the env file alone decides what else the stage gets.
set -euo pipefail
pip install --no-deps -e "${AEROSPLAT_ROOT:?AEROSPLAT_ROOT is exported by the aerosplat Snakefile}"
