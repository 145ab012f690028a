"""Rule evaluate: held-out PSNR/SSIM of the merged model, seams, monolithic comparison."""
from pathlib import Path

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

import torch  # noqa: E402

from aerosplat import evaluate, train  # noqa: E402

torch.set_num_threads(snakemake.threads)
evaluate.evaluate(
    snakemake.input.manifest,
    snakemake.input.splats,
    snakemake.output.metrics,
    snakemake.output.renders,
    train.TrainConfig.from_config(snakemake.params.options),
    monolithic_ply=snakemake.input.get("monolithic"),
    partition_metrics={Path(f).parent.name: f for f in snakemake.input.partition_metrics},
    depth_dir=snakemake.output.depth,
    truth_dsm=(Path(snakemake.input.truth) / "dsm.tif") if snakemake.input.get("truth") else None,
    frame=snakemake.input.get("frame"),
)
