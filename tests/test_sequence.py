"""`hgm datagen --sequence` (hgm_core/data/sequence.py): the motion, the files, the ground truth."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from hgm_core.body import AnnyBody
from hgm_core.camera import project_points
from hgm_core.data import cli as datagen_cli
from hgm_core.data.sequence import SequenceConfig, SequenceError, make_sequence, motion_at, read_sequence

FRAMES = 3  # walking, turning, waving (u = 0, 0.5, 1)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    parser = argparse.ArgumentParser()
    datagen_cli.add_arguments(parser)
    args = parser.parse_args(["--sequence", "--subjects", "1", "--seed", "9090", "--start", "5", "--frames", str(FRAMES),
                              "--frame-size", "320x240", "-o", str(out)])
    assert datagen_cli.run(args) == 0
    return read_sequence(out / "seq_0005")


def test_motion_walks_turns_and_waves() -> None:
    c = SequenceConfig()
    dt = 1 / c.fps
    end = (c.frames - 1) * dt
    walking, yaw0, x0 = motion_at(0.2 * end, c)
    assert yaw0 == 0 and walking["knee_flex.L"] != walking["knee_flex.R"]  # legs out of phase
    assert motion_at(0.0, c)[2] == pytest.approx(-c.walk_span_m / 2) and motion_at(end, c)[2] == pytest.approx(c.walk_span_m / 2)
    assert motion_at((c.walk_share + c.turn_share / 2) * end, c)[1] == pytest.approx(c.turn_deg)
    waving = [motion_at(end - k * dt, c)[0] for k in range(5)]
    assert all(a["shoulder_down.R"] < -100 for a in waving)  # the right arm up
    assert np.ptp([a["elbow_flex.R"] for a in waving]) > 20  # the forearm swinging
    with pytest.raises(SequenceError):
        next(make_sequence(0, None, None, SequenceConfig(frames=1)))  # checked before anything is built


@pytest.mark.slow  # ~20 s: loads the generator's anny and builds three clothed subjects
def test_sequence_files_and_ground_truth(written) -> None:
    seq = written
    assert len(seq) == FRAMES and seq.size == (320, 240) and seq.fps == 15.0
    assert seq.truth["joints"].shape == (FRAMES, 20, 3) and seq.truth["keypoints_2d"].shape == (FRAMES, 23, 2)
    anny = AnnyBody()
    for f in range(FRAMES):
        image, mask = seq.image(f), seq.mask(f)
        assert image.shape == (240, 320, 3) and mask.shape == (240, 320) and mask.sum() > 500
        with torch.no_grad():
            out = anny(seq.params(f))
        # The stored parameters are the stored joints and keypoints.
        assert np.abs(out.joints[0].numpy() - seq.truth["joints"][f]).max() < 1e-5
        # The joints project onto the rendered person (clothes make the silhouette larger than the
        # body, never smaller), and the person fills the box the keypoints span.
        uv = project_points(torch.as_tensor(seq.truth["joints"][f], dtype=torch.float64), torch.as_tensor(seq.K)).numpy()
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        u, v = np.floor(uv).astype(int).T
        assert grown[v, u].all(), f"frame {f}: joints off the person: {uv[~grown[v, u]]}"
        kp = seq.truth["keypoints_2d"][f]
        ys, xs = np.nonzero(mask)
        assert abs(kp[:, 1].max() - ys.max()) < 12 and abs(kp[:, 1].min() - ys.min()) < 30  # feet and head


def test_read_sequence_refuses_other_folders(tmp_path) -> None:
    with pytest.raises(SequenceError):
        read_sequence(tmp_path)
