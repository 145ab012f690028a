"""Rule qgis_project (DESIGN stage 8): the scene's QGIS project, its map image and the EPT point cloud.

Under Snakemake (`script:`): wildcards.scene, params.results_dir (default "results"),
params.qgis_python (optional), input.gcp_list (optional), output.qgz, log[0].

By hand, with the workflow's Python (writes the EPT, then builds the project in QGIS's Python):
    python scripts/qgis_project.py RESULTS_DIR SCENE OUTPUT.qgz [--gcp-list FILE] [--qgis-python PY]
or with QGIS's Python alone (builds the project; the EPT layer only if report/ept exists or laspy imports):
    /usr/bin/python3 scripts/qgis_project.py RESULTS_DIR SCENE OUTPUT.qgz
"""
import argparse
import os
import sys

import _repo_path  # noqa: F401  (the aerosplat package from this checkout, in any env)
from aerosplat.logs import setup_rule_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("scene")
    parser.add_argument("output", help="the project file, results/<scene>/report/<scene>.qgz")
    parser.add_argument("--gcp-list", help="the scene's gcp_list.txt, for the GCPs' positions")
    parser.add_argument("--qgis-python", help="interpreter with QGIS's Python bindings when this one has none")
    parser.add_argument("--build-only", action="store_true", help="build the project here; write no EPT")
    args = parser.parse_args(argv)
    setup_rule_logging(None)
    from aerosplat import qgisproject

    if args.build_only:
        qgisproject.build_project(os.path.join(args.results_dir, args.scene), args.output, gcp_list=args.gcp_list)
    else:
        qgisproject.run(args.results_dir, args.scene, args.output, gcp_list=args.gcp_list,
                        qgis_python_path=args.qgis_python)
    return 0


if "snakemake" in globals():
    setup_rule_logging(snakemake.log[0])  # noqa: F821
    from aerosplat import qgisproject  # noqa: E402

    qgisproject.run(snakemake.params.get("results_dir", "results"), snakemake.wildcards.scene,  # noqa: F821
                    snakemake.output.qgz, gcp_list=snakemake.input.get("gcp_list"),  # noqa: F821
                    qgis_python_path=snakemake.params.get("qgis_python"))  # noqa: F821
elif __name__ == "__main__":
    sys.exit(main())
