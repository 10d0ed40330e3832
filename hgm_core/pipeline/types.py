"""Dataclasses passed between pipeline stages, the worker and its clients (DESIGN §4).

Frames: everything a `Reconstruction` carries is in the *input camera's optical frame* (REP 103:
x right, y down, z forward), in metres — the frame the ROS node stamps with the image's frame_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hgm_core.gaussians import Gaussians

STAGES = ("prior", "coarse", "refined", "full")
"""`stages` values, in increasing cost: `prior` needs no network weights (body fit + pixel-aligned
Gaussians); `coarse` adds the one-view HGM network; `refined` the side-view body refinement;
`full` the back view, two-view fusion and mesh."""


class PipelineError(RuntimeError):
    """Base class of the documented, user-facing failures of a stage. `kind` goes on the wire."""

    kind = "pipeline_error"


class BadInputError(PipelineError):
    """The image, mask or camera is malformed (wrong shape/dtype, empty, inconsistent sizes)."""

    kind = "bad_input"


class NoPersonError(PipelineError):
    """No person was found in the image."""

    kind = "no_person"


class CropTooSmallError(PipelineError):
    """The person is too small in the image to reconstruct (below the configured minimum height)."""

    kind = "crop_too_small"


@dataclass(frozen=True)
class CameraInfo:
    """Pinhole intrinsics of the input image (distortion is ignored).

    Attributes:
        K: `[3, 3]` float64 intrinsics in pixels of the image they belong to.
        width, height: that image's size.
    """

    K: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class ReconstructionRequest:
    """One job.

    Attributes:
        image: `[H, W, 3]` uint8 RGB.
        camera: intrinsics; None means the documented default field of view.
        mask: optional `[H, W]` uint8 person mask (nonzero = person); overrides the segmenter.
        stages: one of `STAGES`.
        mesh: also extract the avatar's mesh; None leaves it to `ReconstructorConfig.mesh`.
        stream: tracking key: a request may warm-start its body fit from the previous request of
            the same stream (one camera watching one person), never from another stream's.
    """

    image: np.ndarray
    camera: CameraInfo | None = None
    mask: np.ndarray | None = None
    stages: str = "prior"
    mesh: bool | None = None
    stream: str = ""


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh with per-vertex colours.

    Attributes:
        vertices: `[V, 3]` float32; faces: `[F, 3]` int64 (counter-clockwise seen from outside);
        colors: `[V, 3]` float32 in [0, 1] or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None


@dataclass(frozen=True)
class Skeleton:
    """Fitted body joints for visualisation (`/human_body`).

    Attributes:
        joints: `[J, 3]` float32 positions; names: J joint names; bones: pairs of joint indices.
    """

    joints: np.ndarray
    names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]


@dataclass
class Reconstruction:
    """What a `Reconstructor.run` returns.

    Attributes:
        gaussians: the avatar.
        skeleton: the fitted body's joints, or None if no body was fitted.
        body_mesh: the fitted body surface, or None.
        mesh: the avatar's surface from TSDF fusion (`ReconstructorConfig.mesh`), or None.
        timings: seconds per stage, in run order.
        info: JSON-serialisable extras (stage names, warnings, person count, crop box, residuals).
        body_fit, perception: the in-process `hgm_core.body.BodyFit` and
            `hgm_core.perception.Perception` behind the result (never sent over the wire).
    """

    gaussians: Gaussians
    skeleton: Skeleton | None = None
    body_mesh: Mesh | None = None
    mesh: Mesh | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    body_fit: Any = None
    perception: Any = None
