"""Rule train / train_monolithic: Gaussian splatting of one partition."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import train  # noqa: E402

if snakemake.params.inject_failure:
    raise SystemExit(
        f"Partition {snakemake.params.pid}: failing on purpose, as `testing.fail_partitions` in the scene "
        "file asks (fault injection for the workflow's tests). Remove it from the scene file and re-run.")

train.train_partition(
    snakemake.input.manifest,
    snakemake.params.pid,
    train.TrainConfig.from_config(snakemake.params.options),
    snakemake.output.splats,
    snakemake.output.metrics,
    threads=snakemake.threads,
)
