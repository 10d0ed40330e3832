"""The HGM network: shapes and ranges per config, gradients through the renderer, determinism,
body-model swap, input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hgm_core.camera import cameras_from_c2w_gl, intrinsics_from_fov, orbit_poses
from hgm_core.model import HGM, BODY_MODEL_VERTICES, InputError, config_for, default_views, to_gaussians
from hgm_core.model.official import official_shapes
from hgm_core.render import rasterize

OFFICIAL_TSV = Path(__file__).resolve().parents[1] / "docs" / "reference" / "hgm_official_state_dict.tsv"


def body_cloud(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """`[B, n, 3]` points on a body-sized ellipsoid in the canonical frame (~1.3 units tall)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(batch, n, 3, generator=g), dim=-1)
    return d * torch.tensor([0.25, 0.65, 0.12])


def inputs(cfg, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, cfg.num_views, 3, cfg.input_size, cfg.input_size, generator=g)
    K, c2w = default_views(cfg)
    return images, body_cloud(cfg.num_vertices, batch, seed), K.expand(batch, -1, -1, -1), c2w.expand(batch, -1, -1, -1)


def check_ranges(t: torch.Tensor, xyz_bound: float) -> None:
    assert torch.isfinite(t).all()
    assert t[..., :3].abs().max() <= xyz_bound
    assert ((t[..., 3] > 0) & (t[..., 3] < 1)).all()
    assert (t[..., 4:7] > 0).all() and (t[..., 4:7] < 10).all()
    torch.testing.assert_close(t[..., 7:11].norm(dim=-1), torch.ones(t.shape[:-1]))
    assert ((t[..., 11:14] >= 0) & (t[..., 11:14] <= 1)).all()


@pytest.mark.parametrize("preset,views,batch", [("tiny", 1, 2), ("tiny", 2, 1), ("small", 1, 1), ("small", 2, 1)])
def test_shapes_and_ranges(preset: str, views: int, batch: int) -> None:
    cfg = config_for(preset, num_views=views)
    torch.manual_seed(0)
    model = HGM(cfg).eval()
    with torch.no_grad():
        out = model(*inputs(cfg, batch))
    S = cfg.splat_size
    assert out.merged.shape == out.unet.shape == (batch, views * S * S, 14)
    assert out.body.shape == (batch, cfg.num_vertices, 14)
    check_ranges(out.unet, 2.0 if cfg.body_guided else 1.0)  # guided: on the input rays
    check_ranges(out.body, 1.0)
    check_ranges(out.merged, 2.0)
    g = out.gaussians("merged", index=batch - 1).validate()
    assert len(g) == views * S * S


def test_splat_sizes_follow_the_paper() -> None:
    assert config_for("big").splat_size == 256 and config_for("big").input_size == 512
    assert config_for("big", num_views=2).num_gaussians == 2 * 65536
    assert config_for("small").splat_size == 128 and config_for("tiny").splat_size == 64


def test_big_matches_official_unet_and_counts_parameters() -> None:
    """`big` builds (on the meta device) with exactly the official UNet / encoder / sparse shapes."""
    cfg = config_for("big", body_model="smplx")
    with torch.device("meta"):
        model = HGM(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = official_shapes(OFFICIAL_TSV)
    shared = [k for k in official if k.split(".")[0] in ("unet", "conv", "unet2", "c", "xyzc_net")
              and not k.startswith(("unet.norm_out_2", "unet.conv_out_2"))]
    assert len(shared) > 500
    assert all(ours[k] == official[k][0] for k in shared), [k for k in shared if ours.get(k) != official[k][0]][:5]
    unet_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("unet."))
    unused = 256 * 2 + 14 * 256 * 3 + 14  # official norm_out_2 + conv_out_2, never called
    assert unet_params == 415_053_916 - unused
    assert 420e6 < sum(p.numel() for p in model.parameters()) < 440e6


@pytest.mark.slow
@pytest.mark.parametrize("views", [1, 2])
def test_big_forward(views: int) -> None:
    cfg = config_for("big", num_views=views)
    model = HGM(cfg).eval()
    with torch.no_grad():
        out = model(*inputs(cfg))
    assert out.merged.shape == (1, views * 65536, 14)
    check_ranges(out.merged, 2.0)


def _render_loss(out, size: int = 32) -> torch.Tensor:
    """Sum of MSE(rgb) + MSE(alpha) of the three sets, front and side views, against fixed targets."""
    c2w = orbit_poses(n_views=4)[:2]
    cams = cameras_from_c2w_gl(c2w, intrinsics_from_fov(size, size, 49.1), size, size)
    target = torch.linspace(0, 1, size * size * 3).reshape(1, size, size, 3)
    loss = torch.zeros(())
    for t in (out.merged[0], out.unet[0], out.body[0]):
        r = rasterize(to_gaussians(t), cams, background=(1.0, 1.0, 1.0), backend="numba")
        loss = loss + ((r.rgb - target) ** 2).mean() + ((r.alpha - 0.5) ** 2).mean()
    return loss


GROUPS = ("unet.", "conv.", "unet2.", "c.", "xyzc_attn.", "body_head.", "xyzc_net.", "fusion.")


@pytest.mark.parametrize("views", [1, 2])
def test_render_loss_reaches_every_parameter(views: int) -> None:
    cfg = config_for("tiny", num_views=views)
    torch.manual_seed(0)
    model = HGM(cfg).train()
    images, verts, K, c2w = inputs(cfg)
    _render_loss(model(images, verts, K, c2w)).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert dead == []
    for prefix in GROUPS:
        assert any(n.startswith(prefix) for n, _ in model.named_parameters()), prefix


@pytest.mark.parametrize("views,expect_zero", [(1, True), (2, False)])
def test_official_cross_attention_quirk(views: int, expect_zero: bool) -> None:
    """With the official keys (views only) one view leaves the tokens without gradient."""
    cfg = config_for("tiny", num_views=views, token_key=False)
    torch.manual_seed(0)
    model = HGM(cfg).train()
    out = model(*inputs(cfg))
    (out.body[..., :3].sum() + out.merged.sum()).backward()
    assert (model.c.weight.grad.abs().max() == 0) == expect_zero


def test_seeded_forward_is_deterministic() -> None:
    cfg = config_for("tiny")
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = HGM(cfg).eval()
        with torch.no_grad():
            outs.append(model(*inputs(cfg, seed=3)))
    for name in ("merged", "unet", "body"):
        assert torch.equal(getattr(outs[0], name), getattr(outs[1], name))


def test_body_model_changes_only_the_token_count() -> None:
    anny, smplx = config_for("tiny", body_model="anny"), config_for("tiny", body_model="smplx")
    assert anny.diff(smplx) == {"body_model": ("anny", "smplx"), "num_vertices": (13718, 10475)}
    a, s = HGM(anny).state_dict(), HGM(smplx).state_dict()
    assert a.keys() == s.keys()
    assert [k for k in a if a[k].shape != s[k].shape] == ["c.weight"]
    assert s["c.weight"].shape == (BODY_MODEL_VERTICES["smplx"], smplx.token_dim)
    with torch.no_grad():
        out = HGM(smplx).eval()(*inputs(smplx))
    assert out.body.shape == (1, 10475, 14) and out.merged.shape == (1, 4096, 14)


def test_wrong_inputs_fail_clearly() -> None:
    cfg = config_for("tiny")
    model = HGM(cfg).eval()
    images, verts, K, c2w = inputs(cfg)
    with pytest.raises(InputError, match=r"images must be \[B, 1, 3, 128, 128\]"):
        model(images[..., :64, :64], verts, K, c2w)
    with pytest.raises(InputError, match="1 view"):
        model(images.expand(1, 2, -1, -1, -1), verts, K, c2w)
    with pytest.raises(InputError, match="body model 'anny' with 13718 vertices; got 10475"):
        model(images, verts[:, :10475], K, c2w)
    with pytest.raises(InputError, match="K must be"):
        model(images, verts, K[0], c2w)
    with pytest.raises(InputError, match="c2w must be"):
        model(images, verts, K, c2w[:, :, :3])
