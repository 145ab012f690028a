"""Meshes of the scene and the files they are delivered in.

One module for the concern "triangle meshes": the 2.5D mesh of a DSM (what OpenDroneMap builds for
aerial flights), the full 3D mesh fused from RGB-D views (walls and overhangs included), their
cleaning and decimation, and the three formats a user opens them in.

Geometry is in the local frame (delivery CRS minus the origin offset, metres, Z up) so float32
stays exact to the millimetre. The files carry the precision each format allows: PLY with double
vertices and OBJ with millimetre decimals hold delivery-CRS coordinates; glTF holds float32 only,
so the GLB stays in the local frame, rotated to glTF's Y-up, with the offset and CRS beside it in
`<stem>.json`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import open3d as o3d
from affine import Affine
from pyproj import CRS

from .fileio import atomic_path, write_json
from .gisio import _projected

log = logging.getLogger(__name__)

GLB_AXES = "y_up"
"""The GLB's axes: glTF (x, y, z) = (E - E0, H - H0, -(N - N0)), glTF's own Y-up convention."""

LOCAL_TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Rotation from the local frame (E, N, up) to glTF's (right, up, towards the viewer); det = +1."""

DSM_OVERSAMPLE = 16
"""A DSM is meshed at full resolution up to this many times `max_faces` triangles, coarser beyond."""


@dataclass
class Mesh:
    """A triangle mesh in the local frame."""

    vertices: np.ndarray  # [N, 3] float64, local frame
    faces: np.ndarray  # [M, 3] int64 vertex indices, counter-clockwise seen from outside
    colors: np.ndarray | None = None  # [N, 3] uint8

    @property
    def n_vertices(self) -> int:
        return int(len(self.vertices))

    @property
    def n_faces(self) -> int:
        return int(len(self.faces))


# --------------------------------------------------------------------------------------------
# 2.5D mesh of a DSM
# --------------------------------------------------------------------------------------------

def dsm_mesh(dsm: np.ndarray, transform: Affine, origin: tuple[float, float, float], max_faces: int, *,
             colors: np.ndarray | None = None) -> Mesh:
    """The 2.5D mesh of a DSM: a vertex per valid cell centre, two triangles per 2x2 block of valid cells.

    `dsm` [H, W] heights in the delivery CRS, NaN (any non-finite value) for no data; `transform`
    maps (col, row) to delivery-CRS (x, y); `colors` [H, W, 3] uint8 on the same grid (e.g. the
    orthophoto). Blocks touching no data get no triangles, so holes stay holes. Each block is split
    along the diagonal with the smaller height step (walls stay sharp); cells in no block are
    dropped; then the mesh is decimated to at most `max_faces` triangles. A DSM with more than
    DSM_OVERSAMPLE x `max_faces` triangles' worth of cells is first averaged over k x k blocks so
    memory stays bounded.
    """
    z = np.where(np.isfinite(dsm), np.asarray(dsm, np.float64), np.nan)
    rgb = None if colors is None else np.asarray(colors)[..., :3]
    k = max(1, math.ceil(math.sqrt(2 * np.isfinite(z).sum() / max(1, DSM_OVERSAMPLE * max_faces))))
    if k > 1:
        log.info("DSM %dx%d meshed at 1/%d resolution (max %d faces)", z.shape[1], z.shape[0], k, max_faces)
        z, rgb = _block_mean(z, rgb, k)
        t = transform
        transform = Affine(t.a * k, t.b * k, t.c, t.d * k, t.e * k, t.f)
    valid = np.isfinite(z)
    h, w = z.shape
    index = np.full((h, w), -1, np.int64)
    index[valid] = np.arange(int(valid.sum()))
    rows, cols = np.nonzero(valid)
    xs, ys = cell_centres(transform, rows, cols)
    vertices = np.column_stack([xs - origin[0], ys - origin[1], z[valid] - origin[2]])
    vcol = None if rgb is None else np.ascontiguousarray(rgb[valid], dtype=np.uint8)

    i00, i01, i10, i11 = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    full = (i00 >= 0) & (i01 >= 0) & (i10 >= 0) & (i11 >= 0)
    z00, z01, z10, z11 = (zz[full] for zz in (z[:-1, :-1], z[:-1, 1:], z[1:, :-1], z[1:, 1:]))
    a, b, c, d = i00[full], i01[full], i10[full], i11[full]
    main = np.abs(z00 - z11) <= np.abs(z01 - z10)  # split along 00-11, else along 01-10
    t1 = np.where(main[:, None], np.column_stack([a, c, d]), np.column_stack([a, c, b]))
    t2 = np.where(main[:, None], np.column_stack([a, d, b]), np.column_stack([b, c, d]))
    faces = np.concatenate([t1, t2])
    if transform.a * transform.e - transform.b * transform.d > 0:  # not north-up: keep normals up
        faces = faces[:, ::-1]
    return decimate(compact(Mesh(vertices, np.ascontiguousarray(faces), vcol)), max_faces)


def cell_centres(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delivery-CRS (x, y) of the centres of cells (rows, cols) of a grid with `transform`."""
    c, r = np.asarray(cols, np.float64) + 0.5, np.asarray(rows, np.float64) + 0.5
    t = transform
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def _block_mean(z: np.ndarray, rgb: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Average k x k blocks; a block with fewer than half its cells valid becomes no data."""
    h, w = z.shape
    hh, ww = -(-h // k) * k, -(-w // k) * k
    zp = np.full((hh, ww), np.nan)
    zp[:h, :w] = z
    blocks = zp.reshape(hh // k, k, ww // k, k)
    ok = np.isfinite(blocks)
    n = ok.sum(axis=(1, 3))
    total = np.where(ok, blocks, 0.0).sum(axis=(1, 3))
    out = np.where(n * 2 >= k * k, total / np.maximum(n, 1), np.nan)
    if rgb is None:
        return out, None
    cp = np.zeros((hh, ww, 3), np.float64)
    cp[:h, :w] = rgb
    cb = np.where(ok[..., None], cp.reshape(hh // k, k, ww // k, k, 3), 0.0).sum(axis=(1, 3))
    col = np.clip(np.round(cb / np.maximum(n, 1)[..., None]), 0, 255).astype(np.uint8)
    return out, col


# --------------------------------------------------------------------------------------------
# TSDF mesh of RGB-D views
# --------------------------------------------------------------------------------------------

def tsdf_mesh(views: Iterable, voxel_m: float, trunc_m: float, depth_max_m: float, min_component_faces: int,
              max_faces: int, *, min_views: int = 1) -> Mesh:
    """Fuse RGB-D views into a truncated signed distance volume and extract its coloured surface.

    Each view is (rgb [H, W, 3] uint8, depth [H, W] float z-depth in metres with NaN where
    unknown, K [3, 3], w2c [4, 4]) or an object with those attributes; cameras are COLMAP/OpenCV
    world-to-camera in the local frame, K with pixel centres at +0.5 (COLMAP's and Open3D's
    tensor TSDF's convention alike). Depths beyond `depth_max_m` are ignored; the surface is kept
    where at least `min_views` views observed it. Connected components with fewer than
    `min_component_faces` triangles (floaters) are removed, then degenerate and duplicated
    triangles and unused vertices, then the mesh is decimated to at most `max_faces` triangles.
    """
    o3c = o3d.core
    # A sparse grid of 16^3-voxel blocks that grows as views touch new space (12 bytes a voxel).
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.uint16, o3c.uint16),
        attr_channels=((1), (1), (3)), voxel_size=float(voxel_m), block_resolution=16, block_count=4096,
        device=o3c.Device("CPU:0"))
    multiplier = float(trunc_m) / float(voxel_m)
    n = 0
    for view in views:
        rgb, depth, K, w2c = _view_parts(view)
        d = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        if not d.any():
            continue
        depth_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(d)))
        colour_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb[..., :3], dtype=np.float32) / 255.0))
        K_t = o3c.Tensor(np.asarray(K, np.float64))
        w2c_t = o3c.Tensor(np.asarray(w2c, np.float64))
        blocks = grid.compute_unique_block_coordinates(depth_img, K_t, w2c_t, 1.0, float(depth_max_m), multiplier)
        grid.integrate(blocks, depth_img, colour_img, K_t, w2c_t, 1.0, float(depth_max_m), multiplier)
        n += 1
    if n == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    raw = grid.extract_triangle_mesh(weight_threshold=float(min_views) - 0.5)
    vertices = raw.vertex.positions.numpy().astype(np.float64)
    colors = np.clip(np.round(raw.vertex.colors.numpy() * 255.0), 0, 255).astype(np.uint8)
    mesh = Mesh(vertices, raw.triangle.indices.numpy().astype(np.int64), colors)
    log.info("TSDF of %d views (%d blocks): %d faces before cleaning", n, grid.hashmap().size(), mesh.n_faces)
    del grid, raw
    return decimate(remove_small_components(clean(mesh), min_component_faces), max_faces)


def _view_parts(view) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if hasattr(view, "depth"):
        return view.rgb, np.asarray(view.depth), view.K, view.w2c
    rgb, depth, K, w2c = view
    return rgb, np.asarray(depth), K, w2c


# --------------------------------------------------------------------------------------------
# Cleaning and decimation
# --------------------------------------------------------------------------------------------

def clean(mesh: Mesh) -> Mesh:
    """Merge duplicated vertices; drop degenerate and duplicated triangles and unused vertices."""
    m = _to_o3d(mesh)
    m.remove_duplicated_vertices()
    m.remove_degenerate_triangles()
    m.remove_duplicated_triangles()
    m.remove_unreferenced_vertices()
    return _from_o3d(m)


def compact(mesh: Mesh) -> Mesh:
    """Drop the vertices no triangle uses (isolated DSM cells), renumbering the faces."""
    used = np.zeros(mesh.n_vertices, bool)
    used[mesh.faces.ravel()] = True
    if used.all():
        return mesh
    remap = np.cumsum(used) - 1
    return Mesh(mesh.vertices[used], remap[mesh.faces], None if mesh.colors is None else mesh.colors[used])


def remove_small_components(mesh: Mesh, min_faces: int) -> Mesh:
    """Drop connected components (sharing edges) with fewer than `min_faces` triangles."""
    if min_faces <= 1 or mesh.n_faces == 0:
        return mesh
    m = _to_o3d(mesh)
    labels, sizes, _ = m.cluster_connected_triangles()
    labels, sizes = np.asarray(labels), np.asarray(sizes)
    drop = sizes[labels] < min_faces
    if drop.any():
        log.info("removing %d of %d components (%d faces) under %d faces", int((sizes < min_faces).sum()),
                 len(sizes), int(drop.sum()), min_faces)
        m.remove_triangles_by_mask(drop)
        m.remove_unreferenced_vertices()
    return _from_o3d(m)


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """Quadric-error decimation to at most `max_faces` triangles (boundaries held), then cleaned."""
    if mesh.n_faces <= max_faces:
        return mesh
    m = _to_o3d(mesh)
    target = int(max_faces)
    for _ in range(8):
        out = m.simplify_quadric_decimation(target, boundary_weight=1000.0)
        out.remove_degenerate_triangles()
        out.remove_duplicated_triangles()
        out.remove_unreferenced_vertices()
        if len(out.triangles) <= max_faces:
            break
        target = max(1, int(target * max_faces / len(out.triangles) * 0.98))
    else:
        keep = np.zeros(len(out.triangles), bool)
        keep[:max_faces] = True
        out.remove_triangles_by_mask(~keep)
        out.remove_unreferenced_vertices()
    return _from_o3d(out)


def _to_o3d(mesh: Mesh) -> o3d.geometry.TriangleMesh:
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices, np.float64)),
                                  o3d.utility.Vector3iVector(np.asarray(mesh.faces, np.int32)))
    if mesh.colors is not None:
        m.vertex_colors = o3d.utility.Vector3dVector(np.asarray(mesh.colors, np.float64) / 255.0)
    return m


def _from_o3d(m: o3d.geometry.TriangleMesh) -> Mesh:
    colors = None
    if m.has_vertex_colors():
        colors = np.clip(np.round(np.asarray(m.vertex_colors) * 255.0), 0, 255).astype(np.uint8)
    return Mesh(np.asarray(m.vertices, np.float64).copy(), np.asarray(m.triangles, np.int64).copy(), colors)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def write_mesh(mesh: Mesh, out_dir: Path, stem: str, origin, crs: CRS | str | int) -> dict:
    """Write `<stem>.ply`, `.obj`, `.glb` and `.json` (each atomically); return what the json holds.

    PLY: binary, double-precision delivery-CRS vertices, uchar colours. OBJ: delivery-CRS vertices
    at 1 mm (with the common `v x y z r g b` colour extension). GLB: float32 local frame rotated
    to glTF's Y-up (see GLB_AXES). JSON: the offset, the CRS (EPSG and WKT), the GLB's axes and
    the counts: what a viewer needs to put the GLB back in place.
    """
    crs = _projected(crs, "a mesh")
    out_dir = Path(out_dir)
    origin = np.asarray(origin, np.float64).reshape(3)
    delivery = np.asarray(mesh.vertices, np.float64).reshape(-1, 3) + origin
    faces = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
    colors = None if mesh.colors is None else np.asarray(mesh.colors, np.uint8).reshape(-1, 3)
    files = {"ply": f"{stem}.ply", "obj": f"{stem}.obj", "glb": f"{stem}.glb"}
    epsg = crs.to_epsg()
    with atomic_path(out_dir / files["ply"]) as tmp:
        write_ply(tmp, delivery, faces, colors, comment=f"crs {'EPSG:%d' % epsg if epsg else crs.name}")
    with atomic_path(out_dir / files["obj"]) as tmp:
        write_obj(tmp, delivery, faces, colors)
    with atomic_path(out_dir / files["glb"]) as tmp:
        tmp.write_bytes(glb_bytes(mesh))
    info = {
        "offset": [float(v) for v in origin],
        "epsg": epsg,
        "crs_wkt": crs.to_wkt(),
        "glb_axes": GLB_AXES,
        "glb_transform": "glTF (x, y, z) = (E - E0, H - H0, -(N - N0)); float32, local frame",
        "ply_obj_coordinates": "delivery CRS (E, N, H); PLY double, OBJ 1 mm",
        "vertices": mesh.n_vertices,
        "faces": mesh.n_faces,
        "colors": colors is not None,
        "files": files,
    }
    write_json(out_dir / f"{stem}.json", info)
    return info


def write_ply(path: str | Path, xyz: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, *,
              comment: str = "") -> None:
    """Binary little-endian PLY with `double` x, y, z (and uchar red, green, blue)."""
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(xyz), dtype=fields)
    vert["x"], vert["y"], vert["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    tri = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    tri["n"] = 3
    tri["v"] = faces
    head = ["ply", "format binary_little_endian 1.0"]
    if comment:
        head.append(f"comment {comment}")
    head.append(f"element vertex {len(xyz)}")
    head += [f"property {'double' if t == '<f8' else 'uchar'} {name}" for name, t in fields]
    head += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as fh:
        fh.write(("\n".join(head) + "\n").encode("ascii"))
        fh.write(vert.tobytes())
        fh.write(tri.tobytes())


def write_obj(path: str | Path, xyz: np.ndarray, faces: np.ndarray, colors: np.ndarray | None) -> None:
    """Wavefront OBJ, vertices at 1 mm (%.3f), colours as `v x y z r g b` (0..1), 1-based faces."""
    with open(path, "w") as fh:
        fh.write("# delivery CRS coordinates, metres\n")
        if colors is None:
            fh.write(("v %.3f %.3f %.3f\n" * len(xyz)) % tuple(xyz.ravel()))
        else:
            table = np.column_stack([xyz, colors.astype(np.float64) / 255.0])
            fh.write(("v %.3f %.3f %.3f %.4f %.4f %.4f\n" * len(xyz)) % tuple(table.ravel()))
        fh.write(("f %d %d %d\n" * len(faces)) % tuple((faces + 1).ravel().tolist()))


def glb_bytes(mesh: Mesh) -> bytes:
    """Binary glTF of the mesh: float32 local-frame vertices rotated to Y-up, vertex colours."""
    import trimesh

    verts = (np.asarray(mesh.vertices, np.float64).reshape(-1, 3) @ LOCAL_TO_GLTF.T).astype(np.float32)
    tm = trimesh.Trimesh(verts, np.asarray(mesh.faces, np.int64).reshape(-1, 3), process=False,
                         vertex_colors=None if mesh.colors is None else np.asarray(mesh.colors, np.uint8))
    return tm.export(file_type="glb")
