"""Rule sfm: pycolmap SIFT, matching and mapping."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import sfm  # noqa: E402

sfm.run(
    snakemake.input.images,
    snakemake.input.exif,
    snakemake.output.sparse,
    snakemake.output.report,
    snakemake.output.database,
    options=snakemake.params.options,
    threads=snakemake.threads,
)
