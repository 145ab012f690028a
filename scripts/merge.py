"""Rule merge: partitions cropped to their cells, concatenated into one PLY."""
from pathlib import Path

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import merge  # noqa: E402

merge.merge(
    snakemake.input.manifest,
    {Path(f).parent.name: f for f in snakemake.input.splats},
    snakemake.input.frame,
    snakemake.output.splats,
    snakemake.output.frame,
    snakemake.output.report,
)
