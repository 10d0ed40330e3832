"""Live (track mode) building blocks: binding an avatar, posing it per frame, bytes per frame.

    .venv/bin/python bench/live.py [--gaussians 30000] [--repeats 20] [--no-sample]

Two avatars, each bound to an anny body (hgm_core.body.skinning, docs/live_stream.md):
- sample: the `prior` avatar of the bundled sample frame (perception + body fit + prior, run once);
- synthetic: `--gaussians` Gaussians scattered within 1 cm of the surface of an anny body in a
  plausible pose (tests/test_skinning.py's `plausible_params`).
Per avatar: the time to bind (median of 3), the time to pose one frame (medians over `--repeats`
frames of random plausible poses) in torch (`pose`) and on the torch-free node path
(`decode_frame` + `skin_raw`, raw rows ready for `pack_gaussians`) and the cost of packing the
posed avatar into PointCloud2 bytes, the time to turn a pose into bone transforms (anny forward
kinematics), and the bytes per frame of the full PointCloud2 avatar vs the compact stream, plus
what the compact stream latches once (canonical PointCloud2 + binding file).

Tracking (issue #12; `--track-only`, `--no-track`) on a synthetic sequence (`hgm datagen --sequence`;
by default subject 5 of the benchmark seed 9090, 60 frames at 15 Hz, 640x480, rendered once into
the cache): per-frame perception (mediapipe video mode, landmarks only, as live tracking runs it;
and still-image mode with the mask, as the full pipeline runs it) and `PoseTracker` time (wall p50/p95 and CPU), skinning + packing of a `--gaussians` avatar
bound to the keyframe, the sequential latency and rate, a real-time playback at the sequence's rate
(newest frame wins) through one thread and through a two-thread pipeline (perception | solve + skin +
pack) for the sustained rate and frame -> posed-avatar latency; accuracy against the ground-truth joints (MPJPE pelvis-aligned,
in the camera frame and Procrustes-aligned; jitter = mean joint acceleration and its error against the
truth's) for the tracker started from a cold keyframe fit of frame 0, from the true body, unfiltered,
and on still-image landmarks; beside, on the first `--baseline-frames` frames, a cold full fit per
frame and today's warm-started fits (`BodyTracker`).
Appearance drift (`--drift-only`, written to bench/results/live_drift.json): live mode's drift
check (`hgm_node.appearance`) per tracked frame of the sequence, as rendered and with the person's
colours changed, against `--drift-threshold` and `--drift-frames` (the node's parameters).
One torch thread; the CPU is shared, `load_average` records how busy it was. Writes JSON to stdout
and bench/results/live.json.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

import torch  # noqa: E402
from _results import add_out_argument, median_s, write_results  # noqa: E402

from hgm_core.body import AnnyBody, BodyParams  # noqa: E402
from hgm_core.body.skinning import Binding, bind_body, pose  # noqa: E402
from hgm_core.data.sequence import Sequence  # noqa: E402
from hgm_core.gaussians import Gaussians  # noqa: E402
from hgm_core.io.live_stream import decode_frame, encode_frame, skin_raw, write_binding  # noqa: E402
from hgm_core.io.pointcloud import POINT_STEP, pack_gaussians  # noqa: E402
from tests.test_skinning import plausible_params  # noqa: E402
from tqdm import tqdm  # noqa: E402


def sample_avatar(body: AnnyBody) -> tuple[Gaussians, BodyParams]:
    """The prior avatar of the bundled sample frame and its body fit (camera frame; the documented
    default field of view stands in for the frame's camera_info, which changes nothing timed here)."""
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest

    sample = ASSETS_DIR / "sample"
    image = np.asarray(Image.open(sample / "person.jpg").convert("RGB"))
    mask = np.asarray(Image.open(sample / "person_mask.png").convert("L"))
    rec = Reconstructor.from_config(ReconstructorConfig())
    frame, _ = rec.run_frame(ReconstructionRequest(image, None, mask, stages="prior"))
    if frame.body.body_model != body.name:
        raise SystemExit(f"the sample was fitted with {frame.body.body_model}, this bench binds to {body.name}")
    return frame.gaussians, frame.body.params


def synthetic_avatar(body: AnnyBody, n: int) -> tuple[Gaussians, BodyParams]:
    """`n` Gaussians within ~1 cm of an anny body in a plausible pose."""
    g = torch.Generator().manual_seed(0)
    params = plausible_params(body, batch=1, seed=0)
    with torch.no_grad():
        vertices = body(params).vertices[0]
    return Gaussians(
        means=vertices[torch.randint(0, len(vertices), (n,), generator=g)] + 0.01 * torch.randn(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.rand(n, 3, generator=g) * 0.01 + 0.002,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=g),
    ), params


def measure(body: AnnyBody, avatar: Gaussians, fit: BodyParams, repeats: int) -> dict:
    binding: Binding = bind_body(avatar, body, fit)
    bind_s = median_s(lambda: bind_body(avatar, body, fit), 3)
    frames = plausible_params(body, batch=repeats, seed=1)
    params = [BodyParams(fit.global_orient, fit.transl, frames.pose[i : i + 1], fit.shape) for i in range(repeats)]
    with torch.no_grad():
        transforms = [body.bone_transforms(p)[0] for p in params]
        bones_s = median_s(lambda: body.bone_transforms(params[0]), repeats)
        torch_s = _median_over(lambda T: pose(binding, T), transforms)
    arrays = binding.to_arrays(binding_id=1, body_model=body.name)
    canonical_raw = binding.canonical.to_raw().numpy()
    packets = [encode_frame(T.numpy(), binding_id=1) for T in transforms]
    node_s = _median_over(lambda data: skin_raw(canonical_raw, arrays, decode_frame(data)[0]), packets)
    posed_raw = skin_raw(canonical_raw, arrays, transforms[0].numpy())
    pack_s = median_s(lambda: pack_gaussians(posed_raw), repeats)
    binding_file = io.BytesIO()
    write_binding(binding_file, arrays)
    return {
        "gaussians": len(avatar),
        "joints": len(binding.joint_names),
        "influences_per_gaussian": binding.joint_index.shape[1],
        "bind_s": bind_s,
        "bone_transforms_ms": bones_s * 1e3,
        "pose_torch_ms": torch_s * 1e3,
        "pose_numpy_node_ms": node_s * 1e3,
        "pack_pointcloud2_ms": pack_s * 1e3,
        "bytes_per_frame": {"full_pointcloud2": len(avatar) * POINT_STEP, "compact_stream": len(packets[0])},
        "latched_once_bytes": {"canonical_pointcloud2": len(avatar) * POINT_STEP, "binding_file": binding_file.tell()},
    }


def _median_over(fn, inputs: list) -> float:
    """Median seconds of `fn(x)` over the inputs, one call each."""
    it = iter(inputs)
    return median_s(lambda: fn(next(it)), len(inputs))


# ------------------------------------------------------------------------------------------------
# Tracking (issue #12): the camera-rate PoseTracker on a synthetic sequence vs per-frame full fits


def _sequence(path: Path | None, frames: int) -> Sequence:
    """The bench's sequence: `path`, or subject 5 of the benchmark seed 9090 (trousers: legs in view),
    rendered once into the cache (about a second per frame)."""
    from hgm_core.body import AnnyBody
    from hgm_core.data.sequence import SequenceConfig, read_sequence, write_sequence
    from hgm_core.data.synth import SynthBody, subject_seed
    from hgm_core.paths import cache_dir

    if path is None:
        path = cache_dir() / "sequences" / f"bench_live_9090_5_{frames}"
        if not (path / "ground_truth.npz").exists():
            write_sequence(path, subject_seed(9090, 5), SynthBody(), AnnyBody(), SequenceConfig(frames=frames))
    return read_sequence(path)


def _accuracy(joints: np.ndarray, truth: np.ndarray, fps: float) -> dict:
    """MPJPE (pelvis-aligned, camera-frame, Procrustes) in mm and jitter of `joints [N, J, 3]`
    (NaN rows = no output) against `truth [N, J, 3]`. Jitter: mean joint acceleration
    |x[t+1] - 2 x[t] + x[t-1]| fps^2 (m/s^2) over frames whose neighbours have output, and the mean
    acceleration error against the truth's (the standard "accel error")."""
    from hgm_core.body.metrics import pa_mpjpe

    ok = ~np.isnan(joints).any((1, 2))
    rel = lambda x: x - x[:, :1]  # noqa: E731
    acc = lambda x: (x[2:] - 2 * x[1:-1] + x[:-2]) * fps**2  # noqa: E731
    ok3 = ok[2:] & ok[1:-1] & ok[:-2]
    a, a_gt = acc(joints)[ok3], acc(truth)[ok3]
    return {
        "frames_with_output": int(ok.sum()),
        "mpjpe_mm": float(np.linalg.norm(rel(joints)[ok] - rel(truth)[ok], axis=-1).mean() * 1e3),
        "abs_mpjpe_mm": float(np.linalg.norm(joints[ok] - truth[ok], axis=-1).mean() * 1e3),
        "pa_mpjpe_mm": float(np.mean([pa_mpjpe(j, t, scale=1e3) for j, t in zip(joints[ok], truth[ok])])),
        "jitter_m_s2": float(np.linalg.norm(a, axis=-1).mean()) if len(a) else math.nan,
        "truth_jitter_m_s2": float(np.linalg.norm(a_gt, axis=-1).mean()) if len(a) else math.nan,
        "accel_error_m_s2": float(np.linalg.norm(a - a_gt, axis=-1).mean()) if len(a) else math.nan,
    }


def _percentiles_ms(seconds: list[float]) -> dict:
    s = np.asarray(seconds) * 1e3
    return {"p50": float(np.median(s)), "p95": float(np.percentile(s, 95)), "mean": float(s.mean())}


def _perceive_all(seq, video: bool) -> tuple[list, list[float], float]:
    """Perception of every frame with one estimator: in video mode as the live pipeline tracks
    (`perceive_landmarks`, no segmentation), in still-image mode as the full pipeline runs it
    (`perceive`, with the mask): perceptions (None where nobody was found), wall seconds per frame,
    CPU seconds per frame (all threads)."""
    from hgm_core.perception.perceive import PoseEstimator, perceive, perceive_landmarks
    from hgm_core.types import CameraInfo, NoPersonError

    camera = CameraInfo(seq.K, *seq.size)
    look = (lambda image, e: perceive_landmarks(image, e, camera=camera)) if video else (lambda image, e: perceive(image, e, camera=camera))
    out, wall = [], []
    with PoseEstimator(video=video, segmentation=not video) as estimator:
        look(seq.image(0), estimator)  # graph warm-up, then a fresh stream
    with PoseEstimator(video=video, segmentation=not video) as estimator:
        images = [seq.image(f) for f in range(len(seq))]
        cpu0 = time.process_time()
        for image in images:
            t0 = time.perf_counter()
            try:
                out.append(look(image, estimator))
            except NoPersonError:
                out.append(None)
            wall.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / len(images)
    return out, wall, cpu


def _track_all(body, keyframe, perceptions: list, seq, config=None) -> tuple[np.ndarray, list, dict]:
    """Run a PoseTracker over the perceptions: joints `[N, 20, 3]` (NaN when lost), results, CPU s/frame."""
    from hgm_core.body.pose_tracker import PoseTracker

    tracker = PoseTracker(body, config)
    tracker.start(keyframe)
    results = []
    cpu0 = time.process_time()
    for f, p in enumerate(perceptions):
        results.append(tracker.track(p, float(seq.truth["stamps"][f])))
    cpu = (time.process_time() - cpu0) / len(perceptions)
    joints = np.stack([r.joints.numpy() if r.joints is not None else np.full((20, 3), np.nan) for r in results])
    return joints, results, cpu


def _skinner(body, fit_params: BodyParams, gaussians: int):
    """A numpy skinning + PointCloud2 packing step for bone transforms, on a synthetic avatar bound to the keyframe body."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        vertices = body(fit_params).vertices[0]
    avatar = Gaussians(
        means=vertices[torch.randint(0, len(vertices), (gaussians,), generator=g)] + 0.01 * torch.randn(gaussians, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(gaussians, 4, generator=g), dim=-1),
        scales=torch.rand(gaussians, 3, generator=g) * 0.01 + 0.002,
        opacities=torch.rand(gaussians, generator=g) * 0.9 + 0.05,
        colors=torch.rand(gaussians, 3, generator=g),
    )
    binding = bind_body(avatar, body, fit_params)
    arrays = binding.to_arrays(binding_id=1, body_model=body.name)
    canonical = binding.canonical.to_raw().numpy()
    return lambda T: pack_gaussians(skin_raw(canonical, arrays, T.numpy()))


def _live_playback(seq, body, keyframe, skin, fps: float, pipelined: bool) -> dict:
    """Frames played at `fps` into the frame path, which takes the newest frame (older ones are
    dropped, as the node's depth-1 QoS does): with `pipelined`, a perception thread (mediapipe video
    mode) and a solve + skin + pack thread, each taking the newest item from the one before;
    otherwise one thread doing all of it per frame. Latency: frame stamp -> posed, packed avatar."""
    import threading

    from hgm_core.body.pose_tracker import PoseTracker
    from hgm_core.perception.perceive import PoseEstimator, perceive
    from hgm_core.types import CameraInfo, NoPersonError

    camera = CameraInfo(seq.K, *seq.size)
    images = [seq.image(f) for f in range(len(seq))]
    tracker = PoseTracker(body)
    tracker.start(keyframe)

    class Slot:  # newest wins
        def __init__(self) -> None:
            self.item, self.cond, self.dropped = None, threading.Condition(), 0

        def put(self, item) -> None:
            with self.cond:
                self.dropped += self.item is not None
                self.item = item
                self.cond.notify()

        def take(self):
            with self.cond:
                while self.item is None:
                    self.cond.wait()
                item, self.item = self.item, None
                return item

    frames, perceived = Slot(), Slot()
    latencies, done_at, states = [], [], []
    estimator = PoseEstimator(video=True)
    perceive(images[0], estimator, camera=camera)

    def solve(f: int, stamp: float, p) -> None:
        r = tracker.track(p, f / fps)
        if r.bone_transforms is not None:
            skin(r.bone_transforms)
        states.append(r.state)
        done_at.append(time.perf_counter())
        latencies.append(done_at[-1] - stamp)

    def perception_stage() -> None:
        while (item := frames.take()) != "end":
            f, stamp = item
            try:
                p = perceive(images[f], estimator, camera=camera)
            except NoPersonError:
                p = None
            if pipelined:
                perceived.put((f, stamp, p))
            else:
                solve(f, stamp, p)
        perceived.put("end")

    def solve_stage() -> None:
        while (item := perceived.take()) != "end":
            solve(*item)

    threads = [threading.Thread(target=perception_stage)] + ([threading.Thread(target=solve_stage)] if pipelined else [])
    for t in threads:
        t.start()
    start = time.perf_counter()
    for f in range(len(images)):
        time.sleep(max(0.0, start + f / fps - time.perf_counter()))
        frames.put((f, time.perf_counter()))
    frames.put("end")
    for t in threads:
        t.join()
    estimator.close()
    span = done_at[-1] - start if done_at else math.nan
    return {
        "played_fps": fps,
        "frames_played": len(images),
        "avatars_out": len(latencies),
        "dropped_before_perception": frames.dropped,
        "dropped_before_solve": perceived.dropped,
        "rate_hz": len(latencies) / span,
        "latency_ms": _percentiles_ms(latencies),
        "lost": states.count("lost"),
    }


def measure_tracking(body: AnnyBody, seq, baseline_frames: int, gaussians: int) -> dict:
    """Rate, latency and accuracy of the PoseTracker on `seq`, beside per-frame cold and warm full fits."""
    from hgm_core.body.fit import FitConfig, fit_body
    from hgm_core.body.pose_tracker import PoseTrackConfig
    from hgm_core.body.tracker import BodyTracker

    truth = seq.truth["joints"]
    n_base = min(baseline_frames, len(seq))
    video, video_wall, video_cpu = _perceive_all(seq, video=True)
    still, still_wall, still_cpu = _perceive_all(seq, video=False)
    if still[0] is None:
        raise SystemExit("no person in the sequence's first frame")

    # The keyframe: a cold full fit of frame 0 (what the live worker binds the avatar to).
    t0 = time.perf_counter()
    keyframe = fit_body(still[0], None, body)
    keyframe_s = time.perf_counter() - t0
    skin = _skinner(body, keyframe.params, gaussians)

    # Sequential pass over every frame: stage times and accuracy.
    joints, results, track_cpu = _track_all(body, keyframe, video, seq)
    skin_wall = []
    cpu0 = time.process_time()
    for r in results:
        if r.bone_transforms is not None:
            t1 = time.perf_counter()
            skin(r.bone_transforms)
            skin_wall.append(time.perf_counter() - t1)
    skin_cpu = (time.process_time() - cpu0) / max(len(skin_wall), 1)
    tracked = [r for r in results if r.state == "tracking"]
    track_wall = [r.timings["total"] for r in results]
    latency = [p + t + s for p, t, s in zip(video_wall, track_wall, skin_wall or [0.0] * len(track_wall))]
    variants = {
        "keyframe_fit": _accuracy(joints, truth, seq.fps),
        "keyframe_ground_truth": _accuracy(_track_all(body, seq.params(0), video, seq)[0], truth, seq.fps),
        "keyframe_fit_unfiltered": _accuracy(_track_all(body, keyframe, video, seq, PoseTrackConfig(min_cutoff_hz=0))[0], truth, seq.fps),
        "keyframe_fit_still_image_landmarks": _accuracy(_track_all(body, keyframe, still, seq)[0], truth, seq.fps),
    }

    # Baselines on the first `n_base` frames: a cold full fit per frame, and today's warm-started fits (BodyTracker).
    cold, cold_s, warm, warm_s = [], [], [], []
    policy = BodyTracker()
    for f in tqdm(range(n_base), desc="baseline fits", unit="frame"):
        p = still[f]
        if p is None:
            cold.append(np.full((20, 3), np.nan))
            warm.append(np.full((20, 3), np.nan))
            continue
        t1 = time.perf_counter()
        cold.append(fit_body(p, None, body).joints)
        cold_s.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        fit = fit_body(p, None, body, init=policy.warm_start("bench", p, body, FitConfig()))
        warm_s.append(time.perf_counter() - t1)
        policy.remember("bench", fit)
        warm.append(fit.joints)
    head = slice(0, n_base)
    return {
        "sequence": {"path": str(seq.root), "frames": len(seq), "fps": seq.fps, "size": list(seq.size)},
        "perception_ms": {
            "video_mode": {**_percentiles_ms(video_wall), "cpu_mean": video_cpu * 1e3, "no_person": sum(p is None for p in video)},
            "still_image_mode": {**_percentiles_ms(still_wall), "cpu_mean": still_cpu * 1e3, "no_person": sum(p is None for p in still)},
        },
        "keyframe_fit_s": keyframe_s,
        "tracker": {
            "track_ms": _percentiles_ms(track_wall),
            "track_cpu_ms_mean": track_cpu * 1e3,
            "track_stage_ms_p50": {k: float(np.median([r.timings[k] for r in tracked]) * 1e3) for k in ("init", "solve", "filter", "output")},
            "skin_and_pack_ms": _percentiles_ms(skin_wall) if skin_wall else None,
            "avatar_gaussians": gaussians,
            "sequential_latency_ms": _percentiles_ms(latency),
            "sequential_rate_hz": 1.0 / float(np.mean(latency)),
            # CPU time is what a frame costs whatever else runs on the machine: the rate one idle
            # core would sustain doing perception, tracking and skinning in turn.
            "cpu_ms_per_frame": {"perceive_video": video_cpu * 1e3, "track": track_cpu * 1e3, "skin_and_pack": skin_cpu * 1e3},
            "one_idle_core_rate_hz": 1.0 / (video_cpu + track_cpu + skin_cpu),
            "lost_frames": sum(r.state == "lost" for r in results),
            "reinitialised_frames": sum(r.reinitialised for r in results),
        },
        "live_playback": {"one_thread": _live_playback(seq, body, keyframe, skin, seq.fps, pipelined=False),
                          "two_threads": _live_playback(seq, body, keyframe, skin, seq.fps, pipelined=True)},
        "accuracy": variants,
        "baselines": {
            "frames": n_base,
            "tracker_on_these_frames": _accuracy(joints[head], truth[head], seq.fps),
            "cold_fit_per_frame": {**_accuracy(np.stack(cold), truth[head], seq.fps), "fit_ms": _percentiles_ms(cold_s)},
            "warm_fit_per_frame": {**_accuracy(np.stack(warm), truth[head], seq.fps), "fit_ms": _percentiles_ms(warm_s)},
        },
    }


def measure_drift(seq, threshold: float, frames_in_a_row: int) -> dict:
    """The node's appearance drift check (`hgm_node.appearance`, live mode's `drift_threshold`) on
    the sequence as the live pipeline tracks it (keyframe: frame 0 at the prior level, then one
    track job per frame, skinned as the node skins): the drift per frame (appearance error minus the
    keyframe's own) on the frames as rendered, and on the same frames with the person's colours
    changed inside the ground-truth mask (red and blue swapped; inverted); how many frames of
    each are over `threshold`, and whether `frames_in_a_row` over it would have asked for a keyframe."""
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.live import LivePipeline
    from hgm_core.types import CameraInfo, ReconstructionRequest
    from hgm_node.appearance import appearance_error

    width, height = seq.size
    camera = CameraInfo(np.asarray(seq.K), width, height)
    live = LivePipeline(Reconstructor.from_config(ReconstructorConfig().override({"coarse.checkpoint": None})))
    first = seq.image(0)
    recon = live.run(ReconstructionRequest(first, camera=camera, stream="drift", bind=True))
    key = recon.keyframe
    base = appearance_error(recon.gaussians.to_raw().numpy(), first, seq.K)
    out = {"threshold": threshold, "frames_in_a_row": frames_in_a_row, "keyframe_error": base}
    recolours = {"as_rendered": None, "red_blue_swapped": lambda rgb: rgb[:, ::-1], "inverted": lambda rgb: 255 - rgb}
    for name, recolour in recolours.items():
        live.run(ReconstructionRequest(first, camera=camera, stream="drift", bind=True))  # the tracker restarts from frame 0
        drifts, times = [], []
        for f in tqdm(range(1, len(seq)), desc=f"drift {name}", leave=False):
            image = seq.image(f)
            if recolour is not None:  # the person's clothes and skin change colour
                mask = seq.mask(f)
                image = image.copy()
                image[mask] = recolour(image[mask])
            pose = live.track(ReconstructionRequest(image, camera=camera, stream="drift", stamp=f / seq.fps))
            if pose.state != "tracking":
                drifts.append(None)
                continue
            posed = skin_raw(key.canonical_raw, key.binding, pose.bone_transforms)
            t0 = time.perf_counter()
            error = appearance_error(posed, image, seq.K)
            times.append(time.perf_counter() - t0)
            drifts.append(None if error is None or base is None else error - base)
        values = np.array([d for d in drifts if d is not None])
        run = longest = 0
        for d in drifts:
            run = run + 1 if d is not None and d > threshold else 0
            longest = max(longest, run)
        out[name] = {"frames": len(drifts), "checked": len(values),
                     "drift_p5_p50_p95": np.percentile(values, [5, 50, 95]).round(4).tolist() if len(values) else None,
                     "over_threshold": int((values > threshold).sum()), "longest_run_over": longest,
                     "asks_for_keyframe": longest >= frames_in_a_row, "check_ms_p50": 1e3 * float(np.median(times)) if times else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaussians", type=int, default=30000, help="synthetic avatar size")
    parser.add_argument("--repeats", type=int, default=20, help="frames timed per path")
    parser.add_argument("--no-sample", action="store_true", help="skip the sample frame's prior avatar")
    parser.add_argument("--no-track", action="store_true", help="skip the tracking measurements")
    parser.add_argument("--track-only", action="store_true", help="only the tracking measurements")
    parser.add_argument("--sequence", type=Path, default=None,
                        help="a sequence folder (hgm datagen --sequence); default: subject 5 of seed 9090, rendered once into the cache")
    parser.add_argument("--frames", type=int, default=60, help="frames of the default sequence (default: 60)")
    parser.add_argument("--drift-only", action="store_true", help="only the appearance drift check")
    parser.add_argument("--drift-threshold", type=float, default=0.06, help="the drift check's threshold (hgm_node's drift_threshold)")
    parser.add_argument("--drift-frames", type=int, default=5, help="drifted frames in a row that ask for a keyframe")
    parser.add_argument("--baseline-frames", type=int, default=20,
                        help="first frames fitted by the per-frame cold and warm full fits (default: 20; ~1 s each)")
    add_out_argument(parser)
    args = parser.parse_args()
    body = AnnyBody()
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": os.getloadavg()},
        "body_model": body.name,
    }
    if args.drift_only:
        report["drift"] = measure_drift(_sequence(args.sequence, args.frames), args.drift_threshold, args.drift_frames)
        report["machine"]["load_average_end"] = os.getloadavg()
        write_results("live_drift", report, args.out)
        return
    if not args.track_only:
        avatars = {"synthetic": synthetic_avatar(body, args.gaussians)}
        if not args.no_sample:
            avatars["sample_prior"] = sample_avatar(body)
        report["avatars"] = {name: measure(body, g, p, args.repeats) for name, (g, p) in avatars.items()}
    if not args.no_track:
        report["tracking"] = measure_tracking(body, _sequence(args.sequence, args.frames), args.baseline_frames, args.gaussians)
    report["machine"]["load_average_end"] = os.getloadavg()
    write_results("live", report, args.out)


if __name__ == "__main__":
    main()
