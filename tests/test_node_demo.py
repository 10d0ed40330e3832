"""`hgm demo` end to end: the real pipeline in a local worker, a real ROS graph, the files it writes."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hgm_demo.cli import DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_the_avatar_it_received(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    run = subprocess.run([sys.executable, "-m", "hgm_core", "demo", "--out", str(tmp_path), "--timeout", "400"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = run.stdout[run.stdout.index("hgm demo: avatar received"):]
    n = int(re.search(r"(\d+) Gaussians, ([\d.]+) MB PointCloud2 \(60 bytes/point\)", summary).group(1))
    assert re.search(r"worker stages: perceive [\d.]+ s, fit_body [\d.]+ s, prior [\d.]+ s", summary)
    assert "frame published -> avatar received" in summary and "frame_id hgm_demo_camera_optical" in summary

    vertex = plyfile.PlyData.read(tmp_path / "avatar_from_topic.ply")["vertex"]
    assert vertex.count == n > 1000
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1)
    assert np.isfinite(xyz).all() and np.median(xyz[:, 2]) > 0.5  # in front of the camera, metres
    import cv2

    render = cv2.imread(str(tmp_path / "avatar_from_topic.png"))
    h, w = cv2.imread(str(DEFAULT_IMAGE)).shape[:2]
    assert render.shape == (h, 3 * w, 3)
    front = render[:, w : 2 * w].astype(int)
    assert (np.abs(front - 255).sum(-1) > 60).mean() > 0.05  # the avatar covers part of the white canvas
