"""Rule mosaic: the scene's GIS products from its cells' tiles, and products/metrics.json."""
from pathlib import Path

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import mosaic, products  # noqa: E402

mosaic.mosaic(
    snakemake.input.manifest,
    {Path(f).parent.name: Path(f).parent for f in snakemake.input.cells},
    Path(snakemake.output.metrics).parent,
    products.ProductOptions.from_config(snakemake.params.options),
    truth_dir=snakemake.input.get("truth"),
)
