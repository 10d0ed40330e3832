"""The reconstruct and track requests and results of the worker protocol, encoded and checked in one place.

`hgm_core.serve.protocol` (whose docstring is the wire specification) frames messages; this module
says what a reconstruct or track request and its result hold. The client encodes requests and decodes results
with it, the worker decodes requests and encodes results, and the broker forwards both untouched.
Every check of a request's content — image, intrinsics, mask, options, limits — lives here, so the
client refuses locally exactly what a worker would refuse remotely.

Imports numpy and pyzmq only (the torch-free ROS node uses it); `encode_result` only calls methods
of the `Reconstruction` it is given. A keyframe's binding decodes into `hgm_core.io.live_stream`'s
`BindingArrays`, which the node's numpy skinner takes as is.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from hgm_core.io.live_stream import BindingArrays, LiveStreamError
from hgm_core.layout import RAW_FIELDS
from hgm_core.serve.protocol import MAX_ID_CHARS, Message, ProtocolError, encode, encode_error
from hgm_core.types import (
    DEFAULT_STAGES,
    ERROR_KINDS,
    STAGES,
    TRACK_STATES,
    CameraInfo,
    HgmError,
    Keyframe,
    Reconstruction,
    ReconstructionRequest,
    Skeleton,
    TrackedPose,
)

_log = logging.getLogger("hgm.serve.worker")

REQUEST_ARRAYS = ("image", "K", "mask", "depth")
MAX_STREAM_CHARS = MAX_ID_CHARS
FOCAL_RANGE = (0.02, 1000.0)
"""Focal lengths allowed in K, as multiples of the image's longer side: a pinhole of ~176° down to
~0.06° field of view. Beyond these the body fit's projections leave float32 (a focal length of
1e39 overflows it and crashed the fit natively) or degenerate (near zero)."""


@dataclass
class JobResult:
    """A reconstruction as received. Arrays are zero-copy views of the received message.

    Attributes:
        gaussians: `[N, 14]` float32 raw rows in `hgm_core.layout.RAW_FIELDS` order, camera
            optical frame, metres.
        joints: `[J, 3]` float32 fitted joints (camera optical frame) or None.
        joint_names, bones: names of the J joints and pairs of joint indices.
        mesh_vertices `[V, 3]` float32, mesh_faces `[F, 3]` uint32, mesh_colors `[V, 3]` uint8:
            the avatar mesh, or None.
        timings: seconds per stage on the worker, plus "worker_total" and "roundtrip".
        info: the pipeline's JSON extras, plus "worker" (pid, host) of the worker that ran the job.
        body_vertices `[B, 3]` float32, body_faces `[G, 3]` uint32: the fitted body surface, or None.
        keyframe: the canonical avatar, binding and keyframe pose of a `bind` request, or None.
    """

    gaussians: np.ndarray
    joints: np.ndarray | None
    joint_names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    mesh_vertices: np.ndarray | None
    mesh_faces: np.ndarray | None
    mesh_colors: np.ndarray | None
    timings: dict[str, float]
    info: dict
    body_vertices: np.ndarray | None = None
    body_faces: np.ndarray | None = None
    keyframe: Keyframe | None = None


# -- requests ------------------------------------------------------------------------------------


def encode_request(
    request_id: str,
    image: np.ndarray,
    *,
    K: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    stages: str = "prior",
    mesh: bool | None = None,
    stream: str = "",
    bind: bool = False,
    deadline_ms: int | None = None,
) -> list:
    """A reconstruct request -> multipart frames, after the same checks `decode_request` makes.

    Raises:
        ProtocolError: kind "bad_input" for an unusable image, K, mask or depth, "bad_request" for options.
    """
    arrays = _request_arrays(request_id, image, K, mask, depth)
    options = _check_options({"stages": stages, "mesh": None if mesh is None else bool(mesh), "stream": stream,
                              "bind": bool(bind)}, STAGES, request_id)
    fields = {k: v for k, v in options.items() if v is not None and not (k == "bind" and not v)}
    if deadline_ms is not None:
        fields["deadline_ms"] = deadline_ms
    return encode("reconstruct", request_id, arrays, **fields)


def encode_track_request(
    request_id: str,
    image: np.ndarray,
    *,
    stream: str,
    K: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    stamp: float | None = None,
    deadline_ms: int | None = None,
) -> list:
    """A track request (the body's pose in one frame of `stream`, captured at `stamp` seconds) ->
    multipart frames, after the checks `decode_request` makes.

    Raises:
        ProtocolError: "bad_input" for an unusable image, K, mask or depth; "bad_request" for an
            empty `stream` or a stamp that is not a finite number.
    """
    arrays = _request_arrays(request_id, image, K, mask, depth)
    _check_track_stream(stream, request_id)
    fields: dict[str, Any] = {"stream": stream}
    if stamp is not None:
        fields["stamp"] = _check_stamp(stamp, request_id)
    if deadline_ms is not None:
        fields["deadline_ms"] = deadline_ms
    return encode("track", request_id, arrays, **fields)


def _request_arrays(request_id: str, image: np.ndarray, K: np.ndarray | None, mask: np.ndarray | None,
                    depth: np.ndarray | None) -> dict[str, np.ndarray]:
    """The checked arrays of a reconstruct or track request."""
    image = np.asarray(image)
    arrays = {"image": check_image(image, request_id)}
    h, w = image.shape[:2]
    if K is not None:
        K = np.asarray(K)
        arrays["K"] = check_camera(K.astype(np.float64) if K.dtype.kind in "iu" else K, w, h, request_id).K
    if mask is not None:
        mask = np.asarray(mask)
        arrays["mask"] = check_mask(mask.astype(np.uint8) if mask.dtype == bool else mask, (h, w), request_id)
    if depth is not None:
        arrays["depth"] = check_depth(np.asarray(depth), (h, w), request_id)
    return arrays


def decode_request(msg: Message, *, max_pixels: int, stages: tuple[str, ...] = STAGES) -> ReconstructionRequest:
    """A decoded "reconstruct" or "track" message -> the pipeline's request, checked against the
    schema and the server's limits (`max_pixels`, the `stages` it serves). A track request becomes a
    request with its image, intrinsics, mask, depth and (non-empty) stream; its other fields keep
    their defaults and mean nothing to the tracker.

    Raises:
        ProtocolError: bad_request (schema), bad_input (unusable image, K or mask), too_large.
    """
    arrays, rid = msg.arrays, msg.id
    unknown = set(arrays) - set(REQUEST_ARRAYS)
    if unknown:
        raise ProtocolError("bad_request", f"unknown arrays {sorted(unknown)}", rid)
    if "image" not in arrays:
        raise ProtocolError("bad_request", "reconstruct needs an 'image' array", rid)
    image = check_image(arrays["image"], rid)
    h, w = image.shape[:2]
    if h * w > max_pixels:
        raise ProtocolError("too_large", f"image {w}x{h} exceeds max_pixels={max_pixels}", rid)
    camera = check_camera(arrays["K"], w, h, rid) if "K" in arrays else None
    mask = check_mask(arrays["mask"], (h, w), rid) if "mask" in arrays else None
    depth = check_depth(arrays["depth"], (h, w), rid) if "depth" in arrays else None
    if msg.kind == "track":
        stream = msg.header.get("stream")
        _check_track_stream(stream, rid)
        stamp = msg.header.get("stamp")
        return ReconstructionRequest(image=image, camera=camera, mask=mask, depth=depth, stream=stream,
                                     stamp=None if stamp is None else _check_stamp(stamp, rid))
    options = _check_options(msg.header, stages, rid)
    return ReconstructionRequest(image=image, camera=camera, mask=mask, depth=depth, **options)


def check_image(image: np.ndarray, request_id: str = "") -> np.ndarray:
    """The image as sent: non-empty `[H, W, 3]` uint8 (ProtocolError "bad_input" otherwise)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ProtocolError("bad_input", f"image must be a non-empty [H, W, 3] uint8 RGB array, got {list(image.shape)} {image.dtype}", request_id)
    return image


def check_camera(K: np.ndarray, width: int, height: int, request_id: str = "") -> CameraInfo:
    """`[3, 3]` pixel intrinsics the pipeline can use for a `width` x `height` image (see the
    protocol's request arrays and `FOCAL_RANGE`), as float64. ProtocolError "bad_input" otherwise."""
    if K.shape != (3, 3) or K.dtype.kind != "f":
        raise ProtocolError("bad_input", f"K must be a float [3, 3] matrix, got {list(K.shape)} {K.dtype}", request_id)
    K = K.astype(np.float64)
    if not np.isfinite(K).all():
        raise ProtocolError("bad_input", "K has a non-finite entry", request_id)
    if K[2].tolist() != [0.0, 0.0, 1.0] or K[1, 0] != 0.0:
        raise ProtocolError("bad_input", f"K must be upper triangular with last row [0, 0, 1], got {K.tolist()}", request_id)
    side = max(width, height)
    lo, hi = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    fx, fy, skew, cx, cy = K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2]
    if not (lo <= fx <= hi and lo <= fy <= hi):
        raise ProtocolError("bad_input", f"focal lengths fx={fx:g}, fy={fy:g} outside [{lo:g}, {hi:g}] px for a {width}x{height} image", request_id)
    if abs(skew) > fx:
        raise ProtocolError("bad_input", f"skew {skew:g} exceeds fx={fx:g}", request_id)
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise ProtocolError("bad_input", f"principal point ({cx:g}, {cy:g}) is more than an image size outside a {width}x{height} image", request_id)
    return CameraInfo(K=K, width=width, height=height)


def check_mask(mask: np.ndarray, hw: tuple[int, int], request_id: str = "") -> np.ndarray:
    """A `[H, W]` uint8 person mask for an image of `hw` (ProtocolError "bad_input" otherwise)."""
    if mask.dtype != np.uint8 or mask.shape != hw:
        raise ProtocolError("bad_input", f"mask must be uint8 {list(hw)}, got {list(mask.shape)} {mask.dtype}", request_id)
    return mask


def check_depth(depth: np.ndarray, hw: tuple[int, int], request_id: str = "") -> np.ndarray:
    """A `[H, W]` depth image for an image of `hw`: uint16 millimetres or float32 metres (0 or NaN =
    no measurement; no negative or infinite values). ProtocolError "bad_input" otherwise."""
    if depth.shape != hw or depth.dtype not in (np.uint16, np.float32):
        raise ProtocolError("bad_input", f"depth must be uint16 (mm) or float32 (m) {list(hw)}, got {list(depth.shape)} {depth.dtype}", request_id)
    if depth.dtype == np.float32 and (np.isinf(depth).any() or (depth < 0).any()):
        raise ProtocolError("bad_input", "depth in metres must be finite and >= 0 (NaN or 0 = no measurement)", request_id)
    return depth


def _check_options(fields: Mapping[str, Any], stages: tuple[str, ...], rid: str) -> dict[str, Any]:
    stage = fields.get("stages", DEFAULT_STAGES)
    if not isinstance(stage, str) or stage not in stages:
        raise ProtocolError("bad_request", f"stages {stage!r} not served here (served: {list(stages)})", rid)
    mesh = fields.get("mesh")
    if mesh is not None and not isinstance(mesh, bool):
        raise ProtocolError("bad_request", f"mesh must be true, false or absent, got {mesh!r}", rid)
    stream = fields.get("stream", "")
    if not isinstance(stream, str) or len(stream) > MAX_STREAM_CHARS:
        raise ProtocolError("bad_request", f"stream must be a string of at most {MAX_STREAM_CHARS} characters", rid)
    bind = fields.get("bind", False)
    if not isinstance(bind, bool):
        raise ProtocolError("bad_request", f"bind must be true, false or absent, got {bind!r}", rid)
    return {"stages": stage, "mesh": mesh, "stream": stream, "bind": bind}


def _check_stamp(stamp: Any, rid: str) -> float:
    # bool is an int to Python, not a time; JSON integers and reals both are.
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        raise ProtocolError("bad_request", f"stamp must be a finite number of seconds, got {stamp!r}", rid)
    return float(stamp)


def _check_track_stream(stream: Any, rid: str) -> None:
    if not isinstance(stream, str) or not 0 < len(stream) <= MAX_STREAM_CHARS:
        raise ProtocolError("bad_request", f"a track request needs a stream: a string of 1 to {MAX_STREAM_CHARS} characters", rid)


# -- results -------------------------------------------------------------------------------------


def encode_result(request_id: str, recon: Reconstruction, *, timings: Mapping[str, float] | None = None, info: Mapping[str, Any] | None = None) -> list:
    """A `Reconstruction` -> "result" frames; `timings` and `info` are merged over the pipeline's."""
    arrays = {"gaussians": recon.gaussians.to_raw().detach().cpu().numpy().astype(np.float32, copy=False)}
    fields: dict[str, Any] = {
        "timings": {str(k): float(v) for k, v in {**recon.timings, **(timings or {})}.items()},
        "info": {**recon.info, **(info or {})},
    }
    if recon.skeleton is not None:
        arrays["joints"] = np.asarray(recon.skeleton.joints, dtype=np.float32)
        fields["skeleton"] = {"names": list(recon.skeleton.names), "bones": [list(map(int, b)) for b in recon.skeleton.bones]}
    if recon.mesh is not None:
        arrays["mesh_vertices"] = np.asarray(recon.mesh.vertices, dtype=np.float32)
        arrays["mesh_faces"] = _faces_u32(recon.mesh.faces)
        if recon.mesh.colors is not None:
            arrays["mesh_colors"] = _colors_u8(recon.mesh.colors)
    if recon.body_mesh is not None:
        arrays["body_vertices"] = np.asarray(recon.body_mesh.vertices, dtype=np.float32)
        arrays["body_faces"] = _faces_u32(recon.body_mesh.faces)
    if recon.keyframe is not None:
        kf, b = recon.keyframe, recon.keyframe.binding
        arrays.update(canonical=np.asarray(kf.canonical_raw, np.float32), joint_index=np.asarray(b.joint_index, np.uint16),
                      joint_weight=np.asarray(b.joint_weight, np.float32),
                      rest_transforms=np.asarray(b.rest_transforms, np.float32),
                      bone_transforms=np.asarray(kf.bone_transforms, np.float32))
        fields["binding"] = {"binding_id": int(b.binding_id), "body_model": b.body_model,
                             "joint_names": list(b.joint_names), "joint_parents": [int(p) for p in b.joint_parents]}
    return encode("result", request_id, arrays, **fields)


def encode_track_result(request_id: str, pose: TrackedPose, *, timings: Mapping[str, float] | None = None,
                        info: Mapping[str, Any] | None = None) -> list:
    """A `TrackedPose` -> "result" frames (header `track`, arrays `bone_transforms` and `joints`
    while tracking); `timings` and `info` are merged over the tracker's."""
    if pose.state not in TRACK_STATES:
        raise ValueError(f"track state {pose.state!r} is not one of {TRACK_STATES}")
    arrays: dict[str, np.ndarray] = {}
    fields: dict[str, Any] = {
        "track": {"state": pose.state, "binding_id": int(pose.binding_id), "reason": pose.reason},
        "timings": {str(k): float(v) for k, v in {**pose.timings, **(timings or {})}.items()},
        "info": {**pose.info, **(info or {})},
    }
    if pose.bone_transforms is not None:
        arrays["bone_transforms"] = np.asarray(pose.bone_transforms, np.float32)
    if pose.skeleton is not None:
        arrays["joints"] = np.asarray(pose.skeleton.joints, np.float32)
        fields["skeleton"] = {"names": list(pose.skeleton.names), "bones": [list(map(int, b)) for b in pose.skeleton.bones]}
    return encode("result", request_id, arrays, **fields)


def decode_result(msg: Message) -> JobResult:
    """A decoded "result" message -> `JobResult` (views of its frames).

    Raises:
        ProtocolError: kind "bad_request" when the result breaks the schema.
    """
    arrays, rid = msg.arrays, msg.id
    gaussians = _result_array(arrays, "gaussians", np.float32, len(RAW_FIELDS), rid)
    if gaussians is None:
        raise ProtocolError("bad_request", "result has no 'gaussians' array", rid)
    names, bones = _skeleton(msg)
    timings = _result_timings(msg)
    return JobResult(
        gaussians=gaussians,
        joints=_result_array(arrays, "joints", np.float32, 3, rid),
        joint_names=names,
        bones=bones,
        mesh_vertices=_result_array(arrays, "mesh_vertices", np.float32, 3, rid),
        mesh_faces=_result_array(arrays, "mesh_faces", np.uint32, 3, rid),
        mesh_colors=_result_array(arrays, "mesh_colors", np.uint8, 3, rid),
        timings=timings,
        info=dict(msg.header.get("info", {})),
        body_vertices=_result_array(arrays, "body_vertices", np.float32, 3, rid),
        body_faces=_result_array(arrays, "body_faces", np.uint32, 3, rid),
        keyframe=_result_keyframe(msg),
    )


def decode_track_result(msg: Message) -> TrackedPose:
    """A decoded "result" of a track request -> `TrackedPose` (arrays are views of its frames).

    Raises:
        ProtocolError: kind "bad_request" when the result breaks the schema.
    """
    rid, track = msg.id, msg.header.get("track")
    if not isinstance(track, dict) or track.get("state") not in TRACK_STATES:
        raise ProtocolError("bad_request", f"track result needs 'track': {{'state': one of {list(TRACK_STATES)}, ...}}", rid)
    binding_id, reason = track.get("binding_id", 0), track.get("reason", "")
    if type(binding_id) is not int or not 0 <= binding_id < 2**32 or not isinstance(reason, str):
        raise ProtocolError("bad_request", "track 'binding_id' must be a uint32 and 'reason' a string", rid)
    transforms = _transforms(msg.arrays, "bone_transforms", rid)
    if track["state"] == "tracking" and transforms is None:
        raise ProtocolError("bad_request", "a 'tracking' result needs 'bone_transforms'", rid)
    joints = _result_array(msg.arrays, "joints", np.float32, 3, rid)
    names, bones = _skeleton(msg)
    return TrackedPose(
        state=track["state"],
        binding_id=binding_id,
        bone_transforms=transforms,
        skeleton=None if joints is None else Skeleton(joints, names, bones),
        reason=reason,
        timings=_result_timings(msg),
        info=dict(msg.header.get("info", {})),
    )


def _result_timings(msg: Message) -> dict[str, float]:
    timings = msg.header.get("timings", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in timings.values()):
        raise ProtocolError("bad_request", "result 'timings' must map names to numbers", msg.id)
    return {k: float(v) for k, v in timings.items()}


def _skeleton(msg: Message) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    rid, skeleton = msg.id, msg.header.get("skeleton", {})
    if not isinstance(skeleton, dict):
        raise ProtocolError("bad_request", "result 'skeleton' must be an object", rid)
    names, bones = skeleton.get("names", []), skeleton.get("bones", [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ProtocolError("bad_request", "result 'skeleton.names' must be a list of strings", rid)
    if not (isinstance(bones, list) and all(isinstance(b, list) and len(b) == 2 and all(type(i) is int for i in b) for b in bones)):
        raise ProtocolError("bad_request", "result 'skeleton.bones' must be a list of [int, int]", rid)
    return tuple(names), tuple((a, b) for a, b in bones)


def _transforms(arrays: Mapping[str, np.ndarray], name: str, rid: str) -> np.ndarray | None:
    """`[J, 4, 4]` float32 transforms, or None when absent."""
    a = arrays.get(name)
    if a is not None and (a.dtype != np.float32 or a.ndim != 3 or a.shape[1:] != (4, 4)):
        raise ProtocolError("bad_request", f"result array {name!r} is {list(a.shape)} {a.dtype}, expected [J, 4, 4] float32", rid)
    return a


def _result_keyframe(msg: Message) -> Keyframe | None:
    """The keyframe of a `bind` result (header `binding` + arrays), or None."""
    arrays, rid, meta = msg.arrays, msg.id, msg.header.get("binding")
    if meta is None:
        return None
    canonical = _result_array(arrays, "canonical", np.float32, len(RAW_FIELDS), rid)
    rest, bones = _transforms(arrays, "rest_transforms", rid), _transforms(arrays, "bone_transforms", rid)
    index, weight = arrays.get("joint_index"), arrays.get("joint_weight")
    if not isinstance(meta, dict) or canonical is None or rest is None or bones is None or index is None or weight is None:
        raise ProtocolError("bad_request", "a keyframe result needs 'binding' and the arrays canonical, joint_index, "
                            "joint_weight, rest_transforms, bone_transforms", rid)
    if index.dtype != np.uint16 or weight.dtype != np.float32 or index.ndim != 2 or index.shape[0] != len(canonical) \
            or bones.shape != rest.shape:
        raise ProtocolError("bad_request", f"keyframe arrays disagree: canonical {list(canonical.shape)}, joint_index "
                            f"{list(index.shape)} {index.dtype}, joint_weight {list(weight.shape)} {weight.dtype}, "
                            f"rest {list(rest.shape)}, bones {list(bones.shape)}", rid)
    names, parents = meta.get("joint_names"), meta.get("joint_parents")
    binding_id, body_model = meta.get("binding_id"), meta.get("body_model")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(parents, list)
            and all(type(p) is int for p in parents) and type(binding_id) is int and 0 <= binding_id < 2**32
            and isinstance(body_model, str)):
        raise ProtocolError("bad_request", "keyframe 'binding' needs joint_names (strings), joint_parents (ints), "
                            "binding_id (uint32) and body_model (string)", rid)
    try:
        binding = BindingArrays(index, weight, rest, tuple(names), tuple(parents), binding_id, body_model)
    except LiveStreamError as e:
        raise ProtocolError("bad_request", f"keyframe binding: {e}", rid) from None
    return Keyframe(canonical, binding, bones)


def decode_error(msg: Message) -> tuple[str, str]:
    """An "error" message -> (kind, message); a kind outside the protocol's list reads as "internal"."""
    error = msg.header.get("error", {})
    kind, message = error.get("kind"), error.get("message")
    return (kind if kind in ERROR_KINDS else "internal"), (message if isinstance(message, str) else "")


def _result_array(arrays: Mapping[str, np.ndarray], name: str, dtype: type, width: int, rid: str) -> np.ndarray | None:
    a = arrays.get(name)
    if a is None:
        return None
    if a.dtype != dtype or a.ndim != 2 or a.shape[1] != width:
        raise ProtocolError("bad_request", f"result array {name!r} is {list(a.shape)} {a.dtype}, expected [*, {width}] {np.dtype(dtype)}", rid)
    return a


def _faces_u32(faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.size and (faces.min() < 0 or faces.max() >= 2**32):
        raise ValueError("mesh face indices out of uint32 range")
    return faces.astype(np.uint32)


def _colors_u8(colors: np.ndarray) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors
    return np.clip(np.rint(colors * 255.0), 0, 255).astype(np.uint8)


# -- running a job ---------------------------------------------------------------------------------

Handler = Callable[[ReconstructionRequest], Reconstruction]
"""What serves reconstruct jobs: the pipeline's `Reconstructor.run` (or `LivePipeline.run`), or a test handler."""
TrackHandler = Callable[[ReconstructionRequest], TrackedPose]
"""What serves track jobs: `hgm_core.pipeline.live.LivePipeline.track`, or a test handler."""


def run_job(handler: Handler | TrackHandler, request_id: str, request: ReconstructionRequest, kind: str = "reconstruct") -> list:
    """Run one job of `kind` ("reconstruct" or "track"): "result" frames, or "error" frames for a
    documented (`HgmError`) or unexpected failure of the handler. Timings get "worker_total"; info
    "worker": {"compute_pid"}."""
    t0 = time.perf_counter()
    encoder = encode_track_result if kind == "track" else encode_result
    try:
        out = handler(request)
        timings = {"worker_total": time.perf_counter() - t0}
        return encoder(request_id, out, timings=timings, info={"worker": {"compute_pid": os.getpid()}})
    except HgmError as e:
        return encode_error(request_id, e.kind if e.kind in ERROR_KINDS else "internal", str(e))
    except Exception as e:  # a bug in the handler must not take the worker down
        _log.error("job %s failed:\n%s", request_id, traceback.format_exc())
        return encode_error(request_id, "internal", f"{type(e).__name__}: {e}")
