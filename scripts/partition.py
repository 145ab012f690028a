"""Rule partition: ground grid, camera assignment, undistorted training inputs."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import partition  # noqa: E402

partition.run(
    snakemake.input.sparse,
    snakemake.input.images,
    snakemake.input.frame,
    snakemake.output.manifest,
    snakemake.output.points,
    snakemake.output.images,
    partition.PartitionOptions.from_config(snakemake.params.options,
                                           monolithic=snakemake.params.monolithic),
)
