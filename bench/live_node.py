"""The node's live mode end to end: frame stamp -> posed avatar, over real ROS 2 and a real worker.

    .venv/bin/python bench/live_node.py [--seconds 20] [--rate 15] [--modes live,reconstruct] [--sequence DIR] [--isolate]

One real worker (`hgm serve`, prior level, 1 thread; `--isolate`: its compute in a child process) and, per mode, one `hgm_node` process
(`mode:=live` or the `reconstruct` baseline: every job reconstructs its frame); this process is the
camera: 640x480 rgb8 frames at `--rate` Hz (reliable, so no large frame is lost to best effort) of
the bundled sample photo sliding left and right (±60 px at 0.25 Hz), or with `--sequence` the
frames of an `hgm datagen --sequence` folder (a body walking, turning, waving; its own K), looped,
stamped with the wall clock when published. It subscribes to `human_gaussians` and `human_avatar/bones` and records, per
published avatar, the time from the frame's stamp to its arrival here (latency p50/p95), how many
distinct frames became avatars per second after the first one (sustained rate), and the bytes per
frame of the full avatar (PointCloud2) and the compact frame. In live mode a `~/capture` call
half-way asks for a keyframe; the node's log gives every keyframe's reason, duration and end, and
the avatars that arrived while each ran show that tracking went on meanwhile.
The node's own per-stage timings (diagnostics `latency.*`, sampled each second) give the profile
(wall clock, so they grow with the machine's load), and the CPU seconds the node, the worker (with
its compute child) and this camera process used while the frames were sent, also per published
avatar, what the rate needs whatever the load.
Writes JSON to stdout and bench/results/live_node.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rclpy  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from _results import add_out_argument, write_results  # noqa: E402
from hgm_core.serve.client import WorkerClient, WorkerError  # noqa: E402
from hgm_node.qos import INPUT_QOS, LATCHED_QOS  # noqa: E402

WIDTH, HEIGHT = 640, 480
FRAME_ID = "bench_camera_optical"


def sample_frames(n: int, rate_hz: float) -> list[np.ndarray]:
    """`n` 640x480 frames of the sample photo (scaled to 480 px high) sliding ±60 px at 0.25 Hz."""
    from PIL import Image as PILImage

    from hgm_core.paths import ASSETS_DIR

    photo = np.asarray(PILImage.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB").resize((HEIGHT, HEIGHT)))
    frames = []
    for i in range(n):
        x = int(round((WIDTH - HEIGHT) / 2 + 60 * np.sin(2 * np.pi * 0.25 * i / rate_hz)))
        frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        frame[:, x : x + HEIGHT] = photo
        frames.append(frame)
    return frames


def sequence_frames(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames and `[3, 3]` K of an `hgm datagen --sequence` folder (640x480 expected)."""
    from hgm_core.data.sequence import read_sequence

    seq = read_sequence(root)
    if seq.size != (WIDTH, HEIGHT):
        raise SystemExit(f"{root} is {seq.size[0]}x{seq.size[1]}; this bench plays {WIDTH}x{HEIGHT}")
    return [seq.image(f) for f in range(len(seq))], seq.K


def _stamp_of(cdr: bytes) -> float:
    """The header stamp (seconds) of a serialised message that starts with a std_msgs/Header."""
    sec, nanosec = struct.unpack_from("<iI", cdr, 4)  # after the 4-byte CDR encapsulation
    return sec + nanosec * 1e-9


def _env(domain: int) -> dict:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Camera:
    """This process in the ROS graph: publishes frames, collects what the node publishes."""

    def __init__(self, domain: int) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("bench_camera", context=self.context)
        self.image_pub = self.node.create_publisher(Image, "image", INPUT_QOS)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", INPUT_QOS)
        self.lock = threading.Lock()
        self.avatars: dict[float, tuple[float, int]] = {}  # stamp -> (arrival, cloud bytes)
        self.bones: dict[float, int] = {}  # stamp -> compact frame bytes
        self.diag_samples: list[dict] = []
        self.node.create_subscription(PointCloud2, "human_gaussians", self._on_cloud, LATCHED_QOS, raw=True)
        self.node.create_subscription(CompressedImage, "human_avatar/bones", self._on_bones, LATCHED_QOS, raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_cloud(self, data: bytes) -> None:
        now = time.time()
        with self.lock:
            self.avatars.setdefault(_stamp_of(data), (now, len(data)))

    def _on_bones(self, data: bytes) -> None:
        with self.lock:
            self.bones.setdefault(_stamp_of(data), len(data))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.endswith(": pipeline"):
                with self.lock:
                    self.diag_samples.append({kv.key: kv.value for kv in s.values})

    def publish(self, rgb: np.ndarray) -> float:
        stamp = time.time()
        header = Header(stamp=Time(sec=int(stamp), nanosec=int((stamp % 1) * 1e9)), frame_id=FRAME_ID)
        self.image_pub.publish(Image(header=header, height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=rgb.tobytes()))
        return header.stamp.sec + header.stamp.nanosec * 1e-9

    def send_info(self, K: np.ndarray) -> None:
        self.info_pub.publish(CameraInfo(header=Header(frame_id=FRAME_ID), width=WIDTH, height=HEIGHT,
                                         k=np.asarray(K, float).reshape(-1).tolist()))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live descendants."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # gone meanwhile
            pass
    return total


def run_mode(mode: str, endpoint: str, frames: list[np.ndarray], K: np.ndarray, rate_hz: float, seconds: float, tmp: Path,
             worker_pid: int) -> dict:
    domain = random.SystemRandom().randint(1, 101)
    params = {"mode": mode, "worker_endpoint": endpoint, "stages": "prior", "diagnostics_period_s": 1.0, "timeout_s": 60.0}
    args = [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    log = open(tmp / f"node_{mode}.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "hgm_node.main", "--ros-args", *args], cwd=REPO, env=_env(domain),
                            stdout=log, stderr=subprocess.STDOUT)
    cam = Camera(domain)
    try:
        deadline = time.monotonic() + 180
        while cam.image_pub.get_subscription_count() == 0 or cam.info_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline or node.poll() is not None:
                raise SystemExit(f"the {mode} node did not subscribe; see {tmp}/node_{mode}.log")
            time.sleep(0.1)
        for _ in range(3):
            cam.send_info(K)
            time.sleep(0.1)
        # Warm up: frames until the first avatar (the first keyframe in live mode).
        i, period, t_first = 0, 1.0 / rate_hz, None
        deadline = time.monotonic() + 180
        while t_first is None:
            cam.publish(frames[i % len(frames)])
            i += 1
            time.sleep(period)
            with cam.lock:
                t_first = time.time() if cam.avatars else None
            if time.monotonic() > deadline:
                raise SystemExit(f"no avatar from the {mode} node in 180 s; see {tmp}/node_{mode}.log")
        with cam.lock:
            cam.avatars.clear()
            cam.bones.clear()
            cam.diag_samples.clear()
        cpu0 = {"node": _cpu_s(node.pid), "worker": _cpu_s(worker_pid), "camera": time.process_time()}
        sent: list[float] = []
        capture_at = None
        start = time.monotonic()
        next_t = start
        while time.monotonic() - start < seconds:
            sent.append(cam.publish(frames[i % len(frames)]))
            i += 1
            if mode == "live" and capture_at is None and time.monotonic() - start > seconds / 2:
                client = cam.node.create_client(Trigger, "/hgm_node/capture")
                client.call_async(Trigger.Request())
                capture_at = time.time()
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        cpu = {k: v - cpu0[k] for k, v in {"node": _cpu_s(node.pid), "worker": _cpu_s(worker_pid), "camera": time.process_time()}.items()}
        time.sleep(2.0)  # the last frames' avatars
        with cam.lock:
            avatars = dict(cam.avatars)
            bones = dict(cam.bones)
            diags = list(cam.diag_samples)
        log.flush()
        first, last = min(sent), max(sent)
        keyframes = []  # rclpy stamps log lines with the wall clock, like this process's time.time()
        for m in re.finditer(r"\[(\d+\.\d+)\] \[hgm_node\]: keyframe \d+ \((.*?)\): .* in ([\d.]+) s",
                             (tmp / f"node_{mode}.log").read_text()):
            end, seconds = float(m[1]), float(m[3])
            keyframe = {"reason": m[2], "seconds": seconds}
            if first <= end - seconds and end <= last:
                keyframe["avatars_published_meanwhile"] = sum(end - seconds <= a <= end for a, _ in avatars.values())
            keyframes.append(keyframe)
        window = [(s, a) for s, (a, _) in avatars.items() if first <= s <= last]
        latencies = np.array([a - s for s, a in window])
        published_during = [s for s in avatars if first <= s <= last]
        profile = {}
        for key in sorted({k for d in diags for k in d if k.startswith("latency.")}):
            values = [float(d[key]) for d in diags if key in d]
            profile[key[len("latency."):]] = statistics.median(values) * 1e3 if values else None
        return {
            "frames_sent": len(sent),
            "sent_rate_hz": len(sent) / (last - first) if last > first else None,
            "avatars": len(published_during),
            "sustained_rate_hz": len(published_during) / (last - first) if last > first else None,
            "latency_ms": {"p50": float(np.percentile(latencies, 50) * 1e3), "p95": float(np.percentile(latencies, 95) * 1e3),
                           "min": float(latencies.min() * 1e3)} if len(latencies) else None,
            "bytes_per_frame": {"full_pointcloud2_cdr": int(statistics.median(b for _, b in avatars.values())) if avatars else None,
                                "compact_bones_cdr": int(statistics.median(bones.values())) if bones else None},
            "keyframes": keyframes,
            # CPU the processes used while the frames were sent (keyframes included), per avatar out.
            "cpu_ms_per_avatar": {k: 1e3 * v / max(len(published_during), 1) for k, v in cpu.items()},
            "cpu_s": cpu,
            "node_profile_ms_median": profile,
            "gaussians": int(diags[-1].get("last_gaussians", 0)) if diags else None,
        }
    finally:
        cam.close()
        _stop(node)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of frames per mode")
    parser.add_argument("--rate", type=float, default=15.0, help="camera frame rate (Hz)")
    parser.add_argument("--modes", default="live,reconstruct", help="node modes to run, in order")
    parser.add_argument("--sequence", type=Path, default=None, help="play this 640x480 `hgm datagen --sequence` folder")
    parser.add_argument("--isolate", action="store_true", help="the worker runs its compute in a child process (hgm serve --isolate)")
    add_out_argument(parser)
    args = parser.parse_args()
    if args.sequence is not None:
        frames, K = sequence_frames(args.sequence)
    else:
        frames = sample_frames(int(4 * args.rate), args.rate)  # one period of the motion
        f = 0.5 * WIDTH / np.tan(np.radians(55) / 2)
        K = np.array([[f, 0, WIDTH / 2], [0, f, HEIGHT / 2], [0, 0, 1.0]])
    with tempfile.TemporaryDirectory(prefix="hgm-bench-live-") as tmp:
        tmp = Path(tmp)
        endpoint = f"ipc://{tmp}/worker.sock"
        worker = subprocess.Popen([sys.executable, "-m", "hgm_core", "serve", "--bind", endpoint, "--checkpoint", "none",
                                   "--threads", "1", "--log-level", "WARNING", *(["--isolate"] if args.isolate else [])], cwd=REPO)
        try:
            with WorkerClient(endpoint, timeout_s=5) as client:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        health = client.health(timeout_s=2.0)
                        if health.get("ok") and health.get("compute", {}).get("ready", True):
                            break
                    except WorkerError:
                        pass
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise SystemExit("the worker did not start")
            modes = {}
            for m in args.modes.split(","):
                try:
                    modes[m] = run_mode(m, endpoint, frames, K, args.rate, args.seconds, tmp, worker.pid)
                except SystemExit as e:  # keep the other mode's figures, and say why this one has none
                    log = tmp / f"node_{m}.log"
                    modes[m] = {"error": str(e), "node_log_tail": log.read_text()[-2000:] if log.exists() else ""}
        finally:
            _stop(worker)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "worker": {"isolate": args.isolate},
        "frame": {"width": WIDTH, "height": HEIGHT, "rate_hz": args.rate, "seconds": args.seconds,
                  "source": str(args.sequence) if args.sequence else "sample photo, sliding"},
        "modes": modes,
    }
    if all(modes.get(m, {}).get("sustained_rate_hz") for m in ("live", "reconstruct")):
        report["live_vs_reconstruct"] = {
            "rate_ratio": modes["live"]["sustained_rate_hz"] / modes["reconstruct"]["sustained_rate_hz"],
            "latency_p50_ratio": modes["live"]["latency_ms"]["p50"] / modes["reconstruct"]["latency_ms"]["p50"],
        }
    write_results("live_node", report, args.out)


if __name__ == "__main__":
    main()
