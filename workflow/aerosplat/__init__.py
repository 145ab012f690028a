"""aerosplat: drone and aerial photos to georeferenced 3D products.

All real logic lives in this package; Snakemake scripts only unpack their
inputs and call one function here, so everything is testable without Snakemake.
"""

__version__ = "0.1.0"
