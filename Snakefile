# aerosplat: drone and aerial photos to georeferenced 3D products.
# Table of contents only: configuration, the stage rules in pipeline order, and `all`.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# `snakemake --report report.zip`: the main figures (the scene's own report is report/report.html).
report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/sample.smk"
include: "rules/ingest.smk"
include: "rules/sfm.smk"
include: "rules/georef.smk"
include: "rules/partition.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/products.smk"
include: "rules/report.smk"


# Light jobs run on the submit host under a cluster executor (seconds each, no GPU, no queueing).
localrules:
    all,
    ingest,
    georef,
    report,


rule all:
    default_target: True
    input:
        get_final_outputs,
