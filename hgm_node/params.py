"""Parameters of `hgm_node`: one dataclass holds the names, defaults and descriptions.

`launch/params.yaml` lists exactly these keys (a test keeps the two equal). Topic names are not
parameters: remap `image`, `image/compressed`, `camera_info`, `mask`, `depth` and the outputs the ROS way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from hgm_core.types import DEFAULT_STAGES

TRIGGERS = ("continuous", "service")
MODES = ("reconstruct", "live")
IMAGE_TRANSPORTS = ("raw", "compressed")


def _param(default, description: str, *, choices: tuple[str, ...] = (), min_value: float | None = None):
    return field(default=default, metadata={"description": description, "choices": choices, "min": min_value})


@dataclass(frozen=True)
class NodeParams:
    mode: str = _param("reconstruct", "'reconstruct': every job reconstructs a frame; 'live': reconstruct a keyframe "
                       "(at start, on ~/capture, when tracking is lost, every keyframe_period_s), track the body in "
                       "every frame and publish the keyframe avatar re-posed (docs/live_stream.md); frames are then "
                       "always taken continuously", choices=MODES)
    keyframe_period_s: float = _param(0.0, "live mode: also take a new keyframe this often (0: only at start, on "
                                      "~/capture and when tracking is lost)", min_value=0.0)
    keyframe_retry_s: float = _param(1.0, "live mode: least time between a failed keyframe and the next attempt",
                                     min_value=0.0)
    drift_threshold: float = _param(0.06, "live mode: a new keyframe when the posed avatar's colours differ from the "
                                    "frame's by this much more than the keyframe's own did (mean absolute RGB "
                                    "difference in [0, 1], median over the avatar's footprint; hgm_node.appearance) "
                                    "for drift_frames frames in a row (0.06: drifts of 0.02-0.035 while nothing changes, 0.15-0.39 "
                                    "with inverted clothes colours, bench/live.py --drift-only); 0: no drift check. Needs camera_info",
                                    min_value=0.0)
    drift_frames: int = _param(5, "live mode: consecutive drifted frames that ask for a keyframe", min_value=1)
    trigger: str = _param("continuous", "'continuous': reconstruct the latest frame whenever the worker is free "
                          "(latest frame wins); 'service': only on a ~/capture call (std_srvs/Trigger)", choices=TRIGGERS)
    min_interval_s: float = _param(0.0, "continuous mode: least time between two job starts", min_value=0.0)
    image_transport: str = _param("raw", "subscribe to 'image' (sensor_msgs/Image) or 'image/compressed' "
                                  "(sensor_msgs/CompressedImage, jpeg/png)", choices=IMAGE_TRANSPORTS)
    use_mask: bool = _param(False, "also subscribe to 'mask' (mono8/mono16 Image, nonzero = person); a mask with the "
                            "image's exact stamp replaces the worker's segmenter")
    use_depth: bool = _param(False, "also subscribe to 'depth': an aligned depth image (16UC1 millimetres or 32FC1 "
                             "metres, the colour image's size and intrinsics); the one stamped nearest a frame, within "
                             "depth_max_skew_s, makes the body fit's distance and size metric and moves the avatar's visible "
                             "surface onto the measured one (align_depth); none: image only")
    depth_max_skew_s: float = _param(0.01, "largest stamp difference between a frame and the depth image paired "
                                     "with it (0: the same stamp only)", min_value=0.0)
    stages: str = _param(DEFAULT_STAGES, "pipeline stages the worker runs: prior | coarse | refined | full")
    mesh: bool = _param(False, "also ask the worker for the avatar mesh (TSDF fusion, ~1.5 s on a CPU) and publish "
                        "it on 'human_mesh'")
    worker_endpoint: str = _param("", "worker or broker endpoint (tcp://host:port, ipc:///path); empty: start "
                                  "and supervise a local worker on ipc:// in a private temp dir")
    local_worker_command: str = _param("", "command of the local worker, '--bind ENDPOINT' is appended; "
                                       "empty: '<this python> -m hgm_core serve'")
    timeout_s: float = _param(120.0, "deadline of one reconstruction job", min_value=0.001)
    retries: int = _param(0, "re-sends of a timed-out job (0: the next frame is the retry)", min_value=0)
    max_image_pixels: int = _param(4096 * 4096, "larger input images are rejected (diagnostics WARN)", min_value=1)
    health_period_s: float = _param(2.0, "worker health check period", min_value=0.05)
    restart_backoff_max_s: float = _param(30.0, "cap of the exponential backoff between local worker restarts",
                                          min_value=0.1)
    diagnostics_period_s: float = _param(1.0, "/diagnostics publishing period", min_value=0.05)
    curve_server_key: str = _param("", "remote worker's CURVE public key file (from `hgm keys`); empty: no CURVE")
    curve_client_secret: str = _param("", "this client's CURVE secret key file; empty: an ephemeral key pair")
    record: str = _param("", "MCAP file to record the node's input and output topics to (serialized as received; "
                         "`hgm play`, Foxglove and rosbag2 read it); empty: no recording")


PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeParams))


def declare_parameters(node: Node) -> NodeParams:
    """Declare every `NodeParams` field on `node` (read-only, with descriptors) and return the values.

    Raises:
        ValueError: a value outside its documented choices or range.
    """
    values = {}
    for f in dataclasses.fields(NodeParams):
        meta = f.metadata
        descriptor = ParameterDescriptor(description=meta["description"], read_only=True)
        if meta["choices"]:
            descriptor.additional_constraints = "one of: " + ", ".join(meta["choices"])
        if meta["min"] is not None and isinstance(f.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=meta["min"], to_value=1e9)]
        elif meta["min"] is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(meta["min"]), to_value=2**62)]
        try:
            value = node.declare_parameter(f.name, f.default, descriptor).value
        except (InvalidParameterValueException, InvalidParameterTypeException) as e:
            raise ValueError(str(e)) from None
        if meta["choices"] and value not in meta["choices"]:
            raise ValueError(f"parameter {f.name}={value!r}: must be one of {', '.join(meta['choices'])}")
        values[f.name] = value
    return NodeParams(**values)
