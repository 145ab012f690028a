"""Rule products: one partition cell's tiles (rasters, points, mesh) on the scene grid."""
from pathlib import Path

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

import torch  # noqa: E402

from aerosplat import products  # noqa: E402

torch.set_num_threads(snakemake.threads)
products.cell_products(
    snakemake.params.pid,
    snakemake.input.splats,
    snakemake.input.manifest,
    snakemake.params.depth,
    products.ProductOptions.from_config(snakemake.params.options),
    Path(snakemake.output.report).parent,
)
