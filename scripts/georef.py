"""Rule georef: the SfM model onto the delivery CRS, in the local frame."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import georef  # noqa: E402

georef.run(
    snakemake.input.sparse,
    snakemake.input.exif,
    snakemake.output.sparse,
    snakemake.output.frame,
    crs=snakemake.params.crs,
    gcp_list=snakemake.input.get("gcp_list"),
    check_points=snakemake.input.get("check_points"),
    truth_dir=snakemake.input.get("truth"),
    options=snakemake.params.options,
    scene_config=snakemake.params.scene_file,
)
