"""Rule ingest: read and check the photos, write ingest/images and exif.csv."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from aerosplat import ingest  # noqa: E402

ingest.run(
    snakemake.input.images,
    snakemake.output.images,
    snakemake.output.exif,
    out_skipped_csv=snakemake.output.skipped,
    max_image_size=snakemake.params.max_image_size,
    min_images=snakemake.params.min_images,
    calibration_config=snakemake.params.calibration,
    threads=snakemake.threads,
    geo_txt=snakemake.input.get("geo_txt"),
    gcp_list=snakemake.input.get("gcp_list"),
)
