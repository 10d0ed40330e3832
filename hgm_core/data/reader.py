"""Torch dataset over GPS-Gaussian / THuman2.0-style multi-view renders (ours or real THuman2.0).

Each item is one subject normalised into HGM's canonical frame (docs/reference/hgm_official_code.md
§2.3): metric units scaled by `CANONICAL_CAM_RADIUS / distance` (1.5 / 2.0), and every pose
left-multiplied so that input view 0 becomes the OpenGL camera-to-world `[I | (0, 0, 1.5)]`.
LGM's "blender world -> OpenGL" row swap (step 2 of §2.3) is a world rotation that cancels in
that last step, so it is not applied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hgm_core.camera import CANONICAL_CAM_RADIUS, Cameras, cameras_from_c2w_gl, fov_from_intrinsics, plucker_rays
from hgm_core.model.hgm import IMAGENET_MEAN, IMAGENET_STD

_VIEW_DIR = re.compile(r"^(?P<id>.+)_(?P<view>\d{3})$")


class DatasetLayoutError(FileNotFoundError):
    """The directory is not a GPS-Gaussian / THuman2.0 render layout (or a subject is incomplete)."""


@dataclass(frozen=True)
class ReaderConfig:
    """Attributes:
        input_size: network input resolution (square).
        output_size: supervision resolution (square).
        num_input_views: 1 (view 0) or 2 (views 0 and n_views / 2), as HGM's `[::interval]`.
        distance: camera distance of the renders in metres (GPS-Gaussian / HGM: 2.0), used when a
            subject does not record its own (`subject_distance`).
    """

    input_size: int = 512
    output_size: int = 256
    num_input_views: int = 1
    distance: float = 2.0


def list_subjects(root: Path) -> dict[str, int]:
    """`{subject_id: n_views}` found under `root/img` (folders `{id}_{view:03d}`)."""
    img = Path(root) / "img"
    if not img.is_dir():
        raise DatasetLayoutError(f"{root} has no img/ folder (expected img/{{id}}_{{view:03d}}/0.jpg)")
    views: dict[str, int] = {}
    for d in img.iterdir():
        m = _VIEW_DIR.match(d.name)
        if m and d.is_dir():
            views[m["id"]] = views.get(m["id"], 0) + 1
    return dict(sorted(views.items()))


def subject_distance(root: Path, sid: str, default: float) -> float:
    """The ring distance recorded in `body/{sid}.json` (hgm datagen varies it per subject), else `default`."""
    path = Path(root) / "body" / f"{sid}.json"
    if not path.exists():
        return default
    return float(json.loads(path.read_text()).get("render", {}).get("distance", default))


def canonical_transform(extrinsics: np.ndarray, distance: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """HGM's camera normalisation.

    Args:
        extrinsics: `[V, 3 or 4, 4]` world->camera, OpenCV axes (view 0 is the input view).
        distance: metric camera distance of the renders.
    Returns:
        c2w_gl `[V, 4, 4]` canonical OpenGL camera-to-world poses (view 0 = `[I | (0, 0, 1.5)]`), and
        world_to_canonical `[4, 4]` mapping metric world points to canonical points (includes the scale).
    """
    E = np.zeros((len(extrinsics), 4, 4))
    E[:, :3, :] = np.asarray(extrinsics, np.float64)[:, :3, :]
    E[:, 3, 3] = 1
    s = CANONICAL_CAM_RADIUS / distance
    S = np.diag([s, s, s, 1.0])
    c2w = np.linalg.inv(E)  # camera-to-world, OpenCV axes
    c2w[:, :3, 3] *= s  # into the scaled world (rotations are unchanged by a uniform scale)
    c2w[:, :, 1:3] *= -1  # OpenCV -> OpenGL camera axes (negate columns 1, 2)
    T = np.eye(4)
    T[2, 3] = CANONICAL_CAM_RADIUS
    M = T @ np.linalg.inv(c2w[0])
    return M @ c2w, M @ S


def count_views(root: Path, sid: str) -> int:
    """Views of one subject (`img/{sid}_{v:03d}` for v = 0, 1, ... without a gap), without listing the layout."""
    n = 0
    while (Path(root) / "img" / f"{sid}_{n:03d}").is_dir():
        n += 1
    return n


def load_view(root: Path, sid: str, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw view: rgb `[H, W, 3]` float in [0, 1] composited on white, mask `[H, W]` in [0, 1], E `[4, 4]`, K `[3, 3]`."""
    import cv2

    view = f"{sid}_{v:03d}"
    root = Path(root)
    bgr = cv2.imread(str(root / "img" / view / "0.jpg"), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(root / "mask" / view / "0.png"), cv2.IMREAD_UNCHANGED)
    if bgr is None or mask is None:
        raise DatasetLayoutError(f"missing image or mask for {sid} view {v} under {root}")
    mask = (mask if mask.ndim == 2 else mask[..., 0]).astype(np.float32) / (65535.0 if mask.dtype == np.uint16 else 255.0)
    rgb = bgr[..., ::-1].astype(np.float32) / 255.0
    rgb = rgb * mask[..., None] + (1 - mask[..., None])
    E = np.eye(4)
    E[:3, :] = np.load(root / "parm" / view / "0_extrinsic.npy")[:3, :]
    K = np.load(root / "parm" / view / "0_intrinsic.npy").astype(np.float64)
    return rgb, mask, E, K


class MultiViewDataset(Dataset):
    """Subjects of a render layout as HGM training samples.

    Item keys:
        name: subject id.
        images_input: `[V_in, 3, S_in, S_in]` ImageNet-normalised RGB on white.
        rays_input: `[V_in, 6, S_in, S_in]` Plücker rays (HGM `get_rays`, fovy from K) in the canonical frame.
        input: `[V_in, 9, S_in, S_in]` their concatenation, the network input.
        images_output: `[V, 3, S_out, S_out]` RGB in [0, 1] on white; masks_output: `[V, 1, S_out, S_out]`.
        c2w_gl: `[V, 4, 4]` canonical OpenGL poses; viewmats: `[V, 4, 4]` canonical world->camera (OpenCV);
        Ks: `[V, 3, 3]` intrinsics at S_out (use `cameras(item)` for a `Cameras`).
        world_to_canonical: `[4, 4]`; body_vertices: `[Nv, 3]` canonical (empty when the layout has none).
    """

    def __init__(self, root: str | Path, config: ReaderConfig = ReaderConfig(), subjects: list[str] | None = None) -> None:
        self.root = Path(root)
        self.config = config
        found = list_subjects(self.root)
        self.subjects = subjects if subjects is not None else list(found)
        missing = [s for s in self.subjects if s not in found]
        if missing:
            raise DatasetLayoutError(f"subjects not in {self.root}: {missing[:5]}")
        self.n_views = {s: found[s] for s in self.subjects}

    def __len__(self) -> int:
        return len(self.subjects)

    def load_view(self, sid: str, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw view (see `load_view`)."""
        return load_view(self.root, sid, v)

    def __getitem__(self, index: int) -> dict:
        cfg = self.config
        sid = self.subjects[index]
        n = self.n_views[sid]
        views = [self.load_view(sid, v) for v in range(n)]
        h, w = views[0][0].shape[:2]
        E = np.stack([v[2] for v in views])
        Ks = np.stack([v[3] for v in views])
        c2w_gl, world_to_canon = canonical_transform(E, subject_distance(self.root, sid, cfg.distance))
        c2w_t = torch.from_numpy(c2w_gl).float()

        def resized(x: np.ndarray, size: int) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(x)).float()
            t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
            return torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]

        interval = n // cfg.num_input_views
        in_views = list(range(0, n, interval))[: cfg.num_input_views]
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        images_in = torch.stack([(resized(views[v][0], cfg.input_size) - mean) / std for v in in_views])
        K_in = Ks[in_views[0]] * np.array([[cfg.input_size / w], [cfg.input_size / h], [1.0]])
        fovy = fov_from_intrinsics(K_in, cfg.input_size, cfg.input_size)
        rays = torch.stack([plucker_rays(c2w_t[v], cfg.input_size, cfg.input_size, fovy) for v in in_views])

        cams = cameras_from_c2w_gl(c2w_t, torch.from_numpy(Ks).float(), w, h).resized(cfg.output_size, cfg.output_size)
        item = {
            "name": sid,
            "images_input": images_in,
            "rays_input": rays,
            "input": torch.cat([images_in, rays], 1),
            "images_output": torch.stack([resized(v[0], cfg.output_size) for v in views]).clamp(0, 1),
            "masks_output": torch.stack([resized(v[1], cfg.output_size) for v in views]).clamp(0, 1),
            "c2w_gl": c2w_t,
            "viewmats": cams.viewmats,
            "Ks": cams.K,
            "world_to_canonical": torch.from_numpy(world_to_canon).float(),
            "body_vertices": self._body_vertices(sid, world_to_canon),
        }
        return item

    def _body_vertices(self, sid: str, world_to_canon: np.ndarray) -> torch.Tensor:
        path = self.root / "body" / f"{sid}.npz"
        if not path.exists():  # real THuman2.0 renders: the SMPL-X fit needs licensed model files
            return torch.zeros(0, 3)
        v = np.load(path)["vertices"].astype(np.float64)
        return torch.from_numpy(v @ world_to_canon[:3, :3].T + world_to_canon[:3, 3]).float()


def cameras(item: dict) -> Cameras:
    """The supervision cameras of an item (canonical frame, output size)."""
    size = item["images_output"].shape[-1]
    return Cameras(item["Ks"], item["viewmats"], size, size)


def load_subject_cameras(root: Path, sid: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Metric cameras of one subject: extrinsics `[V, 4, 4]`, intrinsics `[V, 3, 3]`, image size."""
    import cv2

    n = list_subjects(root)[sid]
    E = np.tile(np.eye(4), (n, 1, 1))
    Ks = np.zeros((n, 3, 3))
    for v in range(n):
        parm = Path(root) / "parm" / f"{sid}_{v:03d}"
        E[v, :3, :] = np.load(parm / "0_extrinsic.npy")[:3, :]
        Ks[v] = np.load(parm / "0_intrinsic.npy")
    size = cv2.imread(str(Path(root) / "img" / f"{sid}_000" / "0.jpg")).shape[1]
    return E, Ks, size


__all__ = ["MultiViewDataset", "ReaderConfig", "canonical_transform", "count_views", "load_view", "subject_distance", "cameras", "list_subjects", "load_subject_cameras",
           "DatasetLayoutError"]
