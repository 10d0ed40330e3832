"""`hgm view`: the message, the server, the file feed, and the page in headless Chromium compared
with hgm's own rasterizer from the same camera."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from hgm_core.io.ply import write_ply, write_ply_raw
from hgm_view.avatar import AvatarUpdate, ViewInputError, bone_segments, decode_update, encode_update, load_path
from hgm_view.browser import Browser, find_chromium, wait_drawn
from hgm_view.server import ViewerSetupError, ViewServer, check_web_modules, web_modules_dir
from hgm_view.sources import watch_path

W, H = 160, 240
K = np.array([[200.0, 0.0, W / 2], [0.0, 200.0, H / 2], [0.0, 0.0, 1.0]])


def _web_ready() -> str | None:
    """Why the page cannot run here, or None."""
    try:
        check_web_modules(web_modules_dir())
    except ViewerSetupError as e:
        return str(e)
    return None if find_chromium() else "Chromium not installed (make setup installs Debian's chromium as root)"


needs_browser = pytest.mark.skipif(_web_ready() is not None and not os.environ.get("CI"), reason=str(_web_ready()))
"""Skipped on a machine without Chromium or the npm packages; never in CI, where make setup installs both."""


def _avatar(n: int = 4000, seed: int = 3, shift_x: float = 0.0):
    """The procedural person, ~1.7 m tall, 3 m in front of the camera in its optical frame (y down)."""
    from hgm_core.render.scenes import person_scene

    g = person_scene(n, seed=seed)
    return g.transform(torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.tensor([shift_x, 0.0, 3.0]))


def _raw(g) -> np.ndarray:
    return g.to_raw().numpy().astype(np.float32)


def test_the_message_round_trips():
    raw = np.random.default_rng(0).normal(size=(50, 14)).astype(np.float32)
    joints = np.arange(12, dtype=np.float32).reshape(4, 3)
    update = AvatarUpdate(raw=raw, segments=bone_segments(joints, [(0, 1), (1, 2), (2, 9)]), joints=joints,
                          stamp=12.5, frame_id="cam", source="test", K=K, image_size=(W, H))
    header, raw2, segments, joints2 = decode_update(encode_update(update, seq=7))
    assert header["seq"] == 7 and header["n"] == 50 and header["frame_id"] == "cam" and header["image_size"] == [W, H]
    np.testing.assert_array_equal(raw2, raw)
    np.testing.assert_array_equal(joints2, joints)
    np.testing.assert_array_equal(segments, joints[[[0, 1], [1, 2]]])  # the pair out of range is dropped
    np.testing.assert_allclose(header["K"], K)
    with pytest.raises(ViewInputError):
        encode_update(AvatarUpdate(raw=raw[:, :13]))


def _reconstruct_folder(tmp_path, g) -> None:
    """What `hgm reconstruct -o tmp_path` writes that the viewer reads."""
    write_ply(tmp_path / "avatar.ply", g)
    joints = [[0.0, -0.5, 3.0], [0.0, 0.0, 3.0], [0.0, 0.6, 3.0]]
    (tmp_path / "body.json").write_text(json.dumps({"joints": joints, "bones": [[0, 1], [1, 2]], "K": K.tolist()}))
    (tmp_path / "report.json").write_text(json.dumps({"image_size": [W, H]}))


def test_a_reconstruct_folder_gives_the_avatar_its_skeleton_and_camera(tmp_path):
    g = _avatar(300)
    _reconstruct_folder(tmp_path, g)
    update = load_path(tmp_path)
    np.testing.assert_allclose(update.raw, _raw(g), atol=1e-6)
    assert update.segments.shape == (2, 2, 3) and update.joints.shape == (3, 3)
    assert update.image_size == (W, H)
    np.testing.assert_allclose(update.K, K)
    assert load_path(tmp_path / "avatar.ply").segments.shape == (0, 2, 3)  # a bare PLY has no skeleton
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewInputError, match="no avatar.ply"):
        load_path(tmp_path / "empty")
    with pytest.raises(ViewInputError, match="does not exist"):
        load_path(tmp_path / "missing.ply")


def test_the_watcher_sends_the_avatar_again_when_the_file_changes(tmp_path):
    ply = tmp_path / "avatar.ply"
    write_ply_raw(ply, _raw(_avatar(100)))
    got, stop = [], threading.Event()
    thread = threading.Thread(target=watch_path, args=(ply, got.append, stop, 0.05), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    write_ply_raw(ply, _raw(_avatar(200)))
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(5)
    assert [len(u.raw) for u in got] == [100, 200]


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, b"", ""


def test_the_server_serves_the_page_the_packages_and_the_latest_avatar(tmp_path):
    from websockets.sync.client import connect

    modules = tmp_path / "node_modules"
    for rel in ("three/build/three.module.js", "@sparkjsdev/spark/dist/spark.module.js"):
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_text("export const x = 1;\n")
    (tmp_path / "secret.txt").write_text("not for the page")
    with ViewServer(port=0, modules=modules) as server:
        status, body, kind = _get(server.url)
        assert status == 200 and b"importmap" in body and kind.startswith("text/html")
        assert _get(server.url + "view.js")[0] == 200
        status, body, kind = _get(server.url + "vendor/three/build/three.module.js")
        assert (status, body, kind.split(";")[0]) == (200, b"export const x = 1;\n", "text/javascript")
        assert _get(server.url + "vendor/../secret.txt")[0] == 404
        assert _get(server.url + "vendor/%2e%2e/secret.txt")[0] == 404
        assert _get(server.url + "nothing")[0] == 404
        raw = _raw(_avatar(64))
        server.publish(AvatarUpdate(raw=raw, source="first"))
        server.publish(AvatarUpdate(raw=raw[:10], source="second"))
        with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
            header, got, _, _ = decode_update(ws.recv(timeout=10))  # a page that connects late gets the latest
            assert (header["seq"], header["source"], len(got)) == (2, "second", 10)
            server.publish(AvatarUpdate(raw=raw, source="third"))
            header, got, _, _ = decode_update(ws.recv(timeout=10))
            assert header["source"] == "third"
            np.testing.assert_array_equal(got, raw)
    with pytest.raises(ViewerSetupError, match="make setup"):
        ViewServer(port=0, modules=tmp_path / "empty")


def _alpha_and_colour(browser: Browser) -> tuple[np.ndarray, np.ndarray]:
    """The page's `[H, W]` alpha and `[H, W, 3]` colour from two screenshots, over black and over white."""
    shots = []
    for bg in ("#000000", "#ffffff"):
        browser.evaluate(f"window.hgmView.setBackground('{bg}'); window.hgmView.state.shown = window.hgmView.state.frames")
        wait_drawn(browser, frames=3)
        shots.append(browser.screenshot().astype(np.float64) / 255.0)
    over_black, over_white = shots
    alpha = np.clip(1.0 - (over_white - over_black).mean(-1), 0.0, 1.0)
    colour = over_black / np.maximum(alpha, 1e-6)[..., None]
    return alpha, colour


def _rasterized(g) -> tuple[np.ndarray, np.ndarray]:
    from hgm_core.camera import Cameras
    from hgm_core.render.api import rasterize

    cameras = Cameras(torch.as_tensor(K, dtype=torch.float32)[None], torch.eye(4)[None], W, H)
    with torch.no_grad():
        out = rasterize(g, cameras, background=(0.0, 0.0, 0.0))
    alpha = out.alpha[0, ..., 0].numpy().astype(np.float64)
    return alpha, out.rgb[0].numpy() / np.maximum(alpha, 1e-6)[..., None]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@needs_browser
def test_the_page_draws_the_avatar_as_hgms_rasterizer_does(tmp_path):
    """Same avatar, same camera: the browser's splats cover the same pixels (alpha > 0.5, IoU >= 0.9)
    with the same colours; the same check rejects an empty page and an avatar 8 cm to the side."""
    g = _avatar()
    ref_alpha, ref_colour = _rasterized(g)
    with ViewServer(port=0) as server, Browser(W, H) as browser:
        browser.open(server.url + "?hud=0&skeleton=0&dpr=1")
        browser.wait_for("window.hgmView && window.hgmView.state.connected")
        empty_alpha, _ = _alpha_and_colour(browser)
        server.publish(AvatarUpdate(raw=_raw(g), source="test", K=K, image_size=(W, H)))
        browser.wait_for("window.hgmView.state.updates >= 1")
        alpha, colour = _alpha_and_colour(browser)
        Image.fromarray((np.concatenate([ref_colour * ref_alpha[..., None], colour * alpha[..., None]], 1) * 255)
                        .clip(0, 255).astype(np.uint8)).save(tmp_path / "rasterizer_vs_page.png")
        assert browser.evaluate("window.hgmView.state.splats") == len(g)
        # A live update (same avatar, moved 8 cm): written into the splats already shown
        moved = _avatar(shift_x=0.08)
        server.publish(AvatarUpdate(raw=_raw(moved), source="test", K=K, image_size=(W, H)))
        browser.wait_for("window.hgmView.state.updates >= 2")
        moved_alpha, _ = _alpha_and_colour(browser)
        assert browser.evaluate("window.hgmView.state.meshes") == 1  # updated in place, not rebuilt
        assert not [m for m in browser.console if m.startswith(("exception", "error"))], browser.console
    mask, ref_mask = alpha > 0.5, ref_alpha > 0.5
    iou = _iou(mask, ref_mask)
    solid = (alpha > 0.95) & (ref_alpha > 0.95)
    colour_error = np.abs(colour[solid] - ref_colour[solid]).mean(0)
    print(f"page vs rasterizer: IoU {iou:.3f} ({mask.sum()} vs {ref_mask.sum()} px), mean |dRGB| {colour_error.round(4)} "
          f"over {solid.sum()} px; alpha mean |d| {np.abs(alpha - ref_alpha).mean():.4f}")
    assert ref_mask.sum() > 2000  # the avatar fills a good part of the 160 x 240 view
    assert iou >= 0.9
    assert solid.sum() > 0.5 * ref_mask.sum() and (colour_error < 0.03).all()
    assert _iou(empty_alpha > 0.5, ref_mask) < 0.05  # nothing drawn fails
    shifted_alpha, _ = _rasterized(moved)
    assert _iou(mask, shifted_alpha > 0.5) < 0.9  # the wrong avatar fails
    moved_iou = _iou(moved_alpha > 0.5, shifted_alpha > 0.5)
    print(f"after the live update: IoU {moved_iou:.3f} with the moved avatar, {_iou(moved_alpha > 0.5, ref_mask):.3f} with the old")
    assert moved_iou >= 0.9 and _iou(moved_alpha > 0.5, ref_mask) < 0.9


@needs_browser
def test_hgm_view_screenshots_a_reconstruct_folder_with_its_skeleton_and_hud(tmp_path):
    _reconstruct_folder(tmp_path, _avatar(2000))
    out = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, "-m", "hgm_core", "view", str(tmp_path), "--port", "0", "--screenshot", str(out),
                           "--size", "320x240"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (240, 320, 3)
    green = (img[..., 1] > 180) & (img[..., 0] < 120) & (img[..., 2] < 170)  # the skeleton overlay (#3ddc84)
    blue = (img[..., 2] > 120) & (img[..., 2] > img[..., 0] + 50)              # the person's shirt
    hud = (img[:40, :160].min(-1) > 200)                                        # white HUD text, top left
    assert green.sum() > 20 and blue.sum() > 100 and hud.sum() > 20, (green.sum(), blue.sum(), hud.sum())


def test_hgm_view_refuses_a_folder_without_an_avatar(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hgm_core", "view", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no avatar.ply" in proc.stderr
