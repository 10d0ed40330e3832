"""A small real job handler for transport tests, and ways to run it behind a real `Worker`.

`PixelSplatHandler` stands in for the HGM pipeline where the tests are about the transport (worker,
broker, client, the node's worker supervision); `BlobLiveHandler` stands in for the live pipeline
(keyframes and track jobs) where the tests are about the node's live mode. `running_worker` serves it in a thread of the test
process; `WORKER_COMMAND` (`python -m tests.handlers --bind ENDPOINT | --connect ENDPOINT [--sleep S]`)
serves it in a process of its own, for tests where a worker must die. Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from hgm_core.gaussians import Gaussians
from hgm_core.io.live_stream import BindingArrays
from hgm_core.types import Keyframe, Mesh, Reconstruction, ReconstructionRequest, Skeleton, TrackedPose
from hgm_core.serve.worker import Worker, WorkerConfig

WORKER_COMMAND = [sys.executable, "-m", "tests.handlers"]
"""A test worker process serving `PixelSplatHandler`; add `--bind`/`--connect` and optional flags."""


class PixelSplatHandler:
    """A real but trivial handler: one Gaussian per (masked) pixel, back-projected to 2 m depth
    with the request's intrinsics, coloured by the pixel; a two-joint skeleton and a one-quad mesh.
    It can be told to sleep (a long job), to raise (a failing pipeline), or to die of SIGSEGV on
    requests of one stream (a native crash in the compute)."""

    def __init__(self, sleep_s: float = 0.0, error: Exception | None = None, crash_stream: str | None = None) -> None:
        self.sleep_s, self.error, self.crash_stream = sleep_s, error, crash_stream
        self.calls = 0

    def __call__(self, request: ReconstructionRequest) -> Reconstruction:
        self.calls += 1
        if self.crash_stream is not None and request.stream == self.crash_stream:
            os.kill(os.getpid(), signal.SIGSEGV)
        t0 = time.perf_counter()
        time.sleep(self.sleep_s)
        if self.error is not None:
            raise self.error
        h, w = request.image.shape[:2]
        K = request.camera.K if request.camera is not None else np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
        v, u = np.mgrid[0:h, 0:w]
        keep = (request.mask > 0) if request.mask is not None else np.ones((h, w), bool)
        z = 2.0
        xyz = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, np.full((h, w), z)], -1)[keep]
        n = len(xyz)
        gaussians = Gaussians(
            means=torch.from_numpy(xyz).float(),
            quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(),
            scales=torch.full((n, 3), 0.01),
            opacities=torch.full((n,), 0.9),
            colors=torch.from_numpy(request.image[keep].astype(np.float32) / 255.0),
        )
        skeleton = Skeleton(joints=np.array([[0, 0, 2], [0, -0.5, 2]], np.float32), names=("pelvis", "head"), bones=((0, 1),))
        quad = Mesh(
            vertices=np.array([[0, 0, 2], [1, 0, 2], [1, 1, 2], [0, 1, 2]], np.float32),
            faces=np.array([[0, 1, 2], [0, 2, 3]], np.int64),
            colors=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32),
        )
        return Reconstruction(gaussians, skeleton=skeleton, mesh=quad, timings={"splat": time.perf_counter() - t0}, info={"pixels": n})


class PidFileHandler(PixelSplatHandler):
    """`PixelSplatHandler` that writes its process id to `pid_file` when a job starts, so that a
    test or benchmark can kill exactly the process running a job (a worker, a Ray replica)."""

    def __init__(self, pid_file: str, sleep_s: float = 0.0) -> None:
        super().__init__(sleep_s=sleep_s)
        self.pid_file = Path(pid_file)

    def __call__(self, request: ReconstructionRequest) -> Reconstruction:
        self.pid_file.write_text(str(os.getpid()))
        return super().__call__(request)


class BlobLiveHandler:
    """A real but trivial live pipeline: the "person" is the bright pixels (any channel > 127) of a
    dark image, splatted at 2 m depth like `PixelSplatHandler`. Its body has two joints, "root" at
    the blob's centroid and "head" 0.5 m above it, both only translated; every Gaussian is bound to
    "root". A keyframe (`bind`) returns the avatar centred on the root as the canonical avatar; a
    track job returns the transforms that move the root to the new frame's centroid, or "lost"
    when there are no bright pixels or no keyframe of the stream. Keyframes may be told to sleep.
    """

    JOINTS = ("root", "head")
    HEAD = np.array([0.0, -0.5, 0.0], np.float32)

    def __init__(self, keyframe_sleep_s: float = 0.0) -> None:
        self.keyframe_sleep_s = keyframe_sleep_s
        self.keyframes: dict[str, int] = {}  # stream -> binding id
        self._next_id = random.Random().randrange(1, 2**31)  # a new worker does not repeat its predecessor's ids

    @staticmethod
    def blob(request: ReconstructionRequest) -> np.ndarray:
        """`[P, 3]` float32 camera-frame points of the bright pixels at 2 m depth."""
        h, w = request.image.shape[:2]
        K = request.camera.K if request.camera is not None else np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
        v, u = np.nonzero(request.image.max(-1) > 127)
        z = 2.0
        return np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, np.full(len(u), z)], -1).astype(np.float32)

    def transforms(self, root: np.ndarray) -> np.ndarray:
        """`[2, 4, 4]` world transforms of root and head for a root at `root`."""
        T = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
        T[0, :3, 3], T[1, :3, 3] = root, root + self.HEAD
        return T

    def __call__(self, request: ReconstructionRequest) -> Reconstruction:
        time.sleep(self.keyframe_sleep_s if request.bind else 0.0)
        xyz = self.blob(request)
        if not len(xyz):
            from hgm_core.types import NoPersonError

            raise NoPersonError("no bright pixels")
        v, u = np.nonzero(request.image.max(-1) > 127)
        n = len(xyz)
        gaussians = Gaussians(
            means=torch.from_numpy(xyz),
            quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(),
            scales=torch.full((n, 3), 0.01),
            opacities=torch.full((n,), 0.9),
            colors=torch.from_numpy(request.image[v, u].astype(np.float32) / 255.0),
        )
        root = xyz.mean(0)
        recon = Reconstruction(gaussians, skeleton=Skeleton(np.stack([root, root + self.HEAD]), self.JOINTS, ((0, 1),)))
        if request.bind:
            self._next_id += 1
            self.keyframes[request.stream] = self._next_id
            canonical = gaussians.to_raw().numpy().copy()
            canonical[:, :3] -= root
            binding = BindingArrays(
                joint_index=np.tile(np.array([0, 1], np.uint16), (n, 1)),
                joint_weight=np.tile(np.array([1.0, 0.0], np.float32), (n, 1)),
                rest_transforms=self.transforms(np.zeros(3, np.float32)),
                joint_names=self.JOINTS, joint_parents=(-1, 0), binding_id=self._next_id, body_model="blob",
            )
            recon.keyframe = Keyframe(canonical, binding, self.transforms(root))
        return recon

    def track(self, request: ReconstructionRequest) -> TrackedPose:
        binding_id = self.keyframes.get(request.stream)
        if binding_id is None:
            return TrackedPose("lost", reason=f"no keyframe of stream {request.stream!r} on this worker")
        xyz = self.blob(request)
        if not len(xyz):
            return TrackedPose("lost", binding_id, reason="no bright pixels")
        root = xyz.mean(0)
        return TrackedPose("tracking", binding_id, self.transforms(root),
                           Skeleton(np.stack([root, root + self.HEAD]), self.JOINTS, ((0, 1),)))


def test_image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A random `[h, w, 3]` uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


test_image.__test__ = False  # a helper, not a test


@contextmanager
def running_worker(handler, config: WorkerConfig | None = None, *, bind: str = "tcp://127.0.0.1:*", connect: str | None = None, **kw):
    """A Worker serving `handler` in a background thread of this process."""
    worker = Worker(handler, config, **kw)
    target = {"connect": connect} if connect else {"bind": bind}
    thread = threading.Thread(target=worker.serve, kwargs=target, daemon=True)
    thread.start()
    assert worker.ready.wait(10), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie still answers kill(0); it is dead for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def main(argv: list[str] | None = None) -> None:
    """The `WORKER_COMMAND` process: serve `PixelSplatHandler` until SIGINT/SIGTERM (or SIGKILL)."""
    parser = argparse.ArgumentParser(prog="python -m tests.handlers")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bind", help="serve clients directly on this endpoint")
    where.add_argument("--connect", help="connect to a broker's backend endpoint")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each job sleeps (a long job)")
    parser.add_argument("--heartbeat", type=float, default=None, help="heartbeat interval in seconds (default: WorkerConfig's)")
    parser.add_argument("--crash-stream", default=None, help="die of SIGSEGV on requests of this stream")
    parser.add_argument("--pid-file", default=None, help="write this process's id to this file when a job starts")
    parser.add_argument("--live", action="store_true", help="serve `BlobLiveHandler` (keyframes and track jobs) instead")
    parser.add_argument("--keyframe-sleep", type=float, default=0.0, help="(--live) seconds each keyframe sleeps")
    args = parser.parse_args(argv)
    config = WorkerConfig(heartbeat_interval_s=args.heartbeat, heartbeat_liveness=5) if args.heartbeat else None
    if args.live:
        live = BlobLiveHandler(keyframe_sleep_s=args.keyframe_sleep)
        worker = Worker(live, config, track=live.track)
    elif args.pid_file:
        worker = Worker(PidFileHandler(args.pid_file, sleep_s=args.sleep), config)
    else:
        worker = Worker(PixelSplatHandler(sleep_s=args.sleep, crash_stream=args.crash_stream), config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    worker.serve(bind=args.bind, connect=args.connect)


if __name__ == "__main__":
    main()
