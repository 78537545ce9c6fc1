"""Point clouds and camera frusta as PLY / GLB (trimesh), written atomically.

Coordinates are kept exactly as the reconstruction has them: the **OpenCV world** of the alignment
(the first camera looks along +z with +y pointing down in the image). glTF viewers assume +y up, so the
scene may appear upside down there; nothing is flipped on export so that the files, the TUM trajectory
and the COLMAP model all share one frame. (The official demo instead transforms its GLB by
``inv(cam2world[0] @ diag(1,-1,-1,1) @ R_y(180°))`` for display.)

- PLY: binary little-endian vertices ``x y z`` (float32) with ``red green blue alpha`` (uchar,
  alpha 255), no faces.
- GLB: node ``points`` (the point cloud) plus one node ``camera_00000`` ... per frame: a pyramid with its
  apex at the camera centre and its base the image rectangle unprojected at depth ``frustum_depth``,
  drawn double-sided and coloured by ``viridis`` over time (first frame dark purple, last yellow).
  With ``as_pointcloud=False`` the points are instead one mesh per frame, ``mesh_00000`` ...
  (:func:`frame_mesh`, the official ``dust3r/viz.py::pts3d_to_trimesh``). ``cam_size`` sizes the frusta as
  the official ``add_scene_cam(screen_width=cam_size)``; ``transform`` re-expresses the whole scene, e.g.
  :func:`official_view_transform` for the official demo's display frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import trimesh
from matplotlib import colormaps
from numpy.typing import NDArray
from trimesh.visual import ColorVisuals

from .._checks import as_float64, check_dtype, check_shape
from ..errors import Easi3RInputError
from .atomic import atomic_write_bytes

__all__ = [
    "camera_frustum",
    "default_frustum_depth",
    "frame_mesh",
    "official_view_transform",
    "point_cloud",
    "scene_with_cameras",
    "write_glb",
    "write_ply",
]

# Pyramid: apex 0, base corners 1..4 (top-left, top-right, bottom-right, bottom-left in the image).
_FRUSTUM_FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 3, 2], [1, 4, 3]])
# Both windings, because glTF viewers cull back faces and a frustum is seen from inside and outside.
_FRUSTUM_FACES_2SIDED = np.concatenate([_FRUSTUM_FACES, _FRUSTUM_FACES[:, ::-1]])

_EMPTY_PLY = (
    b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
    b"property float x\nproperty float y\nproperty float z\n"
    b"property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\nend_header\n"
)


def _check_points(
    points: np.ndarray, colors: np.ndarray | None
) -> tuple[NDArray[np.float32], NDArray[np.uint8] | None]:
    pts = np.asarray(points, dtype=np.float32)
    dims = check_shape(pts, "N 3", "points")
    if colors is None:
        return pts, None
    cols = np.asarray(colors)
    check_shape(cols, "N 3", "colors", dims=dims)
    check_dtype(cols, (np.uint8,), "colors")
    return pts, cols


def point_cloud(points: np.ndarray, colors: np.ndarray | None = None) -> trimesh.PointCloud:
    """A trimesh point cloud from ``(N, 3)`` float points and optional ``(N, 3)`` uint8 RGB colours."""
    pts, cols = _check_points(points, colors)
    if cols is None:
        return trimesh.PointCloud(pts)  # type: ignore[no-untyped-call]
    rgba = np.concatenate([cols, np.full((len(cols), 1), 255, np.uint8)], axis=1)
    return trimesh.PointCloud(pts, colors=rgba)  # type: ignore[no-untyped-call]


def frame_mesh(pointmap: np.ndarray, image: np.ndarray, valid: np.ndarray | None = None) -> trimesh.Trimesh:
    """One frame's pointmap as a triangle mesh: two triangles per 2x2 pixel quad (official ``pts3d_to_trimesh``).

    The quad with top-left pixel ``(y, x)`` gives the triangles ``(y,x) (y,x+1) (y+1,x)`` coloured by pixel
    ``(y, x)`` and ``(y,x+1) (y+1,x) (y+1,x+1)`` coloured by pixel ``(y+1, x+1)``, each in both windings (so
    viewers that cull back faces show it from both sides). A triangle is kept only if its three pixels are
    valid; vertices no triangle uses are dropped.

    Args:
        pointmap: ``(H, W, 3)`` world points.
        image: ``(H, W, 3)`` uint8 RGB colours.
        valid: ``(H, W)`` bool pixels to use (default: finite points).

    Returns:
        A mesh with per-face RGBA colours (possibly empty).
    """
    pts = np.asarray(pointmap, dtype=np.float32)
    dims = check_shape(pts, "H W 3", "pointmap")
    img = np.asarray(image)
    check_shape(img, "H W 3", "image", dims=dims)
    check_dtype(img, (np.uint8,), "image")
    ok = np.isfinite(pts).all(axis=-1)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        check_shape(v, "H W", "valid", dims=dims)
        ok &= v
    H, W = dims["H"], dims["W"]
    idx = np.arange(H * W).reshape(H, W)
    tl, tr, bl, br = (a.ravel() for a in (idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]))
    tri_a, tri_b = np.stack([tl, tr, bl], 1), np.stack([tr, bl, br], 1)
    flat_ok, flat_img = ok.ravel(), img.reshape(-1, 3)
    faces_list, colors_list = [], []
    for tri, colour_px in ((tri_a, tl), (tri_b, br)):
        keep = flat_ok[tri].all(axis=1)
        for faces in (tri[keep], tri[keep][:, ::-1]):
            faces_list.append(faces)
            colors_list.append(flat_img[colour_px[keep]])
    faces = np.concatenate(faces_list)
    used, inverse = np.unique(faces, return_inverse=True)
    rgba = np.concatenate([np.concatenate(colors_list), np.full((len(faces), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(
        vertices=pts.reshape(-1, 3)[used], faces=inverse.reshape(-1, 3), face_colors=rgba, process=False
    )
    return mesh


def official_view_transform(cam2world0: np.ndarray) -> NDArray[np.float64]:
    """The official demo's GLB transform ``inv(cam2world[0] @ OPENGL @ R_y(180°))`` (``viz_demo.py``).

    ``OPENGL = diag(1, -1, -1, 1)`` and ``R_y(180°) = diag(-1, 1, -1)``, so this is ``diag(-1, -1, 1, 1) ·
    world2cam[0]``: the first camera's frame turned by 180° about its optical axis, i.e. image-up is +y as glTF
    viewers expect.

    Args:
        cam2world0: ``(4, 4)`` camera-to-world of the first frame.

    Returns:
        ``(4, 4)`` float64 world -> display transform.
    """
    c2w = as_float64(cam2world0, "cam2world0")
    check_shape(c2w, "4 4", "cam2world0")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    out: NDArray[np.float64] = np.linalg.inv(c2w @ flip)
    return out


def default_frustum_depth(points: np.ndarray, cam2world: np.ndarray, fraction: float = 0.05) -> float:
    """Frustum depth as ``fraction`` of the scene size.

    The size is the diagonal of the 2nd-98th percentile box of the points and camera centres, so a few
    stray points far away do not blow the frusta up. Falls back to ``fraction`` for a degenerate scene.
    """
    centres = np.asarray(cam2world, dtype=np.float64)[:, :3, 3]
    pts = np.asarray(points).reshape(-1, 3)
    # A strided subset estimates percentiles just as well and keeps this O(1e5) for video-sized clouds.
    pts = pts[:: max(1, len(pts) // 100_000)]
    allp = np.concatenate([pts.astype(np.float64), centres])
    allp = allp[np.isfinite(allp).all(axis=1)]
    if len(allp) == 0:
        return fraction
    lo, hi = np.percentile(allp, [2, 98], axis=0)
    size = float(np.linalg.norm(hi - lo))
    return fraction * size if size > 0 else fraction


def camera_frustum(
    cam2world: np.ndarray,
    K: np.ndarray,
    size: tuple[int, int],
    depth: float,
    color: tuple[int, int, int, int] | np.ndarray = (255, 0, 0, 255),
) -> trimesh.Trimesh:
    """A pyramid mesh showing one pinhole camera.

    Args:
        cam2world: ``(4, 4)`` camera-to-world, OpenCV camera axes.
        K: ``(3, 3)`` intrinsics in pixels (OpenCV convention: pixel centres at integers, so the image
            spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).
        size: ``(H, W)`` image size.
        depth: distance of the base from the apex along the optical axis, in scene units.
        color: RGBA uint8 face colour.

    Returns:
        A 5-vertex mesh in world coordinates (vertex 0 = camera centre), faces in both windings.
    """
    H, W = size
    x0, y0, x1, y1 = -0.5, -0.5, W - 0.5, H - 0.5
    corners_px = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]])
    rays = corners_px @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T
    rays = rays / rays[:, 2:3] * depth
    local = np.concatenate([np.zeros((1, 3)), rays])
    c2w = np.asarray(cam2world, dtype=np.float64)
    verts = local @ c2w[:3, :3].T + c2w[:3, 3]
    mesh = trimesh.Trimesh(vertices=verts, faces=_FRUSTUM_FACES_2SIDED, process=False)
    cast(ColorVisuals, mesh.visual).face_colors = np.broadcast_to(
        np.asarray(color, dtype=np.uint8), (len(mesh.faces), 4)
    )
    return mesh


def _frustum_depths(
    points: np.ndarray,
    c2w: NDArray[np.float64],
    K: NDArray[np.float64],
    H: int,
    frustum_depth: float | None,
    cam_size: float | None,
) -> NDArray[np.float64]:
    T = len(c2w)
    if cam_size is not None:
        # Official add_scene_cam: cone height max(screen_width / 10, focal * screen_width / H).
        focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
        return np.maximum(cam_size / 10.0, focal * cam_size / H)
    depth = default_frustum_depth(points, c2w) if frustum_depth is None else float(frustum_depth)
    return np.full(T, depth)


def scene_with_cameras(
    points: np.ndarray,
    colors: np.ndarray | None,
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    size: tuple[int, int],
    *,
    frustum_depth: float | None = None,
    cam_size: float | None = None,
    cmap: str = "viridis",
    meshes: list[trimesh.Trimesh] | None = None,
    transform: np.ndarray | None = None,
) -> trimesh.Scene:
    """A trimesh scene: node ``points`` (omitted when empty) or ``mesh_NNNNN``, and ``camera_NNNNN`` frusta.

    Args:
        points: ``(N, 3)`` world points; ``colors``: ``(N, 3)`` uint8 RGB or None.
        cam2world: ``(T, 4, 4)``; ``intrinsics``: ``(T, 3, 3)`` at ``size = (H, W)``.
        frustum_depth: frustum size in scene units (default :func:`default_frustum_depth`).
        cam_size: official ``cam_size``: the frustum base is ``cam_size`` high in scene units (depth
            ``max(cam_size / 10, f · cam_size / H)``); overrides ``frustum_depth``.
        cmap: matplotlib colormap over time for the frusta.
        meshes: per-frame meshes (:func:`frame_mesh`) shown instead of the point cloud; ``points`` then only
            size the default frusta.
        transform: ``(4, 4)`` applied to the whole scene (e.g. :func:`official_view_transform`).
    """
    c2w = as_float64(cam2world, "cam2world")
    K = as_float64(intrinsics, "intrinsics")
    check_shape(K, "T 3 3", "intrinsics", dims=check_shape(c2w, "T 4 4", "cam2world"))
    if cam_size is not None and not (np.isfinite(cam_size) and cam_size > 0):
        raise Easi3RInputError(f"cam_size must be a positive number of scene units, got {cam_size}")
    scene = trimesh.Scene()
    if meshes is not None:
        for t, mesh in enumerate(meshes):
            if len(mesh.faces):
                scene.add_geometry(mesh, geom_name=f"mesh_{t:05d}", node_name=f"mesh_{t:05d}")
    elif len(points):
        scene.add_geometry(point_cloud(points, colors), geom_name="points", node_name="points")
    depths = _frustum_depths(points, c2w, K, int(size[0]), frustum_depth, cam_size)
    T = len(c2w)
    rgba = np.round(colormaps[cmap](np.arange(T) / max(T - 1, 1)) * 255).astype(np.uint8)
    for t in range(T):
        name = f"camera_{t:05d}"
        scene.add_geometry(camera_frustum(c2w[t], K[t], size, depths[t], rgba[t]), geom_name=name, node_name=name)
    if transform is not None:
        tf = as_float64(transform, "transform")
        check_shape(tf, "4 4", "transform")
        scene.apply_transform(tf)  # type: ignore[no-untyped-call]
    return scene


def write_ply(path: str | os.PathLike[str], points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write a coloured point cloud as binary little-endian PLY, atomically (see module docstring)."""
    pts, cols = _check_points(points, colors)
    if len(pts) == 0:
        return atomic_write_bytes(path, _EMPTY_PLY)
    data = point_cloud(pts, cols).export(file_type="ply", encoding="binary")  # type: ignore[no-untyped-call]
    return atomic_write_bytes(path, data)


def write_glb(
    path: str | os.PathLike[str],
    points: np.ndarray,
    colors: np.ndarray | None,
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    size: tuple[int, int],
    *,
    frustum_depth: float | None = None,
    cam_size: float | None = None,
    cmap: str = "viridis",
    as_pointcloud: bool = True,
    valid: np.ndarray | None = None,
    transform: np.ndarray | None = None,
) -> Path:
    """Write :func:`scene_with_cameras` as a binary glTF (``.glb``), atomically.

    Args:
        points: ``(N, 3)`` world points, or ``(T, H, W, 3)`` pointmaps (then ``colors`` is ``(T, H, W, 3)``
            uint8 and ``valid`` an optional ``(T, H, W)`` bool of the pixels to export).
        as_pointcloud: one point cloud (default) or, for pointmaps only, one mesh per frame (:func:`frame_mesh`;
            official ``as_pointcloud=False``).
        Other arguments: as :func:`scene_with_cameras`.

    Raises:
        Easi3RInputError: inconsistent shapes, a mesh requested from flat points, a bad ``cam_size``.
    """
    pts = np.asarray(points)
    meshes = None
    if pts.ndim == 4:
        dims = check_shape(pts, "T H W 3", "points")
        if colors is None:
            raise Easi3RInputError("write_glb: pointmaps (T, H, W, 3) need colors (T, H, W, 3)")
        cols = np.asarray(colors)
        check_shape(cols, "T H W 3", "colors", dims=dims)
        ok = np.isfinite(pts).all(axis=-1)
        if valid is not None:
            v = np.asarray(valid, dtype=bool)
            check_shape(v, "T H W", "valid", dims=dims)
            ok &= v
        if not as_pointcloud:
            meshes = [frame_mesh(pts[t], cols[t], ok[t]) for t in range(dims["T"])]
        pts, colors = pts[ok], cols[ok]
    elif not as_pointcloud:
        raise Easi3RInputError("write_glb: as_pointcloud=False needs (T, H, W, 3) pointmaps, got flat points")
    elif valid is not None:
        raise Easi3RInputError("write_glb: valid applies to (T, H, W, 3) pointmaps only")
    scene = scene_with_cameras(
        pts, colors, cam2world, intrinsics, size, frustum_depth=frustum_depth, cam_size=cam_size, cmap=cmap,
        meshes=meshes, transform=transform,
    )  # fmt: skip
    return atomic_write_bytes(path, scene.export(file_type="glb"))  # type: ignore[no-untyped-call]
