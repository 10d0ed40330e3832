"""The worker's live jobs: keyframes (`bind`) and `track`, over the real wire (hgm_core/serve/protocol.py).

Transport tests serve `BlobLiveHandler` (tests/handlers.py); the slow test at the end serves the
real `LivePipeline` on the bundled sample photo.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hgm_core.io.live_stream import skin_raw
from hgm_core.serve.client import WorkerClient, WorkerError
from hgm_core.serve.protocol import decode, encode, new_id
from hgm_core.serve.schema import decode_result, decode_track_result, encode_request
from tests.handlers import BlobLiveHandler, PixelSplatHandler, running_worker

K = np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]])


def blob_image(x: int, y: int = 20, size: int = 8) -> np.ndarray:
    """A dark 48 x 64 image with a bright square whose top-left corner is at (x, y)."""
    image = np.full((48, 64, 3), 10, np.uint8)
    image[y : y + size, x : x + size] = (200, 150, 100)
    return image


@pytest.fixture()
def live():
    handler = BlobLiveHandler()
    with running_worker(handler, track=handler.track) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        yield handler, client


def test_keyframe_then_tracked_frames_skin_to_the_moved_avatar(live):
    handler, client = live
    result = client.reconstruct(blob_image(10), K=K, stream="cam", bind=True)
    key = result.keyframe
    assert key is not None and key.binding.binding_id == handler.keyframes["cam"]
    assert key.binding.joint_names == ("root", "head") and key.binding.joint_parents == (-1, 0)
    # The keyframe's own pose gives the avatar back.
    np.testing.assert_allclose(skin_raw(key.canonical_raw, key.binding, key.bone_transforms), result.gaussians, atol=1e-5)

    pose = client.track(blob_image(30), K=K, stream="cam")
    assert pose.state == "tracking" and pose.binding_id == key.binding.binding_id and pose.reason == ""
    assert pose.bone_transforms.shape == (2, 4, 4) and pose.skeleton.names == ("root", "head")
    posed = skin_raw(key.canonical_raw, key.binding, pose.bone_transforms)
    moved = client.reconstruct(blob_image(30), K=K)  # the avatar reconstructed where the blob is now
    np.testing.assert_allclose(posed[:, :3], moved.gaussians[:, :3], atol=1e-5)
    assert posed[:, 0].mean() - result.gaussians[:, 0].mean() == pytest.approx(20 / 60 * 2.0, abs=1e-4)  # 20 px at 2 m
    assert {"worker_total", "roundtrip", "queue"} <= set(pose.timings)


def test_lost_without_a_keyframe_or_a_person(live):
    handler, client = live
    pose = client.track(blob_image(10), stream="nobody-keyframed-this")
    assert (pose.state, pose.binding_id, pose.bone_transforms, pose.skeleton) == ("lost", 0, None, None)
    assert "no keyframe" in pose.reason
    client.reconstruct(blob_image(10), stream="cam", bind=True)
    pose = client.track(np.full((48, 64, 3), 10, np.uint8), stream="cam")
    assert pose.state == "lost" and pose.binding_id == handler.keyframes["cam"] and pose.reason == "no bright pixels"


def test_a_new_keyframe_changes_the_binding_id(live):
    handler, client = live
    first = client.reconstruct(blob_image(10), stream="cam", bind=True).keyframe.binding.binding_id
    second = client.reconstruct(blob_image(12), stream="cam", bind=True).keyframe.binding.binding_id
    assert first != second and client.track(blob_image(14), stream="cam").binding_id == second


def test_track_jobs_are_served_while_a_keyframe_runs():
    handler = BlobLiveHandler(keyframe_sleep_s=3.0)
    with running_worker(handler, track=handler.track) as worker, WorkerClient(worker.endpoint, timeout_s=20) as client:
        client.reconstruct(blob_image(10), stream="cam", bind=True)
        slow = threading.Thread(target=client.reconstruct, args=(blob_image(12),), kwargs={"stream": "cam", "bind": True})
        slow.start()
        while not client.health()["busy"]:
            pass
        poses = [client.track(blob_image(10 + i), stream="cam") for i in range(3)]
        assert slow.is_alive(), "the track jobs waited for the keyframe"
        slow.join()
    assert [p.state for p in poses] == ["tracking"] * 3


def test_refusals():
    with running_worker(PixelSplatHandler()) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        assert client.health()["track"] is False
        with pytest.raises(WorkerError) as e:
            client.track(blob_image(10), stream="cam")
        assert e.value.kind == "stage_unavailable"
        with pytest.raises(WorkerError) as e:  # refused by the client's own checks, as the worker would
            client.track(blob_image(10), stream="")
        assert e.value.kind == "bad_request"
        # The worker refuses a track message without a stream, and a non-boolean bind.
        for header in ({"stream": ""}, {}):
            rid = new_id()
            with pytest.raises(WorkerError) as e:
                client._call(rid, encode("track", rid, {"image": blob_image(10)}, **header), 10, 0, None)
            assert e.value.kind == "bad_request" and "needs a stream" in str(e.value)
        frames = encode_request("r1", blob_image(10))
        frames[0] = frames[0].replace(b'"kind":"reconstruct"', b'"kind":"reconstruct","bind":1')
        with pytest.raises(WorkerError) as e:
            client._call("r1", frames, 10, 0, None)
        assert e.value.kind == "bad_request" and "bind" in str(e.value)


def test_malformed_live_results_are_refused():
    from hgm_core.serve.protocol import ProtocolError

    bad_track = decode(encode("result", "r", {"bone_transforms": np.zeros((2, 3, 4), np.float32)},
                              track={"state": "tracking", "binding_id": 1, "reason": ""}), max_message_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="bone_transforms"):
        decode_track_result(bad_track)
    with pytest.raises(ProtocolError, match="state"):
        decode_track_result(decode(encode("result", "r", track={"state": "dancing"}), max_message_bytes=1 << 20))
    with pytest.raises(ProtocolError, match="keyframe"):  # a binding without its arrays
        decode_result(decode(encode("result", "r", {"gaussians": np.zeros((3, 14), np.float32)},
                                    binding={"binding_id": 1, "body_model": "x", "joint_names": ["a"], "joint_parents": [-1]}),
                             max_message_bytes=1 << 20))


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["pose", "warm_fit"])
def test_real_live_pipeline_tracks_the_sample_photo(tracker):
    """Keyframe on the sample photo (prior level), then track it shifted by 12 px: the root bone
    follows the shift; a blank frame is lost."""
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.live import LiveConfig, LivePipeline
    from hgm_core.types import ReconstructionRequest

    photo = np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB"))
    h, w = photo.shape[:2]
    canvas = np.full((h, w + 40, 3), 255, np.uint8)

    def shifted(dx: int) -> np.ndarray:
        frame = canvas.copy()
        frame[:, dx : dx + w] = photo
        return frame

    live = LivePipeline(Reconstructor.from_config(ReconstructorConfig().override({"coarse.checkpoint": None})),
                        LiveConfig(tracker=tracker))
    recon = live.run(ReconstructionRequest(shifted(10), stream="cam", bind=True))
    key = recon.keyframe
    np.testing.assert_allclose(skin_raw(key.canonical_raw, key.binding, key.bone_transforms)[:, :3],
                               recon.gaussians.to_raw().numpy()[:, :3], atol=2e-4)
    pose = live.track(ReconstructionRequest(shifted(22), stream="cam"))
    assert pose.state == "tracking", pose.reason
    assert pose.binding_id == key.binding.binding_id
    # 12 px to the right: the pelvis moves by 12 px * depth / f along x, in the camera frame.
    root0, root1 = key.bone_transforms[0, :3, 3], pose.bone_transforms[0, :3, 3]
    f = 0.5 * max(h, w + 40) / np.tan(np.radians(55) / 2)
    assert root1[0] - root0[0] == pytest.approx(12 * root0[2] / f, rel=0.5)
    assert pose.skeleton is not None and len(pose.skeleton.joints) == len(pose.skeleton.names)
    lost = live.track(ReconstructionRequest(canvas, stream="cam"))
    assert lost.state == "lost" and lost.reason and lost.bone_transforms is None


@pytest.mark.slow
def test_real_live_pipeline_finds_a_person_who_jumped_in_the_same_frame():
    """The person jumps across the image between two frames (a cut, a looped recording, dropped
    frames): the video-mode estimator misses them where they were, runs again on the same frame, and
    tracking goes on (re-initialised from the landmarks) instead of a "lost" frame and a keyframe."""
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.live import LivePipeline
    from hgm_core.types import ReconstructionRequest

    photo = np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB").resize((256, 256)))
    h, w = photo.shape[:2]

    def at(x: int) -> np.ndarray:
        frame = np.full((h, 3 * w, 3), 255, np.uint8)
        frame[:, x : x + w] = photo
        return frame

    live = LivePipeline(Reconstructor.from_config(ReconstructorConfig().override({"coarse.checkpoint": None})))
    live.run(ReconstructionRequest(at(0), stream="cam", bind=True))
    before = live.track(ReconstructionRequest(at(4), stream="cam", stamp=0.0))
    assert before.state == "tracking"
    jumped = live.track(ReconstructionRequest(at(w), stream="cam", stamp=1 / 15))
    assert jumped.state == "tracking", jumped.reason
    assert jumped.info["reinitialised"] and jumped.skeleton.joints[0, 0] - before.skeleton.joints[0, 0] > 0.3  # metres
    assert live.track(ReconstructionRequest(at(w + 4), stream="cam", stamp=2 / 15)).state == "tracking"
    # Nobody there: lost (after one look), and the person's return is found.
    blank = live.track(ReconstructionRequest(np.full((h, 3 * w, 3), 255, np.uint8), stream="cam", stamp=3 / 15))
    assert blank.state == "lost" and "no person" in blank.reason
    assert live.track(ReconstructionRequest(at(2 * w - 20), stream="cam", stamp=4 / 15)).state == "tracking"


def test_track_stamp_round_trip_and_refusals():
    """The frame's stamp reaches the pipeline's request; anything but a finite number is refused."""
    from hgm_core.serve.protocol import ProtocolError
    from hgm_core.serve.schema import decode_request, encode_track_request

    def decoded(frames):
        return decode_request(decode(frames, max_message_bytes=10**7), max_pixels=10**6)

    assert decoded(encode_track_request("t1", blob_image(10), stream="cam", stamp=1712.25)).stamp == 1712.25
    assert decoded(encode_track_request("t2", blob_image(10), stream="cam")).stamp is None
    for bad in (b"true", b'"12.5"', b"{}", b"[1]"):
        frames = encode_track_request("t3", blob_image(10), stream="cam", stamp=7.0)
        frames[0] = frames[0].replace(b'"stamp":7.0', b'"stamp":' + bad)
        with pytest.raises(ProtocolError) as e:
            decoded(frames)
        assert e.value.kind == "bad_request" and "stamp" in str(e.value)
    with pytest.raises(ProtocolError):
        encode_track_request("t4", blob_image(10), stream="cam", stamp=float("nan"))


def test_broker_keeps_a_stream_on_the_worker_holding_its_tracker(tmp_path):
    """Two live workers behind a broker: a stream's track jobs reach the worker that made its
    keyframe (the other would answer "lost"), also while a new keyframe runs; the new keyframe's
    result moves the stream to its worker; when that worker stops, the stream's track job is "lost"
    (no keyframe on the survivor; or tracked from an older one) and the next keyframe ties it to the survivor."""
    from hgm_core.serve.broker import Broker, BrokerConfig
    from hgm_core.serve.worker import WorkerConfig

    broker = Broker(BrokerConfig(heartbeat_interval_s=0.2, heartbeat_liveness=5))
    thread = threading.Thread(target=broker.serve, args=(f"ipc://{tmp_path}/front.sock", f"ipc://{tmp_path}/back.sock"), daemon=True)
    thread.start()
    assert broker.ready.wait(10)
    handlers = [BlobLiveHandler(keyframe_sleep_s=1.0), BlobLiveHandler(keyframe_sleep_s=1.0)]
    config = WorkerConfig(heartbeat_interval_s=0.2)
    try:
        with running_worker(handlers[0], config, connect=broker.backend_endpoint, track=handlers[0].track) as w0, \
                running_worker(handlers[1], config, connect=broker.backend_endpoint, track=handlers[1].track) as w1, \
                WorkerClient(broker.frontend_endpoint, timeout_s=10) as client:
            while client.health()["workers"] < 2:
                time.sleep(0.05)
            first = client.reconstruct(blob_image(10), K=K, stream="cam", bind=True).keyframe.binding.binding_id
            holder = next(i for i, h in enumerate(handlers) if h.keyframes.get("cam") == first)
            poses = [client.track(blob_image(10 + i), K=K, stream="cam") for i in range(8)]
            assert [(p.state, p.binding_id) for p in poses] == [("tracking", first)] * 8

            # A new keyframe runs (1 s, on whichever worker is idle): tracking goes on meanwhile.
            done = threading.Event()
            results = {}

            def keyframe():
                results["key"] = client.reconstruct(blob_image(20), K=K, stream="cam", bind=True).keyframe
                done.set()

            threading.Thread(target=keyframe, daemon=True).start()
            during = []
            while not done.is_set():
                during.append(client.track(blob_image(20), K=K, stream="cam"))
            assert len(during) >= 5 and all(p.state == "tracking" and p.binding_id == first for p in during[:-1])
            second = results["key"].binding.binding_id
            assert client.track(blob_image(22), K=K, stream="cam").binding_id == second
            holder = next(i for i, h in enumerate(handlers) if h.keyframes.get("cam") == second)

            # The holder stops: the broker drops it, the stream is lost, then keyframed on the survivor.
            (w0, w1)[holder].stop()
            deadline = time.monotonic() + 10
            while client.health()["workers"] > 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # "lost", or (when the survivor made the first keyframe) a pose of that older keyframe,
            # which the node does not skin with (it holds the second) and answers with a keyframe.
            lost = client.track(blob_image(22), K=K, stream="cam")
            assert ("lost", "no keyframe") == (lost.state, lost.reason[:11]) if handlers[1 - holder].keyframes.get("cam") is None \
                else (lost.state, lost.binding_id) == ("tracking", first)
            third = client.reconstruct(blob_image(24), K=K, stream="cam", bind=True).keyframe.binding.binding_id
            assert handlers[1 - holder].keyframes["cam"] == third
            assert client.track(blob_image(26), K=K, stream="cam").binding_id == third
    finally:
        broker.stop()
        thread.join(10)


def test_isolated_worker_tracks_in_its_compute_child(monkeypatch):
    """`hgm serve --isolate`'s worker (a `ComputeSpec`): the child serves keyframes and track jobs,
    tracking on while a keyframe runs; when the child dies, track jobs get errors ("unavailable", or
    "internal" for the one it died with) until it is restarted, then "lost" (the new child has no tracker) until the next keyframe. A child whose
    handler cannot track refuses track jobs."""
    import os
    import signal

    from pathlib import Path

    from hgm_core.serve.isolate import ComputeSpec

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the compute child imports `tests.handlers`

    def healthy(client: WorkerClient) -> dict:
        for _ in range(1200):
            try:
                if (health := client.health())["ok"] and health["compute"]["ready"]:
                    return health
            except WorkerError:
                pass
            time.sleep(0.1)
        raise AssertionError("the compute child did not start")

    spec = ComputeSpec("tests.handlers:BlobLiveHandler", {"keyframe_sleep_s": 1.0}, start_timeout_s=120)
    with running_worker(spec) as worker, WorkerClient(worker.endpoint, timeout_s=30, retries=0) as client:
        health = healthy(client)
        assert health["track"] is True and health["compute"]["pid"] != os.getpid()
        key = client.reconstruct(blob_image(10), K=K, stream="cam", bind=True).keyframe
        pose = client.track(blob_image(30), K=K, stream="cam")
        assert (pose.state, pose.binding_id) == ("tracking", key.binding.binding_id)
        assert pose.bone_transforms[0, 0, 3] - key.bone_transforms[0, 0, 3] == pytest.approx(20 / 60 * 2.0, abs=1e-4)

        slow = threading.Thread(target=client.reconstruct, args=(blob_image(12),), kwargs={"K": K, "stream": "cam", "bind": True})
        slow.start()
        t0, during = time.monotonic(), []
        while slow.is_alive():
            during.append(client.track(blob_image(14), K=K, stream="cam"))
        slow.join()
        assert time.monotonic() - t0 >= 0.9 and len(during) >= 5 and all(p.state == "tracking" for p in during)

        os.kill(health["compute"]["pid"], signal.SIGKILL)
        answers = []
        deadline = time.monotonic() + 120
        while not answers or answers[-1] != "lost":
            try:
                pose = client.track(blob_image(16), K=K, stream="cam")
                answers.append(pose.state)
                assert pose.state == "lost" and "no keyframe" in pose.reason
            except WorkerError as e:  # "internal" when the kill lands while the job is in the child
                assert e.kind in ("unavailable", "internal"), e
                answers.append(e.kind)
                time.sleep(0.05)
            assert time.monotonic() < deadline, answers
        assert answers[0] in ("unavailable", "internal")
        health = client.health()
        assert health["compute"]["starts"] == 2 and health["compute"]["crashes"] >= 1
        key = client.reconstruct(blob_image(18), K=K, stream="cam", bind=True).keyframe
        assert client.track(blob_image(20), K=K, stream="cam").binding_id == key.binding.binding_id

    with running_worker(ComputeSpec("tests.handlers:PixelSplatHandler", start_timeout_s=120)) as worker, \
            WorkerClient(worker.endpoint, timeout_s=30, retries=0) as client:
        assert healthy(client)["track"] is False
        with pytest.raises(WorkerError) as e:
            client.track(blob_image(10), stream="cam")
        assert e.value.kind == "stage_unavailable"


def test_a_mirrored_keyframe_is_tracked_on_mirrored_landmarks():
    """A keyframe whose fit kept the mirrored reading of the landmarks (`BodyFit.mirrored`: the depth
    said the detector had the person back to front) is tracked on the mirrored reading of every new
    frame's landmarks too, so the tracker does not fight its own start: the unmoved person stays put."""
    from dataclasses import replace

    from PIL import Image

    from hgm_core.body.fit import fit_body, mirror_landmarks
    from hgm_core.paths import ASSETS_DIR
    from hgm_core.perception import PoseEstimator, perceive
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.live import LivePipeline
    from hgm_core.types import ReconstructionRequest

    photo = np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB"))
    live = LivePipeline(Reconstructor.from_config(ReconstructorConfig().override({"coarse.checkpoint": None, "fuse.checkpoint": None})))
    live.run(ReconstructionRequest(photo, stream="cam", bind=True))
    stream = live._streams["cam"]
    fit_stage = live.reconstructor.stages["fit_body"]
    with PoseEstimator() as estimator:
        mirrored_fit = fit_body(mirror_landmarks(perceive(photo, estimator)), None, fit_stage.body_model, config=fit_stage.config)
    roots = {}
    for flag in (True, False):  # the keyframe as the depth check leaves it, and the same fit unflagged
        live._streams["cam"] = replace(stream, fit=replace(mirrored_fit, mirrored=flag), tracker=None)
        pose = live.track(ReconstructionRequest(photo, stream="cam", stamp=0.0))
        roots[flag] = None if pose.state != "tracking" else np.linalg.norm(pose.skeleton.joints - mirrored_fit.joints, axis=-1).mean()
    assert roots[True] is not None and roots[True] < 0.05, roots  # metres
    assert roots[False] is None or roots[False] > 2 * roots[True], roots
