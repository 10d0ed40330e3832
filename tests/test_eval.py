"""hgm eval: the canonical protocol's placement, view groups by angle, the tables (fg PSNR, view
groups), and (slow) a whole run of two methods in both protocols on one synthetic subject."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from hgm_core.camera import look_at
from hgm_core.train.eval_cli import (
    group_means,
    markdown_table,
    place_body,
    placement_transform,
    summarise,
    view_offset_deg,
)
from hgm_core.train.validate import angle_group, view_group


def _random_similarity(rng: np.random.Generator, scale: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # a rotation, not a reflection
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = scale * q, rng.normal(size=3)
    return M


def test_placement_transform_recovers_a_similarity():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(500, 3)) * [0.2, 0.8, 0.1]
    M = _random_similarity(rng, 1.3)
    fitted = (gt - M[:3, 3]) @ np.linalg.inv(M[:3, :3]).T  # gt = M(fitted)
    np.testing.assert_allclose(placement_transform(fitted, gt), M, atol=1e-9)


@dataclasses.dataclass(frozen=True)
class _Fit:
    """The `BodyFit` fields `place_body` reads and moves."""

    body_model: str
    vertices: np.ndarray
    joints: np.ndarray
    keypoints: np.ndarray


def test_place_body_moves_the_whole_fit_onto_the_gt_placement():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(300, 3)).astype(np.float32)
    joints = rng.normal(size=(20, 3)).astype(np.float32)
    M = _random_similarity(rng, 0.7)  # the fit: too small, turned and shifted (a distance error)
    move = lambda p: (p @ M[:3, :3].T + M[:3, 3]).astype(np.float32)  # noqa: E731
    fit = _Fit("anny", move(gt), move(joints), move(joints[:5]))
    placed = place_body(fit, gt)
    np.testing.assert_allclose(placed.vertices, gt, atol=1e-4)
    np.testing.assert_allclose(placed.joints, joints, atol=1e-4)
    np.testing.assert_allclose(placed.keypoints, joints[:5], atol=1e-4)
    assert placed.vertices.dtype == np.float32
    from hgm_core.cli import CliError

    with pytest.raises(CliError, match="body model"):
        place_body(fit, gt[:100])


@pytest.mark.parametrize("elevation_deg", [0.0, 25.0])
def test_view_offset_is_the_ring_azimuth(elevation_deg):
    """Cameras on a ring (looking down at the subject or not): the offset is the azimuth difference."""
    el = math.radians(elevation_deg)
    az = torch.arange(12, dtype=torch.float64) * 2 * math.pi / 12
    eye = 2.5 * torch.stack((torch.sin(az) * math.cos(el), torch.full_like(az, math.sin(el)), torch.cos(az) * math.cos(el)), -1)
    c2w = look_at(eye, torch.tensor([0.0, 0.9, 0.0], dtype=torch.float64).expand_as(eye)).numpy()
    w2c = np.linalg.inv(c2w)
    offsets = [view_offset_deg(w2c[v] @ c2w[0]) for v in range(12)]
    np.testing.assert_allclose(offsets, [0, 30, 60, 90, 120, 150, 180, 150, 120, 90, 60, 30], atol=1e-6)
    assert [angle_group(round(a, 1)) for a in offsets[1:]] == [view_group(v, 12) for v in range(1, 12)]


def _row(sid: str, base: float) -> dict:
    groups = ["front", "side", "side", "back", "back", "front"]
    views = [{"view": i + 1, "group": g, "psnr": base + i, "fg_psnr": base - 5 + i, "ssim": 0.9, "lpips": 0.1 + 0.01 * i}
             for i, g in enumerate(groups)]
    return {"id": sid, **{k: float(np.mean([v[k] for v in views])) for k in ("psnr", "fg_psnr", "ssim", "lpips")},
            "views": views, "chamfer_cm": 3.0}


def test_group_means_and_tables():
    rows = [_row("0000", 20.0), _row("0001", 22.0)]
    g = group_means(rows)
    assert g["all"]["views"] == 12 and g["back"]["views"] == 4
    assert g["back"]["psnr"] == pytest.approx(np.mean([23, 24, 25, 26]))
    assert g["front"]["fg_psnr"] == pytest.approx(np.mean([15, 20, 17, 22]))
    res = summarise(rows, {}, worst=1)
    assert res["worst"] == ["0000"] and res["mean"]["psnr"] == pytest.approx(23.5)
    summary = {"methods": ["prior"], "data": "d", "n_subjects": 2, "size": 256, "n_views": 12,
               "results": {"canonical": {"prior": res}}}
    md = markdown_table(summary)
    assert "## Protocol `canonical`" in md and "fg PSNR ↑" in md
    back = next(line for line in md.splitlines() if line.startswith("| back (150°–210°) | prior |"))
    assert back.split(" | ")[2:4] == ["4", f"{g['back']['psnr']:.2f}"]


@pytest.mark.slow
def test_eval_two_methods_both_protocols(tmp_path):
    """One subject through `hgm eval`: one fit shared by `prior` and the embedded network, scored in
    both protocols. The canonical placement removes the fit's global error (MPJPE falls to about
    PA-MPJPE)."""
    pytest.importorskip("anny")
    pytest.importorskip("mediapipe")
    from hgm_core.cli import main
    from hgm_core.model.predict import default_checkpoint_dir

    data = tmp_path / "data"
    assert main(["datagen", "--subjects", "1", "--seed", "9090", "--size", "256", "--ssaa", "1", "-o", str(data)]) == 0
    import torch

    from hgm_core.model import HGM, config_for

    torch.manual_seed(0)  # a two-view method runs coarse -> back_view -> fuse (its weights are random here)
    two_view = HGM(config_for("tiny", num_views=2)).save_pretrained(tmp_path / "two_view_random_weights")
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--method", "prior", str(default_checkpoint_dir()), str(two_view),
                 "--protocol", "wild", "canonical", "-o", str(out)]) == 0
    s = json.loads((out / "eval.json").read_text())
    assert s["methods"] == ["prior", "tiny_1view", "two_view_random_weights"] and set(s["results"]) == {"wild", "canonical"}
    row = s["results"]["wild"]["two_view_random_weights"]["subjects"][0]
    assert list(row["stage_seconds"]) == ["coarse", "back_view", "fuse"] and row["coarse_used"] == "network"
    assert row["fuse_used"] in ("network", "coarse")
    for protocol in ("wild", "canonical"):
        for method in s["methods"]:
            r = s["results"][protocol][method]
            assert set(r["groups"]) == {"all", "front", "side", "back"} and r["groups"]["all"]["views"] == 11
            assert r["mean"]["fg_psnr"] < r["mean"]["psnr"]  # the person is harder than the white background
    wild, canon = s["results"]["wild"]["prior"]["mean"], s["results"]["canonical"]["prior"]["mean"]
    assert canon["mpjpe_mm"] <= wild["mpjpe_mm"] + 1e-6
    assert canon["mpjpe_mm"] < 1.5 * canon["pa_mpjpe_mm"]
    # Both methods started from the same fit.
    assert s["results"]["wild"]["prior"]["mean"]["mpjpe_mm"] == s["results"]["wild"]["tiny_1view"]["mean"]["mpjpe_mm"]
    assert "fg PSNR" in (out / "eval.md").read_text()
