#!/usr/bin/env bash
# Runs once inside the freshly created conda env (snakemake --software-deployment-method conda):
# install the aerosplat package from this checkout (envs/ is one level below the repository root).
set -euo pipefail
pip install --no-deps -e "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
