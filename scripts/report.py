"""Rule report: report/metrics.json (every figure with its source) and the offline report/report.html."""
from pathlib import Path

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import report  # noqa: E402

# Defaults follow the workflow's layout: results/<scene>/report/..., benchmarks/ and logs/ beside results/.
results_dir = snakemake.params.get("results_dir") or Path(snakemake.output.metrics).parents[2]
report.build_report(
    results_dir,
    snakemake.params.get("benchmarks_dir") or "benchmarks",
    snakemake.wildcards.scene,
    snakemake.output.metrics,
    snakemake.output.html,
    logs_dir=snakemake.params.get("logs_dir") or "logs",
)
