"""Meshes: the 2.5D DSM mesh, the TSDF mesh of rendered RGB-D views, and the delivered files."""

from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pytest
import trimesh
from affine import Affine

from aerosplat.errors import InputError
from aerosplat.mesh import LOCAL_TO_GLTF, Mesh, cell_centres, dsm_mesh, tsdf_mesh, write_mesh

# --------------------------------------------------------------------------------------------
# A synthetic DSM in UTM 32N: tilted plane + hill + a 12 m box building, and a no-data hole
# --------------------------------------------------------------------------------------------

CELL = 0.5
WEST, NORTH = 500_000.0, 5_200_000.0
ORIGIN = (500_030.0, 5_199_975.0, 400.0)
ROOF, ROOF_RGB, GROUND_RGB = 12.0, (200, 40, 40), (90, 140, 90)
BOX = (slice(30, 50), slice(60, 90))
HOLE = (slice(70, 86), slice(20, 41))


def synthetic_dsm(h=100, w=120):
    transform = Affine(CELL, 0, WEST, 0, -CELL, NORTH)
    rows, cols = np.mgrid[0:h, 0:w]
    x, y = cell_centres(transform, rows, cols)
    dx, dy = x - ORIGIN[0], y - ORIGIN[1]
    dsm = 410 + 0.03 * dx - 0.02 * dy + 2.0 * np.exp(-(dx ** 2 + dy ** 2) / (2 * 8.0 ** 2))
    dsm[BOX] += ROOF
    dsm[HOLE] = np.nan
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = GROUND_RGB
    rgb[BOX] = ROOF_RGB
    return dsm, transform, rgb


def heights_below(mesh: Mesh, xy: np.ndarray) -> np.ndarray:
    """Mesh height under each local (x, y), NaN where a vertical ray misses the mesh."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    rays = np.zeros((len(xy), 6), np.float32)
    rays[:, :2], rays[:, 2], rays[:, 5] = xy, 1000.0, -1.0
    t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return np.where(np.isfinite(t), 1000.0 - t, np.nan)


@pytest.fixture(scope="module")
def dsm_case():
    dsm, transform, rgb = synthetic_dsm()
    mesh = dsm_mesh(dsm, transform, ORIGIN, max_faces=3000, colors=rgb)
    return dsm, transform, rgb, mesh


def cell_xy(transform, rows, cols):
    x, y = cell_centres(transform, rows, cols)
    return np.column_stack([x - ORIGIN[0], y - ORIGIN[1]])


def test_dsm_mesh_is_decimated_and_follows_the_dsm(dsm_case):
    dsm, transform, rgb, mesh = dsm_case
    full = 2 * 119 * 99 - 2 * 22 * 17  # two triangles per 2x2 block of valid cells
    assert 0 < mesh.n_faces <= 3000 < full
    assert mesh.vertices.dtype == np.float64 and mesh.colors.dtype == np.uint8
    rows, cols = np.nonzero(np.isfinite(dsm))
    got = heights_below(mesh, cell_xy(transform, rows, cols))
    err = np.abs(got - (dsm[rows, cols] - ORIGIN[2]))
    interior = (rows > 1) & (rows < 98) & (cols > 1) & (cols < 118)
    near_hole = (rows >= 68) & (rows < 88) & (cols >= 18) & (cols < 43)
    assert np.isfinite(got[interior & ~near_hole]).all()  # no gaps inside the data
    # Measured (3000 of 23,000 faces): max 0.004 m, 99th percentile 0.003 m, median 0.0003 m over 11,664
    # cells, box walls 12 m high included.
    assert np.nanmax(err) < 0.05
    assert np.nanpercentile(err, 99) < 0.02
    # Normals up: a 2.5D surface seen from above.
    v = mesh.vertices[mesh.faces]
    normal_z = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])[:, 2]
    assert (normal_z > 0).mean() > 0.99


def test_dsm_mesh_leaves_the_nodata_hole_empty_and_keeps_colours(dsm_case):
    dsm, transform, rgb, mesh = dsm_case
    rows, cols = np.mgrid[HOLE]
    got = heights_below(mesh, cell_xy(transform, rows.ravel(), cols.ravel()))
    assert np.isnan(got).all()
    roof = mesh.vertices[:, 2] > ROOF + 5
    assert roof.sum() >= 4
    assert np.abs(mesh.colors[roof].astype(int) - ROOF_RGB).max() <= 2


def test_dsm_mesh_coarsens_a_dsm_over_the_face_budget_first():
    dsm, transform, rgb = synthetic_dsm()
    mesh = dsm_mesh(dsm, transform, ORIGIN, max_faces=400, colors=rgb)  # 16 x 400 faces: 1/2 resolution
    assert 0 < mesh.n_faces <= 400
    rows, cols = np.nonzero(np.isfinite(dsm))
    got = heights_below(mesh, cell_xy(transform, rows, cols))
    err = np.abs(got - (dsm[rows, cols] - ORIGIN[2]))
    walls = (rows >= 27) & (rows < 53) & (cols >= 57) & (cols < 93) & ~(
        (rows >= 33) & (rows < 47) & (cols >= 63) & (cols < 87))
    # Measured: 0.026 m max away from the walls (12 m steps that 400 faces cannot follow exactly).
    assert np.nanmax(err[~walls]) < 0.1
    rows, cols = np.mgrid[71:85, 21:40]
    assert np.isnan(heights_below(mesh, cell_xy(transform, rows.ravel(), cols.ravel()))).all()


# --------------------------------------------------------------------------------------------
# TSDF: RGB-D views ray cast from a known scene (ground z = 0, a 10 m box, a small floating cube)
# --------------------------------------------------------------------------------------------

VOXEL = 0.4
BOX_MIN, BOX_MAX = np.array([-8.0, -6.0, 0.0]), np.array([10.0, 7.0, 10.0])
BLOB_MIN, BLOB_MAX = np.array([-22.0, 14.0, 15.0]), np.array([-21.4, 14.6, 15.6])
BOX_RGB = (210, 50, 40)


def _box(lo, hi) -> o3d.geometry.TriangleMesh:
    m = o3d.geometry.TriangleMesh.create_box(*(hi - lo))
    return m.translate(lo)


def _truth(with_blob: bool):
    ground = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.array([[-80, -80, 0], [80, -80, 0], [80, 80, 0], [-80, 80, 0]], float)),
        o3d.utility.Vector3iVector(np.array([[0, 1, 2], [0, 2, 3]])))
    parts = [ground, _box(BOX_MIN, BOX_MAX)] + ([_box(BLOB_MIN, BLOB_MAX)] if with_blob else [])
    scene = o3d.t.geometry.RaycastingScene()
    ids = [scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(p)) for p in parts]
    return scene, ids


def look_at(centre, target) -> np.ndarray:
    """OpenCV world-to-camera looking from `centre` at `target`, image x roughly east."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0]) if abs(z[1]) < 0.99 else np.array([1.0, 0.0, 0.0])
    x = -x if x[0] < 0 else x
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ centre
    return w2c


def render(scene, ids, K, w2c, w, h):
    """Z-depth (NaN on a miss) and colour per pixel, pixel centres at +0.5 (COLMAP)."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    centre = -R.T @ t
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    rays = np.concatenate([np.broadcast_to(centre, cam.shape), cam @ R], 1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()  # camera-z of the direction is 1: t is the z-depth
    gid = hit["geometry_ids"].numpy()
    depth = np.where(np.isfinite(t_hit), t_hit, np.nan).astype(np.float32).reshape(h, w)
    p = rays[:, :3] + rays[:, 3:] * np.where(np.isfinite(t_hit), t_hit, 0)[:, None]
    checker = ((np.floor(p[:, 0] / 5) + np.floor(p[:, 1] / 5)) % 2)[:, None]
    rgb = np.where(checker > 0, [80, 150, 80], [120, 170, 110]).astype(np.uint8)
    rgb[gid == ids[1]] = BOX_RGB
    if len(ids) > 2:
        rgb[gid == ids[2]] = (40, 60, 220)
    return rgb.reshape(h, w, 3), depth


def rgbd_views(with_blob: bool, n=6, w=200, h=150, f=170.0):
    scene, ids = _truth(with_blob)
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    centres = [np.array([0.0, 0.0, 50.0])] + [
        np.array([25 * np.cos(a), 25 * np.sin(a), 48.0]) for a in np.linspace(0, 2 * np.pi, n - 1, endpoint=False)]
    views = []
    for c in centres:
        w2c = look_at(c, np.array([0.0, 0.0, 0.0]))
        rgb, depth = render(scene, ids, K, w2c, w, h)
        views.append((rgb, depth, K, w2c))
    return views


@pytest.fixture(scope="module")
def fused():
    views = rgbd_views(with_blob=True)
    kw = dict(voxel_m=VOXEL, trunc_m=4 * VOXEL, depth_max_m=80.0, max_faces=60_000)
    return {"clean": tsdf_mesh(views, min_component_faces=200, **kw),
            "raw": tsdf_mesh(views, min_component_faces=0, **kw)}


def _near_blob(vertices, margin=1.0):
    return ((vertices >= BLOB_MIN - margin) & (vertices <= BLOB_MAX + margin)).all(1)


def test_tsdf_mesh_reconstructs_the_surface(fused):
    mesh = fused["clean"]
    assert 1000 < mesh.n_faces <= 60_000
    truth, _ = _truth(with_blob=False)
    dist = truth.compute_distance(o3d.core.Tensor(mesh.vertices.astype(np.float32))).numpy()
    # Measured: median 0.022 m (0.055 voxel), 95th percentile 0.084 m, max 0.43 m (at the box's edges).
    assert np.median(dist) < 0.5 * VOXEL
    assert np.percentile(dist, 95) < 1.0 * VOXEL
    # Walls and roof are there, not only the ground: the box is a solid in the mesh.
    on_roof = (np.abs(mesh.vertices[:, 2] - BOX_MAX[2]) < VOXEL) & (dist < VOXEL)
    on_walls = (mesh.vertices[:, 2] > 2) & (mesh.vertices[:, 2] < 8) & (dist < VOXEL)
    assert on_roof.sum() > 200 and on_walls.sum() > 50
    assert np.abs(np.median(mesh.colors[on_roof].astype(int), axis=0) - BOX_RGB).max() <= 10
    faces_ok = (mesh.faces >= 0) & (mesh.faces < mesh.n_vertices)
    assert faces_ok.all() and len(np.unique(mesh.faces)) == mesh.n_vertices  # no unused vertices


def test_tsdf_mesh_component_filter_removes_a_floating_blob(fused):
    assert _near_blob(fused["raw"].vertices).sum() > 0  # the blob is fused ...
    assert _near_blob(fused["clean"].vertices).sum() == 0  # ... and filtered as a small component
    assert fused["clean"].n_faces > 0.9 * fused["raw"].n_faces


def test_tsdf_mesh_takes_colmap_pixel_centres():
    """K with pixel centres at +0.5 (COLMAP): a half-pixel error would shift every surface."""
    views = rgbd_views(with_blob=False, n=5, w=160, h=120, f=140.0)
    truth, _ = _truth(with_blob=False)
    median = {}
    for shift in (0.0, 0.5):
        moved = [(rgb, d, K + np.array([[0, 0, shift], [0, 0, shift], [0, 0, 0]]), w2c) for rgb, d, K, w2c in views]
        mesh = tsdf_mesh(moved, voxel_m=0.25, trunc_m=1.0, depth_max_m=80.0, min_component_faces=0,
                         max_faces=10 ** 9)
        median[shift] = np.median(truth.compute_distance(o3d.core.Tensor(mesh.vertices.astype(np.float32))).numpy())
    # Measured: 0.006 m as given, 0.035 m with K moved half a pixel.
    assert median[0.0] < 0.4 * median[0.5]


def test_tsdf_mesh_decimates_to_max_faces():
    views = rgbd_views(with_blob=False, n=4, w=120, h=90, f=100.0)
    mesh = tsdf_mesh(iter(views), voxel_m=0.5, trunc_m=2.0, depth_max_m=80.0, min_component_faces=50,
                     max_faces=2000)
    assert 0 < mesh.n_faces <= 2000
    assert mesh.colors is not None and len(mesh.colors) == mesh.n_vertices


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def read_ply(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n_vert = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = [line.split() for line in header if line.startswith("property ") and "list" not in line]
    types = {"double": "<f8", "uchar": "u1", "float": "<f4"}
    vert = np.frombuffer(data, dtype=[(p[2], types[p[1]]) for p in props], count=n_vert, offset=end)
    return header, vert


def test_write_mesh_files_hold_delivery_coordinates(dsm_case, tmp_path):
    mesh = dsm_case[3]
    info = write_mesh(mesh, tmp_path, "mesh_25d", ORIGIN, 32632)
    delivery = mesh.vertices + np.array(ORIGIN)

    header, vert = read_ply(tmp_path / "mesh_25d.ply")
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    for axis in "xyz":
        assert f"property double {axis}" in header
    back = np.column_stack([vert["x"], vert["y"], vert["z"]])
    assert np.abs(back - delivery).max() < 0.001  # written as doubles: bit-exact in fact
    assert np.array_equal(np.column_stack([vert["red"], vert["green"], vert["blue"]]), mesh.colors)
    ply = trimesh.load(tmp_path / "mesh_25d.ply", process=False)
    assert np.abs(ply.vertices - delivery).max() < 0.001 and len(ply.faces) == mesh.n_faces

    obj = trimesh.load(tmp_path / "mesh_25d.obj", process=False)
    assert np.abs(obj.vertices - delivery).max() <= 0.0005 + 1e-6 and len(obj.faces) == mesh.n_faces

    glb = trimesh.load(tmp_path / "mesh_25d.glb", force="mesh", process=False)
    assert glb.vertices.shape == mesh.vertices.shape and len(glb.faces) == mesh.n_faces
    local = np.asarray(glb.vertices, np.float64) @ LOCAL_TO_GLTF  # glTF Y-up back to E, N, up
    assert np.abs(local + np.array(ORIGIN) - back).max() < 0.01
    assert np.ptp(glb.vertices[:, 1]) < np.ptp(glb.vertices[:, 2])  # Y is up: the relief, not the north
    assert np.array_equal(np.asarray(glb.visual.vertex_colors)[:, :3], mesh.colors)

    saved = json.loads((tmp_path / "mesh_25d.json").read_text())
    assert saved == info
    assert saved["offset"] == list(ORIGIN) and saved["epsg"] == 32632 and "UTM zone 32N" in saved["crs_wkt"]
    assert saved["glb_axes"] == "y_up"
    assert (saved["vertices"], saved["faces"]) == (mesh.n_vertices, mesh.n_faces)
    assert sorted(saved["files"].values()) == ["mesh_25d.glb", "mesh_25d.obj", "mesh_25d.ply"]
    assert not list(tmp_path.glob(".*partial"))


def test_write_mesh_without_colours_or_faces(tmp_path):
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), None)
    info = write_mesh(empty, tmp_path, "mesh", ORIGIN, "EPSG:32632")
    assert info["faces"] == 0 and (tmp_path / "mesh.glb").exists()
    header, vert = read_ply(tmp_path / "mesh.ply")
    assert len(vert) == 0 and "property uchar red" not in header


def test_write_mesh_refuses_a_geographic_crs(dsm_case, tmp_path):
    with pytest.raises(InputError, match="projected"):
        write_mesh(dsm_case[3], tmp_path, "mesh", ORIGIN, 4326)
    assert not list(tmp_path.iterdir())
