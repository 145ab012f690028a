"""Rule train / train_monolithic: Gaussian splatting of one partition."""
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import train  # noqa: E402

train.train_partition(
    snakemake.input.manifest,
    snakemake.params.pid,
    train.TrainConfig.from_config(snakemake.params.options),
    snakemake.output.splats,
    snakemake.output.metrics,
    threads=snakemake.threads,
)
