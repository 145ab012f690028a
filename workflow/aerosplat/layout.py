"""File names of the GIS products, for the rules and the stages alike (no heavy imports here:
the workflow reads this module when it parses the rules)."""

from __future__ import annotations

CELL_FILES = {
    "elevation": "elevation.tif",  # bands: dsm_ortho, dsm_cloud, dtm, views (float32, nodata -9999)
    "ortho": "ortho.tif",  # RGB + alpha
    "points": "points.laz",  # the cell's fused points, ground classified, delivery CRS
    "mesh": "mesh.npz",  # the cell's TSDF mesh, local frame
    "report": "cell.json",
}
"""One partition cell's tiles under `products/<pid>/`."""

PRODUCT_FILES = {
    "dsm": ("dsm.tif", "digital surface model (highest surface), float32 COG, metres"),
    "ortho": ("ortho.tif", "true orthophoto, RGB + alpha COG"),
    "points": ("points.laz", "dense point cloud, LAS 1.4 point format 7, ground = class 2"),
    "copc": ("points.copc.laz", "the same cloud as a Cloud Optimized Point Cloud (web viewers, QGIS >= 3.26)"),
    "mesh_ply": ("mesh.ply", "3D mesh (TSDF fusion), double-precision delivery-CRS vertices"),
    "mesh_obj": ("mesh.obj", "3D mesh, delivery-CRS vertices"),
    "mesh_glb": ("mesh.glb", "3D mesh, local frame (offset and EPSG in mesh.json)"),
    "mesh_json": ("mesh.json", "offset and CRS of mesh.glb"),
    "mesh25_ply": ("mesh_25d.ply", "2.5D mesh of the DSM (OpenDroneMap's default for aerial flights)"),
    "mesh25_obj": ("mesh_25d.obj", "2.5D mesh, delivery-CRS vertices"),
    "mesh25_glb": ("mesh_25d.glb", "2.5D mesh, local frame (offset and EPSG in mesh_25d.json)"),
    "mesh25_json": ("mesh_25d.json", "offset and CRS of mesh_25d.glb"),
    "metrics": ("metrics.json", "GSD, counts, completeness and accuracy of every product"),
}
"""The scene's products under `products/`, always written (Snakemake outputs of `mosaic`)."""

OPTIONAL_FILES = {
    "dtm": ("dtm.tif", "digital terrain model (ground), float32 COG, metres; absent when no ground was found"),
}
"""Products written when the scene allows (not Snakemake outputs: `metrics.json` says why one is absent)."""


def cell_outputs(cell_dir: str) -> dict[str, str]:
    return {key: f"{cell_dir}/{name}" for key, name in CELL_FILES.items()}


def product_outputs(products_dir: str) -> dict[str, str]:
    return {key: f"{products_dir}/{name}" for key, (name, _) in PRODUCT_FILES.items()}
