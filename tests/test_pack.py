"""Person-window packs (`hgm_core/data/pack.py`, `hgm pack`) on a tiny synthetic layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hgm_core.camera import CANONICAL_CAM_RADIUS
from hgm_core.cli import CliError
from hgm_core.data import pack_cli
from hgm_core.data.cache import CACHE_KEYS, build_cached_subject
from hgm_core.data.pack import (PackError, cut_window, decode_body, encode_body, is_pack, load_packed_subject, open_pack,
                                pack_subjects, packed_subjects, person_window, update_index, window_intrinsics)
from hgm_core.data.reader import load_view
from hgm_core.data.render import RenderConfig, write_subject
from hgm_core.data.synth import SynthBody, build_subject, sample_subject, subject_seed
from hgm_core.train.config import BodyNoise
from hgm_core.train.sample import crop_supervision, make_sample
from hgm_core.train.trainer import layout_seed

SOURCE_SIZE, VIEWS, SIZE, MARGIN = 128, 4, 64, 0.12


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    body = SynthBody()
    for i in range(2):
        geom = build_subject(sample_subject(subject_seed(1000, i), body), body)
        write_subject(root, f"{i:04d}", geom, RenderConfig(size=SOURCE_SIZE, ssaa=2, n_views=VIEWS))
    (root / "dataset.json").write_text(json.dumps({"generator": "hgm synth", "seed": 1000}))
    return root


def _args(source: Path, out: Path, **kw) -> argparse.Namespace:
    values = {"source": source, "out": out, "size": SIZE, "margin": MARGIN, "jpeg_quality": 92, "limit": None, "workers": 1}
    return argparse.Namespace(**{**values, **kw})


@pytest.fixture(scope="module")
def pack(layout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "p"
    assert pack_cli.run(_args(layout, out)) == 0
    return out


def _box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of `mask` > 0.5 in pixel-edge coordinates."""
    ys, xs = np.nonzero(mask > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_contract_matches_the_cache(layout, pack):
    cached = build_cached_subject(layout, "0000", SIZE)
    packed = load_packed_subject(pack, "0000")
    assert tuple(packed) == CACHE_KEYS + ("depth",)  # our layouts have depth maps; the cache does not keep them
    assert packed["depth"].shape == (VIEWS, SIZE, SIZE) and packed["depth"].dtype == np.float32
    for key in CACHE_KEYS:
        assert packed[key].dtype == cached[key].dtype, key
        assert packed[key].shape == cached[key].shape, key
    assert packed["images"].shape == (VIEWS, SIZE, SIZE, 3)
    np.testing.assert_array_equal(packed["extrinsics"], cached["extrinsics"])
    assert packed["distance"] == cached["distance"]
    assert packed["images"].flags.c_contiguous


def test_body_quantisation_error_under_a_millimetre(layout, pack):
    truth = np.load(layout / "body" / "0000.npz")["vertices"]
    body = load_packed_subject(pack, "0000")["body"]
    assert body.shape == truth.shape
    assert np.abs(body.astype(np.float64) - truth).max() <= 1e-3
    rng = np.random.default_rng(0)
    wild = rng.normal(0, 0.5, (500, 3)) + [3.0, -2.0, 40.0]  # unordered, far from the origin
    origin, code = encode_body(wild)
    assert np.abs(decode_body(origin, code, len(wild)) - wild).max() <= 5e-4 + 1e-5
    assert decode_body(*encode_body(np.zeros((0, 3))), 0).shape == (0, 3)


def test_windows_and_intrinsics_agree_with_the_body(layout, pack):
    """The GT body projected with each window's K lies on the window's mask, and the mask's box is the
    source mask's box carried through the same window."""
    subject = load_packed_subject(pack, "0000")
    windows = np.load(pack / "0000.npz")["windows"]
    for v in range(VIEWS):
        E, K, mask = subject["extrinsics"][v], subject["intrinsics"][v], subject["masks"][v] / 255.0
        cam = subject["body"].astype(np.float64) @ E[:3, :3].T + E[:3, 3]
        uv = cam @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        px = np.clip(np.floor(uv).astype(int), 0, SIZE - 1)
        # thin parts (fingers) are only partly covered at 64 px, so count any coverage
        assert (mask[px[:, 1], px[:, 0]] > 0.05).mean() >= 0.97, v
        box = _box(mask)
        np.testing.assert_allclose([*uv.min(0), *uv.max(0)], box, atol=2)
        x0, y0, side = windows[v]
        source = _box(load_view(layout, "0000", v)[1])
        carried = (source - [x0, y0, x0, y0]) * SIZE / side
        np.testing.assert_allclose(box, carried, atol=1.5)
        # the person fills the window: its longer side is 1 / (1 + 2 margin) of it
        assert max(box[2] - box[0], box[3] - box[1]) == pytest.approx(SIZE / (1 + 2 * MARGIN), abs=1.5)


def test_images_match_the_trainers_crop_of_the_source(layout, pack):
    """A pack's windows are what `crop_supervision` cuts from the source-resolution subject (a
    different resampler, so within JPEG + interpolation tolerance), with the same intrinsics."""
    full = build_cached_subject(layout, "0001", SOURCE_SIZE)  # the source at its own resolution
    views = list(range(VIEWS))
    sample = crop_supervision(make_sample(full, 0, views, 1, None, np.random.default_rng(0)), SIZE, MARGIN)
    packed = load_packed_subject(pack, "0001")
    rgb = torch.from_numpy(packed["images"]).float() / 255
    mask = torch.from_numpy(packed["masks"]).float() / 255
    assert (rgb - sample.target_rgb).abs().mean() < 0.02
    assert (mask - sample.target_mask[..., 0]).abs().mean() < 0.01
    torch.testing.assert_close(torch.from_numpy(packed["intrinsics"]).float(), sample.cameras.K, atol=1e-3, rtol=0)


def test_window_past_the_image_edge_is_white_with_an_empty_mask():
    mask = np.zeros((40, 40), np.float32)
    mask[0:20, 30:40] = 1  # a person in the top-right corner
    window = person_window(mask, 0.25)
    x0, y0, side = window
    assert side == 30 and x0 + side > 40 and y0 < 0
    rgb = np.zeros((40, 40, 3), np.float32)
    cut = cut_window(rgb, window, 30, 1.0)
    np.testing.assert_array_equal(cut[: -y0], 1.0)  # rows above the image
    np.testing.assert_array_equal(cut[:, 40 - x0:], 1.0)  # columns right of it
    np.testing.assert_array_equal(cut_window(mask, window, 30, 0.0)[:, 40 - x0:], 0.0)
    K = window_intrinsics(np.array([[50.0, 0, 20], [0, 50, 20], [0, 0, 1]]), window, 60)
    np.testing.assert_allclose(K, [[100, 0, (20 - x0) * 2], [0, 100, (20 - y0) * 2], [0, 0, 1]])
    assert person_window(np.zeros((8, 6)), 0.1) == (0, 0, 8)


def test_make_sample_takes_a_packed_subject(pack):
    subject = load_packed_subject(pack, "0000")
    rng = np.random.default_rng(0)
    sample = make_sample(subject, 1, [1, 2, 3], 1, BodyNoise(), rng)
    assert sample.images.shape == (1, 1, 3, SIZE, SIZE) and sample.target_rgb.shape == (3, SIZE, SIZE, 3)
    aimed = make_sample(subject, 0, [0, 2], 1, None, rng, aim=True)
    assert torch.isfinite(aimed.vertices).all() and aimed.cameras.width == SIZE


def test_depth_windows_match_the_body_in_the_canonical_frame(pack):
    # Depth targets in canonical units: where the GT body's z-buffer and the depth window both have a
    # surface they agree within clothing thickness, whatever the crop, aim and view; nothing outside the mask.
    from hgm_core.camera import project_points

    subject = load_packed_subject(pack, "0000")
    has_depth = subject["depth"] > 0  # depth is sampled at pixel centres, coverage over the pixel: edges differ
    assert (has_depth & (subject["masks"] == 0)).sum() < 0.05 * has_depth.sum()
    for aim in (False, True):
        sample = crop_supervision(make_sample(subject, 0, [0, 1, 2, 3], 1, None, np.random.default_rng(0), aim=aim), 48, 0.1)
        for c in range(4):
            view = sample.cameras.viewmats[c].double()
            points = sample.vertices[0].double() @ view[:3, :3].T + view[:3, 3]
            pix = torch.floor(project_points(points, sample.cameras.K[c].double(), min_depth=1e-6)).long()
            inside = (pix >= 0).all(-1) & (pix < 48).all(-1)
            zbuf = torch.full((48 * 48,), np.inf, dtype=torch.float64).scatter_reduce(
                0, pix[inside, 1] * 48 + pix[inside, 0], points[inside, 2], reduce="amin")
            target = sample.target_depth[c, ..., 0].double().reshape(-1)
            both = torch.isfinite(zbuf) & (target > 0)
            assert both.sum() > 50
            # canonical units: 1.5 / ring distance per metre; clothes sit ~1-5 cm off the body
            metre = CANONICAL_CAM_RADIUS / float(subject["distance"])
            assert float((zbuf[both] - target[both]).abs().median()) < 0.06 * metre


def test_pack_folder_index_and_resume(layout, pack, capsys):
    assert is_pack(pack) and not is_pack(layout)
    (pack / ".0002.tmp123.npz").write_bytes(b"")  # a subject still being written by another process
    assert packed_subjects(pack) == ["0000", "0001"]
    (pack / ".0002.tmp123.npz").unlink()
    index = json.loads((pack / "dataset.json").read_text())
    assert index["generator"] == "hgm pack" and index["seed"] == 1000 and index["size"] == SIZE
    assert index["subjects"] == ["0000", "0001"] and index["source"] == str(layout.resolve())
    assert index["total_bytes"] == sum((pack / f"{s}.npz").stat().st_size for s in index["subjects"])
    assert layout_seed(pack) == 1000  # the trainer's reserved-seed check reads the source's seed
    before = (pack / "0000.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert pack_cli.run(_args(layout, pack)) == 0
    assert "2 packed already, 0 to pack" in capsys.readouterr().out
    assert (pack / "0000.npz").stat().st_mtime_ns == before
    with pytest.raises(CliError, match="other settings"):
        pack_cli.run(_args(layout, pack, jpeg_quality=80))


def test_limit_and_workers(layout, tmp_path):
    out = tmp_path / "one"
    assert pack_cli.run(_args(layout, out, limit=1)) == 0
    assert packed_subjects(out) == ["0000"]
    index = open_pack(layout, out, SIZE, MARGIN, 92)
    written = dict(pack_subjects(layout, out, ["0001"], index, workers=2))
    assert set(written) == {"0001"} and written["0001"] == (out / "0001.npz").stat().st_size
    assert update_index(out)["subjects"] == ["0000", "0001"]


def test_clear_errors(layout, pack, tmp_path):
    with pytest.raises(CliError, match="no img/"):
        pack_cli.run(_args(tmp_path / "nothing", tmp_path / "out"))
    with pytest.raises(CliError, match="is a pack already"):
        pack_cli.run(_args(pack, tmp_path / "out"))
    with pytest.raises(CliError, match="size >= 8"):
        pack_cli.run(_args(layout, tmp_path / "out", size=4))
    with pytest.raises(CliError, match="--workers"):
        pack_cli.run(_args(layout, tmp_path / "out", workers=0))
    with pytest.raises(PackError, match="not a pack"):
        packed_subjects(layout)
    with pytest.raises(PackError, match="no packed subject"):
        load_packed_subject(pack, "0042")
