"""Rule generate_scene: the procedural sample scene (images with EXIF, GCPs, truth)."""
import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging

setup_rule_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from aerosplat import samplescene  # noqa: E402

samplescene.generate(snakemake.input.recipe, Path(snakemake.output.images).parent)
