"""Ray-cast multi-view renders of synthetic subjects into the GPS-Gaussian / THuman2.0 layout.

Geometry (docs/reference/hgm_official_code.md §2.1-2.2): 12 cameras 30° apart on a horizontal ring of
radius 2.0 m around the subject's vertical axis, looking at the subject's mid-height, view 0 in
front (+z), fx = fy = 0.8·W and a centred principal point. Lighting is diffuse image-based
lighting: second-order spherical harmonics (Ramamoorthi & Hanrahan 2001) of one of Blender's CC0
studio HDRIs, over a plain white background as HGM trains.

Files per subject `{id}` and view `{v:03d}` (the layout HGM's `Thuman2Dataset` reads):
    img/{id}_{v}/0.jpg              RGB on white (quality 95; identical pixels give identical bytes)
    mask/{id}_{v}/0.png             coverage in 0..255 (anti-aliased edge)
    parm/{id}_{v}/0_extrinsic.npy   [3, 4] float64 world->camera [R|t], OpenCV axes
    parm/{id}_{v}/0_intrinsic.npy   [3, 3] float64 K at the stored image size
    depth/{id}_{v}/1.0.png          uint16 2^15 / z (z metres, 0 = background); the file name is HGM's
                                    body scale, 1.0 because our bodies are metric
    normal/{id}_{v}/0.png           camera-frame normals (OpenCV axes) as uint8 (n + 1) / 2 * 255
and per subject: mesh/{id}.ply (GT surface, world frame, vertex colours), body/{id}.json (spec,
generator version, transforms), body/{id}.npz (anny body vertices/faces, keypoints),
keypoints/{id}.json (3D and per-view 2D COCO-WholeBody keypoints), sheet/{id}.png (contact sheet).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hgm_core.camera import pixel_rays, project_points
from hgm_core.data.synth import MeshPart, SubjectGeometry, sample_texture
from hgm_core.io.mesh import write_mesh_ply

HDRI_DIR = Path("/usr/share/blender/datafiles/studiolights/world")
DEPTH_SCALE = 2.0**15
"""depth PNG value = DEPTH_SCALE / z (GPS-Gaussian / HGM encoding)."""
SH_BAND_FACTORS = np.array([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5)
"""Cosine-lobe convolution per SH coefficient (irradiance from radiance)."""


class RenderDataError(RuntimeError):
    """Missing lighting assets or unusable render settings."""


@dataclass(frozen=True)
class RenderConfig:
    """Camera ring and image settings.

    Attributes:
        size: image width = height in pixels.
        n_views: cameras on the ring, `360 / n_views` degrees apart.
        distance: camera distance from the look-at point in metres (`render_subject` uses the
            subject's own `spec.camera_distance_m` instead).
        focal_ratio: fx = fy = focal_ratio * size.
        elevation_deg: camera height above the look-at point as an angle (0: level; `render_subject`
            uses the subject's own `spec.camera_elevation_deg` instead).
        ssaa: supersampling factor per axis for colour and coverage (depth/normals use pixel centres).
        jpeg_quality: quality of img/*.jpg.
        ambient: share of uniform light mixed into the HDRI's SH light (softens night/sun extremes).
    """

    size: int = 512
    n_views: int = 12
    distance: float = 2.0
    focal_ratio: float = 0.8
    elevation_deg: float = 0.0
    ssaa: int = 2
    jpeg_quality: int = 95
    ambient: float = 0.35


@dataclass
class ViewRender:
    """One view: `rgb [H, W, 3]` uint8 on white, `alpha [H, W]` float32 in [0, 1], `depth [H, W]`
    float32 camera z in metres (0 = background), `normal [H, W, 3]` float32 camera-frame unit normals."""

    rgb: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


# --------------------------------------------------------------------------------------------- cameras


def ring_cameras(look_at_height: float, config: RenderConfig = RenderConfig()) -> tuple[np.ndarray, np.ndarray]:
    """GPS-Gaussian camera ring.

    Returns:
        K `[3, 3]` and extrinsics `[n_views, 4, 4]` world->camera (OpenCV axes), float64. View 0 sits
        on +z looking at `(0, look_at_height, 0)`; view i is rotated by `i * 360 / n_views` degrees
        about +y (counter-clockwise seen from above, i.e. towards +x first).
    """
    s = config.size
    K = np.array([[config.focal_ratio * s, 0, s / 2], [0, config.focal_ratio * s, s / 2], [0, 0, 1.0]])
    target = np.array([0.0, look_at_height, 0.0])
    el = math.radians(config.elevation_deg)
    E = np.zeros((config.n_views, 4, 4))
    for i in range(config.n_views):
        az = 2 * math.pi * i / config.n_views
        eye = target + config.distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        fwd = (target - eye) / np.linalg.norm(target - eye)
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd])  # rows: camera x (right), y (down), z (forward) in world
        E[i, :3, :3], E[i, :3, 3], E[i, 3, 3] = R, -R @ eye, 1.0
    return K, E


# --------------------------------------------------------------------------------------------- lighting


def sh_basis(d: np.ndarray) -> np.ndarray:
    """Real SH basis up to l = 2: `d [..., 3]` unit directions -> `[..., 9]`."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack(
        [0.282095 * np.ones_like(x), 0.488603 * y, 0.488603 * z, 0.488603 * x, 1.092548 * x * y, 1.092548 * y * z,
         0.315392 * (3 * z * z - 1), 1.092548 * x * z, 0.546274 * (x * x - y * y)], -1
    )


@functools.lru_cache(maxsize=None)
def hdri_sh(name: str) -> np.ndarray:
    """`[9, 3]` SH radiance coefficients of `HDRI_DIR/{name}.exr` (equirectangular, +y up, linear RGB)."""
    import cv2

    path = HDRI_DIR / f"{name}.exr"
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise RenderDataError(f"cannot read {path}: install Debian's blender-data; OpenCV decodes EXR only with "
                              "OPENCV_IO_ENABLE_OPENEXR=1 (hgm_core.runtime.configure_process sets it)")
    rgb = np.nan_to_num(img[..., 2::-1].astype(np.float64), posinf=0.0).clip(0, None)
    h, w = rgb.shape[:2]
    theta = (np.arange(h) + 0.5) / h * math.pi  # polar angle from +y
    phi = (np.arange(w) + 0.5) / w * 2 * math.pi
    st = np.sin(theta)[:, None]
    d = np.stack([st * np.sin(phi)[None], np.cos(theta)[:, None].repeat(w, 1), st * np.cos(phi)[None]], -1)
    weight = st * (math.pi / h) * (2 * math.pi / w)  # solid angle per texel
    return np.einsum("hwk,hwc,hw->kc", sh_basis(d), rgb, np.broadcast_to(weight, (h, w)))


def irradiance(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """Diffuse irradiance `[..., 3]` for unit `normals [..., 3]` under SH radiance `sh [9, 3]`."""
    return sh_basis(normals) @ (sh * SH_BAND_FACTORS[:, None])


def subject_light(geom: SubjectGeometry, ambient: float) -> np.ndarray:
    """The subject's HDRI rotated by its azimuth, exposure-normalised to mean irradiance 1, plus ambient.

    Returns `[9, 3]` SH irradiance-ready radiance coefficients."""
    sh = hdri_sh(geom.spec.hdri)
    # Rotate the environment about +y: evaluate the basis on rotated directions by refitting on a sphere grid.
    a = math.radians(geom.spec.hdri_azimuth_deg)
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    dirs = _fibonacci_sphere(2048)
    radiance = sh_basis(dirs @ rot) @ sh
    sh = sh_basis(dirs).T @ radiance * (4 * math.pi / len(dirs))
    mean = (SH_BAND_FACTORS[0] * sh[0] * 0.282095) @ np.array([0.2126, 0.7152, 0.0722])
    sh = sh / max(mean, 1e-8) * (1 - ambient)
    sh[0] += ambient / (SH_BAND_FACTORS[0] * 0.282095)
    return sh


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    y = 1 - 2 * i / n
    r = np.sqrt(1 - y * y)
    t = math.pi * (3 - math.sqrt(5)) * i
    return np.stack([r * np.cos(t), y, r * np.sin(t)], -1)


# --------------------------------------------------------------------------------------------- ray casting


class SubjectScene:
    """An open3d `RaycastingScene` over a subject's parts plus what shading needs per part."""

    def __init__(self, parts: list[MeshPart]) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.parts = parts
        self.normals = [p.vertex_normals() for p in parts]
        ids = [self.scene.add_triangles(p.vertices.astype(np.float32), p.faces.astype(np.uint32)) for p in parts]
        self.part_of_id = {int(i): k for k, i in enumerate(ids)}

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
        """Rays `[N, 3]` (dirs need not be unit) -> t_hit `[N]`, part `[N]` (-1 miss), prim `[N]`, bary `[N, 2]`."""
        rays = self._o3d.core.Tensor(np.concatenate([origins, dirs], 1).astype(np.float32))
        out = self.scene.cast_rays(rays)
        gid = out["geometry_ids"].numpy().astype(np.int64)
        part = np.full(len(gid), -1, np.int64)
        for g, k in self.part_of_id.items():
            part[gid == g] = k
        return {"t": out["t_hit"].numpy(), "part": part, "prim": out["primitive_ids"].numpy().astype(np.int64),
                "bary": out["primitive_uvs"].numpy()}

    def surface(self, hit: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Albedo `[N, 3]` (sRGB) and smooth world normals `[N, 3]` at hits (zeros at misses)."""
        n = len(hit["part"])
        albedo, normal = np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float64)
        b1, b2 = hit["bary"][:, 0:1].astype(np.float64), hit["bary"][:, 1:2].astype(np.float64)
        w = np.concatenate([1 - b1 - b2, b1, b2], 1)  # open3d's (u, v) weight vertices 1 and 2
        for k, p in enumerate(self.parts):
            sel = hit["part"] == k
            if not sel.any():
                continue
            prim = hit["prim"][sel]
            uv = np.einsum("nk,nkc->nc", w[sel], p.face_uvs[prim])
            albedo[sel] = sample_texture(p.texture, uv)
            nrm = np.einsum("nk,nkc->nc", w[sel], self.normals[k][p.faces[prim]])
            normal[sel] = nrm / (np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12)
        return albedo, normal


def _subject_box(scene: "SubjectScene", K: np.ndarray, E: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """Pixel box that contains every projected vertex (plus a margin); rays outside it cannot hit."""
    pts = np.concatenate([p.vertices for p in scene.parts])
    uv = project_points(pts @ E[:3, :3].T + E[:3, 3], K)
    x0, y0 = np.floor(uv.min(0)).astype(int) - 2
    x1, y1 = np.ceil(uv.max(0)).astype(int) + 2
    return max(x0, 0), max(y0, 0), min(max(x1, 1), size), min(max(y1, 1), size)


def render_view(scene: SubjectScene, light: np.ndarray, K: np.ndarray, E: np.ndarray, size: int, ssaa: int) -> ViewRender:
    """Shade one camera: colour/coverage with `ssaa²` rays per pixel, depth/normal at pixel centres."""
    box = x0, y0, x1, y1 = _subject_box(scene, K, E, size)
    bh, bw = y1 - y0, x1 - x0
    o, d = pixel_rays(K, E, box, ssaa)
    ray = d.reshape(-1, 3)
    hit = scene.cast(o.reshape(-1, 3), ray)
    sel = np.flatnonzero(hit["part"] >= 0)
    albedo, normal = scene.surface({k: v[sel] for k, v in hit.items()})
    flip = np.sum(normal * ray[sel], 1) > 0  # seen from behind (open garment edges): light the visible side
    normal[flip] = -normal[flip]
    linear = np.power(albedo, 2.2) * np.clip(irradiance(normal, light), 0, None)
    color = np.ones((len(ray), 3))  # white background
    color[sel] = np.power(np.clip(linear, 0, 1), 1 / 2.2)
    covered = np.zeros(len(ray), np.float32)
    covered[sel] = 1

    rgb = np.full((size, size, 3), 255, np.uint8)
    alpha = np.zeros((size, size), np.float32)
    rgb[y0:y1, x0:x1] = np.round(np.clip(color.reshape(bh, ssaa, bw, ssaa, 3).mean((1, 3)), 0, 1) * 255).astype(np.uint8)
    alpha[y0:y1, x0:x1] = covered.reshape(bh, ssaa, bw, ssaa).mean((1, 3))

    oc, dc = pixel_rays(K, E, box, 1)
    centre = scene.cast(oc.reshape(-1, 3), dc.reshape(-1, 3))
    sel = np.flatnonzero(centre["part"] >= 0)
    _, n_world = scene.surface({k: v[sel] for k, v in centre.items()})
    n_cam = n_world @ E[:3, :3].T
    back = n_cam[:, 2] > 0  # make normals face the camera (-z in OpenCV axes)
    n_cam[back] = -n_cam[back]
    depth_box = np.zeros(bh * bw, np.float32)
    normal_box = np.zeros((bh * bw, 3), np.float32)
    depth_box[sel], normal_box[sel] = centre["t"][sel], n_cam
    depth = np.zeros((size, size), np.float32)
    normals = np.zeros((size, size, 3), np.float32)
    depth[y0:y1, x0:x1] = depth_box.reshape(bh, bw)
    normals[y0:y1, x0:x1] = normal_box.reshape(bh, bw, 3)
    return ViewRender(rgb=rgb, alpha=alpha, depth=depth, normal=normals)


def look_at_height(geom: SubjectGeometry) -> float:
    """The ring looks at the subject's mid-height (GPS-Gaussian uses 0.85 m for 1.8 m scans)."""
    y = np.concatenate([p.vertices[:, 1] for p in geom.parts])
    return float(0.5 * (y.min() + y.max()))


def subject_render_config(geom: SubjectGeometry, config: RenderConfig) -> RenderConfig:
    """`config` with the ring distance and elevation sampled for this subject."""
    return replace(config, distance=geom.spec.camera_distance_m, elevation_deg=geom.spec.camera_elevation_deg)


def render_subject(geom: SubjectGeometry, config: RenderConfig = RenderConfig()) -> tuple[np.ndarray, np.ndarray, list[ViewRender]]:
    """All views of a subject: K `[3, 3]`, extrinsics `[V, 4, 4]` and the renders."""
    K, E = ring_cameras(look_at_height(geom), subject_render_config(geom, config))
    scene = SubjectScene(geom.parts)
    light = subject_light(geom, config.ambient)
    return K, E, [render_view(scene, light, K, e, config.size, config.ssaa) for e in E]


# --------------------------------------------------------------------------------------------- writing


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """`[H, W]` metres (0 = none) -> uint16 `DEPTH_SCALE / z`."""
    out = np.zeros(depth.shape, np.uint16)
    valid = depth > 0
    out[valid] = np.clip(np.round(DEPTH_SCALE / depth[valid]), 1, 65535).astype(np.uint16)
    return out


def decode_depth(png: np.ndarray) -> np.ndarray:
    """Inverse of `encode_depth` (metres, 0 where no surface)."""
    png = png.astype(np.float64)
    return np.where(png > 0, DEPTH_SCALE / np.maximum(png, 1), 0.0)


def merged_mesh(geom: SubjectGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The GT surface as one mesh: vertices `[V, 3]`, faces `[F, 3]`, colours `[V, 3]`."""
    verts, faces, cols, base = [], [], [], 0
    for p in geom.parts:
        used, inv = np.unique(p.faces, return_inverse=True)
        verts.append(p.vertices[used])
        cols.append(p.vertex_colors()[used])
        faces.append(inv.reshape(p.faces.shape) + base)
        base += len(used)
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(cols)


def write_subject(root: Path, subject_id: str, geom: SubjectGeometry, config: RenderConfig = RenderConfig()) -> list[ViewRender]:
    """Render `geom` and write every file of the layout for it under `root`; returns the views."""
    import cv2

    K, E, views = render_subject(geom, config)
    config = subject_render_config(geom, config)
    for v, view in enumerate(views):
        name = f"{subject_id}_{v:03d}"
        for sub in ("img", "mask", "parm", "depth", "normal"):
            (root / sub / name).mkdir(parents=True, exist_ok=True)
        _imwrite(root / "img" / name / "0.jpg", view.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        _imwrite(root / "mask" / name / "0.png", np.round(view.alpha * 255).astype(np.uint8))
        _imwrite(root / "depth" / name / "1.0.png", encode_depth(view.depth))
        _imwrite(root / "normal" / name / "0.png", np.round((view.normal[..., ::-1] + 1) * 127.5).astype(np.uint8) * (view.depth[..., None] > 0))
        np.save(root / "parm" / name / "0_extrinsic.npy", E[v, :3, :4])
        np.save(root / "parm" / name / "0_intrinsic.npy", K)

    for sub in ("mesh", "body", "keypoints", "sheet"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_mesh_ply(root / "mesh" / f"{subject_id}.ply", *merged_mesh(geom))
    body = {"id": subject_id, "spec": geom.spec.to_json(), "body_model": "anny 0.6.2, topology anny (13,718 vertices)",
            "anny_to_world": geom.anny_to_world.tolist(), "height_m": geom.height_m, "look_at_height": look_at_height(geom),
            "render": {"size": config.size, "n_views": config.n_views, "distance": config.distance,
                       "focal_ratio": config.focal_ratio, "elevation_deg": config.elevation_deg, "ssaa": config.ssaa}}
    (root / "body" / f"{subject_id}.json").write_text(json.dumps(body, indent=1, sort_keys=True))
    with open(root / "body" / f"{subject_id}.npz", "wb") as f:  # np.savez_compressed stamps zip times; plain savez does not
        np.savez(f, vertices=geom.body_vertices.astype(np.float32), faces=geom.body_faces.astype(np.int32),
                 keypoints=geom.keypoints.astype(np.float32))
    uv = np.stack([project_points(geom.keypoints @ E[v, :3, :3].T + E[v, :3, 3], K) for v in range(len(E))])
    kp = {"names": geom.keypoint_names, "world": np.round(geom.keypoints, 6).tolist(), "pixels": np.round(uv, 3).tolist()}
    (root / "keypoints" / f"{subject_id}.json").write_text(json.dumps(kp, sort_keys=True))
    _imwrite(root / "sheet" / f"{subject_id}.png", contact_sheet([v.rgb for v in views])[..., ::-1])
    return views


def contact_sheet(images: list[np.ndarray], cols: int = 6, tile: int = 256) -> np.ndarray:
    """All views in a grid (`cols` per row), each resized to `tile` px and labelled with its view index."""
    import cv2

    from hgm_core.render.images import image_grid

    tiles = []
    for i, img in enumerate(images):
        t = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(t, f"{i:03d} {i * 360 // len(images)}deg", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1, cv2.LINE_AA)
        tiles.append(t)
    return image_grid(np.stack(tiles), cols)


def _imwrite(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    import cv2

    ok, buf = cv2.imencode(path.suffix, img, params or [])
    if not ok:
        raise RenderDataError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())
