"""The domain layer: the records and errors every room of `hgm_core` shares (docs/architecture.md).

This module sits at the bottom of the dependency graph. It imports numpy and nothing else of the
project at run time, so `perception`, `body`, `render`, `model`, `pipeline`, `serve` and the
torch-free node can all depend on it without cycles.

Frames: everything a `Reconstruction` carries is in the *input camera's optical frame* (REP 103:
x right, y down, z forward), in metres — the frame the ROS node stamps with the image's frame_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the avatar container is torch-backed; the records only name it
    from hgm_core.gaussians import Gaussians
    from hgm_core.io.live_stream import BindingArrays

STAGES = ("prior", "coarse", "refined", "full")
"""Request levels (`ReconstructionRequest.stages`), in increasing cost: `prior` needs no network
weights (body fit + body-guided Gaussians); `coarse` adds the one-view HGM network; `refined` the
side-view body refinement; `full` the back view, two-view fusion and mesh. Each level is a chain of
stage components (`hgm_core.pipeline.stage`)."""

DEFAULT_STAGES = "prior"
"""The level a request gets when it names none: on the wire, in `hgm reconstruct`, the client, the node
and `hgm demo` (one value, so they cannot disagree)."""

ERROR_KINDS = (
    "bad_request", "protocol", "too_large", "busy",  # the message itself (hgm_core.serve)
    "bad_input", "no_person", "crop_too_small", "stage_unavailable",  # the job (pipeline)
    "internal", "timeout", "unavailable",  # the server
)
"""Every `kind` an error reply may carry on the wire (docs/architecture.md, "Wire protocol")."""


class HgmError(RuntimeError):
    """Root of every documented hgm failure. `kind` (one of `ERROR_KINDS`) is what goes on the wire."""

    kind = "internal"


class PipelineError(HgmError):
    """A documented, user-facing failure of a stage."""

    kind = "internal"


class BadInputError(PipelineError):
    """The image, mask or camera is malformed (wrong shape/dtype, empty, inconsistent sizes)."""

    kind = "bad_input"


class NoPersonError(PipelineError):
    """No person was found in the image."""

    kind = "no_person"


class CropTooSmallError(PipelineError):
    """The person is too small in the image to reconstruct (below the configured minimum height)."""

    kind = "crop_too_small"


class StageUnavailableError(PipelineError):
    """The requested stage needs something this reconstructor was not built with (weights, files)."""

    kind = "stage_unavailable"


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
        depth: optional `[H, W]` depth image aligned with `image` (same intrinsics, same stamp):
            uint16 millimetres or float32 metres, 0 (or NaN) where there is no measurement. It
            makes the body fit's placement and scale metric.
        stages: one of `STAGES`.
        mesh: also extract the avatar's mesh; None leaves it to the reconstructor's configuration.
        stream: tracking key: a request may warm-start its body fit from the previous request of
            the same stream (one camera watching one person), never from another stream's.
        bind: make this reconstruction the stream's *keyframe* for live tracking: bind the avatar
            to its fitted body (`Reconstruction.keyframe`) and (re)start tracking the stream from it.
        stamp: the frame's capture time in seconds (track requests; the camera's clock), so the
            tracker's temporal filter sees the real spacing of frames; None: the worker's clock.
    """

    image: np.ndarray
    camera: CameraInfo | None = None
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    stages: str = DEFAULT_STAGES
    mesh: bool | None = None
    stream: str = ""
    bind: bool = False
    stamp: float | None = None


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


@dataclass(frozen=True)
class Keyframe:
    """An avatar bound to its fitted body, the start of live tracking (docs/live_stream.md).

    Attributes:
        canonical_raw: `[N, 14]` float32 raw rows (`hgm_core.layout.RAW_FIELDS`) of the avatar in
            the canonical (bind) pose of the body model.
        binding: skinning joints and weights of every row, rest transforms, binding id.
        bone_transforms: `[J, 4, 4]` float32 world transforms of the joints in the keyframe's own
            pose (camera optical frame): skinning `canonical_raw` with them gives the avatar back.
    """

    canonical_raw: np.ndarray
    binding: BindingArrays
    bone_transforms: np.ndarray


TRACK_STATES = ("tracking", "lost")
"""`TrackedPose.state`: "lost" means no pose this frame (no person, tracking failed, or no keyframe
of this stream on the worker); the client reconstructs a new keyframe."""


@dataclass(frozen=True)
class TrackedPose:
    """The body's pose in one frame of a live stream (a `track` job's result).

    Attributes:
        state: one of `TRACK_STATES`.
        binding_id: the keyframe binding the transforms belong to (0 when none).
        bone_transforms: `[J, 4, 4]` float32 world transforms of the binding's joints in the
            camera's optical frame, or None when lost.
        skeleton: the body's joints in this frame, or None when lost.
        reason: why the state is "lost" ("" when tracking).
        timings: seconds per step; info: JSON-serialisable extras of the tracker.
    """

    state: str
    binding_id: int = 0
    bone_transforms: np.ndarray | None = None
    skeleton: Skeleton | None = None
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    keyframe: Keyframe | None = None


@dataclass
class Reconstruction:
    """The result of one request: what the worker sends back and `hgm reconstruct` writes.

    Attributes:
        gaussians: the avatar (`hgm_core.gaussians.Gaussians`).
        stages: the level that produced it (`STAGES`); `stages_run` in `info` lists the components.
        skeleton: the fitted body's joints, or None if no body was fitted.
        body_mesh: the fitted body surface, or None.
        mesh: the avatar's surface from TSDF fusion, or None.
        timings: seconds per stage component, in run order, plus "total".
        info: JSON-serialisable extras: `stages_run`, per-stage reports, warnings, the effective
            configuration, person count, crop box, fit residuals.
        keyframe: the avatar bound to its body when the request asked for it (`bind`), else None.
    """

    gaussians: Gaussians
    stages: str = "prior"
    skeleton: Skeleton | None = None
    body_mesh: Mesh | None = None
    mesh: Mesh | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    keyframe: Keyframe | None = None
