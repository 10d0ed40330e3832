"""`/diagnostics` of the hgm node: one status for the worker, one for the frame pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from hgm_node.worker_link import WorkerStatus

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
_WORKER_LEVELS = {"ok": OK, "starting": WARN, "error": ERROR}


@dataclass
class PipelineStats:
    """Counters and the latest outcome of the frame -> avatar path (mutated under the node's lock).

    Attributes:
        received: input frames accepted by the subscription callbacks.
        dropped: frames superseded by a newer one before a job took them (latest frame wins).
        rejected: input frames refused (unsupported encoding, empty, too large, corrupt).
        processed: jobs whose outputs were published; failed: jobs the worker refused, failed or timed out.
        level, message: the latest event (OK after a published avatar, WARN after a rejected frame or
            a documented pipeline failure such as no_person, ERROR after a timeout or worker crash).
        timings: seconds per stage of the last published job, plus "roundtrip" and "total"
            (frame received -> outputs published).
        gaussians, cloud_bytes: size of the last published avatar.
        keyframes, track_state: live mode: keyframes installed so far, and the last frame's outcome
            ("tracking", "lost", "waiting"; "" outside live mode).
        live_skipped: live mode: tracked poses a newer one replaced before the publish thread took
            them (the publisher is slower than tracking when this grows).
    """

    received: int = 0
    dropped: int = 0
    rejected: int = 0
    processed: int = 0
    failed: int = 0
    level: bytes = OK
    message: str = "waiting for frames"
    timings: dict[str, float] = field(default_factory=dict)
    gaussians: int = 0
    cloud_bytes: int = 0
    keyframes: int = 0
    track_state: str = ""
    live_skipped: int = 0


def diagnostic_array(stamp: Time, node_name: str, worker: WorkerStatus, stats: PipelineStats) -> DiagnosticArray:
    worker_values = {
        "state": worker.state,
        "endpoint": worker.endpoint,
        "local_pid": "" if worker.local_pid is None else str(worker.local_pid),
        "restarts": str(worker.restarts),
        **health_values(worker.health),
    }
    pipeline_values = {
        "frames_received": str(stats.received),
        "frames_dropped": str(stats.dropped),
        "frames_rejected": str(stats.rejected),
        "jobs_published": str(stats.processed),
        "jobs_failed": str(stats.failed),
        "last_gaussians": str(stats.gaussians),
        "last_cloud_bytes": str(stats.cloud_bytes),
        **({"live_keyframes": str(stats.keyframes), "live_state": stats.track_state, "live_skipped": str(stats.live_skipped)}
           if stats.track_state else {}),
        **{f"latency.{k}_s": f"{v:.4f}" for k, v in stats.timings.items()},
    }
    return DiagnosticArray(
        header=Header(stamp=stamp),
        status=[
            _status(f"{node_name}: worker", worker.endpoint, _WORKER_LEVELS[worker.state], worker.message, worker_values),
            _status(f"{node_name}: pipeline", node_name, stats.level, stats.message, pipeline_values),
        ],
    )


def health_values(health: dict) -> dict[str, str]:
    """The worker's health reply as diagnostic key/values: nested objects flattened with dots
    (`health.pipeline.device`, `health.pipeline.gpu`, `health.pipeline.checkpoint`), except the
    pipeline's whole `config`, which stays one compact JSON value."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict) and not prefix.endswith(".config"):
            for k, v in sorted(value.items()):
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = json.dumps(value, separators=(",", ":"), sort_keys=True) if isinstance(value, dict) else str(value)

    walk("health", health)
    return out


def _status(name: str, hardware_id: str, level: bytes, message: str, values: dict[str, str]) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level, name=name, message=message[:500], hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )
