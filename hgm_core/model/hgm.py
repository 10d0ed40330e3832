"""`HGM`: the whole network — UNet branch, body branch, sparse volume, fusion — and its output type.

Data flow (docs/reference/hgm_official_code.md §3.0, shapes for batch B, V views, splat side S, Nv body vertices):

    images [B,V,3,H,W] + Plücker rays ─► unet ─► conv1x1 ─► UNet Gaussians [B, V*S*S, 14]
                                         └─► feats [B*V, C, S, S]
    9-channel input ─► unet2 (ImageEncoder) ─► F2 [B*V, 32, H/4, W/4]
    vertices [B,Nv,3] ─► project ─► sample F2 ─► xyzc_attn(tokens c) ─► body_head ─► body Gaussians [B, Nv, 14]
    refined vertices (body xyz) ─► project, sample, xyzc_attn ─► voxelise ─► xyzc_net ─► sample at UNet xyz
    [UNet xyz | feats | volume features] ─► fusion ─► merged Gaussians [B, V*S*S, 14]

Every Gaussian tensor is *activated* with channels `GAUSSIAN_CHANNELS` (xyz, opacity, scale,
quaternion w-first, rgb) in HGM's canonical frame (OpenGL axes, input camera at (0, 0, 1.5));
`to_gaussians` turns one sample into a `hgm_core.gaussians.Gaussians`, and
`hgm_core.model.frames` maps it into the input camera's optical frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hgm_core.camera import flip_camera_axes, fov_from_intrinsics, intrinsics_from_fov, orbit_poses, plucker_rays
from hgm_core.gaussians import Gaussians
from hgm_core.model.checkpoint import ModelCard, check_state_dict, load_checkpoint, save_pretrained
from hgm_core.model.body_branch import BodyGaussianHead, VertexCrossAttention, project_to_grid, sample_views
from hgm_core.model.config import HGMConfig
from hgm_core.model.fusion import FusionTransformer
from hgm_core.model.guide import body_prior, pixel_prior
from hgm_core.model.image_encoder import ImageEncoder
from hgm_core.model.sparse import SparseConvNet, sample_volumes, voxelize
from hgm_core.model.unet import UNet

GAUSSIAN_CHANNELS: tuple[str, ...] = (
    "x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "qw", "qx", "qy", "qz", "r", "g", "b",
)
"""The 14 network channels, in order (raw and activated share it)."""

PIXEL_OFFSET = 0.2
"""Body-guided pixel set: largest UNet offset (canonical units) from the ray point at the body's depth."""
RESIDUAL_INIT = 0.1
"""Body-guided heads start with weights scaled by this, so the first avatar is close to the prior."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputError(ValueError):
    """Raised when the network's inputs do not match its config (size, view count, vertex count)."""


def activate_attributes(raw: torch.Tensor) -> torch.Tensor:
    """Raw `[..., 14]` -> activated opacity, scale, quaternion, rgb `[..., 11]` (docs/reference/hgm_official_code.md §3.1).

    sigmoid opacity, 0.1 * softplus scale, L2-normalised quaternion, 0.5 * tanh + 0.5 colour.
    """
    return torch.cat(
        (
            torch.sigmoid(raw[..., 3:4]),
            0.1 * F.softplus(raw[..., 4:7]),
            F.normalize(raw[..., 7:11], dim=-1),
            0.5 * torch.tanh(raw[..., 11:14]) + 0.5,
        ),
        -1,
    )


def to_gaussians(t: torch.Tensor) -> Gaussians:
    """Activated `[N, 14]` network Gaussians -> `Gaussians`."""
    if t.ndim != 2 or t.shape[1] != len(GAUSSIAN_CHANNELS):
        raise InputError(f"expected activated Gaussians [N, 14], got {list(t.shape)}")
    return Gaussians(means=t[:, 0:3], opacities=t[:, 3], scales=t[:, 4:7], quats=t[:, 7:11], colors=t[:, 11:14])


@dataclass
class HGMOutput:
    """Activated Gaussians `[B, N, 14]` (`GAUSSIAN_CHANNELS`) in the canonical frame.

    Attributes:
        merged: the fused avatar, N = V * S * S (xyz may reach [-2, 2], as in the official code).
        unet: the UNet branch alone, N = V * S * S, xyz in [-1, 1] ([-2, 2] when body-guided).
        body: one Gaussian per body vertex, N = Nv, xyz in [-1, 1] (training loss).
    """

    merged: torch.Tensor
    unet: torch.Tensor
    body: torch.Tensor

    def gaussians(self, which: Literal["merged", "unet", "body"] = "merged", index: int = 0) -> Gaussians:
        """Sample `index` of one set as `Gaussians` (canonical frame)."""
        return to_gaussians(getattr(self, which)[index])


def body_colour_baseline(images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """The body-colour baseline avatar: activated `[B, Nv, 14]`, one Gaussian per vertex coloured from
    the input image(s) (the body-guided network's starting point; a trained network must beat it).

    Args as `HGM.forward` (images `[B, V, 3, H, W]` in [0, 1], canonical vertices, K, OpenGL c2w)."""
    return torch.cat((vertices, activate_attributes(body_prior(images, vertices, K, c2w))), -1)


def default_views(config: HGMConfig, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """HGM's input views: front at (0, 0, 1.5) and, for two views, the back at azimuth 180°.

    Returns:
        K `[V, 3, 3]` at `config.input_size` with `config.fovy_deg`, and OpenGL camera-to-world `[V, 4, 4]`.
    """
    V, n = config.num_views, config.input_size
    c2w = orbit_poses(n_views=2)[:V].to(dtype)
    K = intrinsics_from_fov(n, n, config.fovy_deg, dtype=dtype).expand(V, 3, 3).clone()
    return K, c2w


class HGM(nn.Module):
    """The HGM network for one `HGMConfig`. See the module docstring for the data flow.

    Sub-module names follow the official state_dict where the architecture lines up (`unet`,
    `conv`, `unet2`, `c`, `xyzc_attn`, `xyzc_net`); `body_head` and `fusion` are ours.
    """

    def __init__(self, config: HGMConfig) -> None:
        super().__init__()
        self.config = config.validate()
        cfg = config
        self.unet = UNet(9, 14, cfg.down_channels, cfg.down_attention, cfg.mid_attention, cfg.up_channels,
                         cfg.up_attention, cfg.layers_per_block, cfg.attention_heads, cfg.norm_groups)
        self.conv = nn.Conv2d(14, 14, 1)
        self.unet2 = ImageEncoder(9, cfg.token_dim, cfg.encoder_channels, cfg.encoder_blocks)
        self.c = nn.Embedding(cfg.num_vertices, cfg.token_dim)
        self.xyzc_attn = VertexCrossAttention(cfg.token_dim, cfg.attn_heads, cfg.token_key)
        self.body_head = BodyGaussianHead(cfg.token_dim, cfg.body_head_hidden)
        self.xyzc_net = SparseConvNet(cfg.token_dim, cfg.sparse_levels)
        self.fusion = FusionTransformer(3 + cfg.feature_dim + cfg.sparse_dim, cfg.fusion_dim, cfg.fusion_depth,
                                        cfg.fusion_heads, cfg.fusion_window, cfg.fusion_chunk)
        if cfg.body_guided:
            with torch.no_grad():
                for head in (self.conv, self.body_head.mlp[-1], self.fusion.head):
                    head.weight.mul_(RESIDUAL_INIT)
                    head.bias.zero_()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, card: ModelCard | None = None) -> Path:
        """Write safetensors weights, config.json and a model card (`hgm_core.model.checkpoint`)."""
        return save_pretrained(self, directory, card)

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: HGMConfig | None = None, map_location: str | torch.device = "cpu") -> "HGM":
        """Load a checkpoint (eval mode); with `config`, refuse one saved with a different config."""
        stored, state = load_checkpoint(directory, config, map_location)
        model = cls(stored)
        check_state_dict(model.state_dict(), state, f"checkpoint {directory}")
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> None:
        """Raise `InputError` naming the first input that does not fit the config."""
        cfg = self.config
        n, V = cfg.input_size, cfg.num_views
        if images.ndim != 5 or images.shape[1:] != (V, 3, n, n):
            raise InputError(
                f"images must be [B, {V}, 3, {n}, {n}] for config {cfg.name!r} with {V} view(s), got {list(images.shape)}"
            )
        B = images.shape[0]
        if vertices.ndim != 3 or vertices.shape[0] != B or vertices.shape[2] != 3:
            raise InputError(f"vertices must be [B={B}, Nv, 3], got {list(vertices.shape)}")
        if vertices.shape[1] != cfg.num_vertices:
            raise InputError(
                f"this network's tokens belong to body model {cfg.body_model!r} with {cfg.num_vertices} vertices; "
                f"got {vertices.shape[1]} vertices"
            )
        if K.shape != (B, V, 3, 3):
            raise InputError(f"K must be [{B}, {V}, 3, 3], got {list(K.shape)}")
        if c2w.shape != (B, V, 4, 4):
            raise InputError(f"c2w must be [{B}, {V}, 4, 4], got {list(c2w.shape)}")

    def network_input(self, images: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
        """`[B, V, 3, H, W]` RGB in [0, 1] -> `[B*V, 9, H, W]`: ImageNet-normalised RGB + Plücker rays.

        Rays are HGM's (`hgm_core.camera.plucker_rays`): principal point at the image centre, focal
        from `fy` (`fov_from_intrinsics`: fovy = 2 atan(H / 2 fy)), exactly as the official `get_rays`.
        """
        B, V, _, H, W = images.shape
        rgb = (images.reshape(B * V, 3, H, W) - self.mean) / self.std
        rays = torch.stack([plucker_rays(p, H, W, fov_from_intrinsics(k, W, H)) for p, k in zip(c2w.reshape(-1, 4, 4), K.reshape(-1, 3, 3))])
        return torch.cat((rgb, rays.to(rgb.dtype)), 1)

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> HGMOutput:
        """Predict Gaussians.

        Args:
            images: `[B, V, 3, H, W]` RGB in [0, 1] on white, H = W = `config.input_size`; view 0 is the input camera.
            vertices: `[B, Nv, 3]` body-model vertices in the canonical frame.
            K: `[B, V, 3, 3]` intrinsics of the images (pixels; pixel centres at +0.5).
            c2w: `[B, V, 4, 4]` OpenGL camera-to-world in the canonical frame (view 0 = [I | (0, 0, 1.5)]).
        Returns:
            `HGMOutput` (activated, canonical frame).
        """
        self.check_inputs(images, vertices, K, c2w)
        cfg, V = self.config, self.config.num_views
        B, S = images.shape[0], cfg.splat_size
        x = self.network_input(images, K, c2w)

        # UNet branch: pixel-aligned Gaussians, view-major then row-major.
        raw_u, feats = self.unet(x, V)
        raw_u = self.conv(raw_u).reshape(B, V, 14, S, S).permute(0, 1, 3, 4, 2).reshape(B, V * S * S, 14)
        if cfg.body_guided:  # residuals on the pixel rays at the body's depth (hgm_core.model.guide)
            centres, prior_u = pixel_prior(images, vertices, K, c2w, S)
            pos_u = (centres + PIXEL_OFFSET * torch.tanh(raw_u[..., :3])).clamp(-2, 2)
            raw_u = raw_u + prior_u
        else:
            pos_u = raw_u[..., :3].clamp(-1, 1)
        unet = torch.cat((pos_u, activate_attributes(raw_u)), -1)
        feats = feats.reshape(B, V, -1, S, S).permute(0, 1, 3, 4, 2).reshape(B, V * S * S, -1)

        # Body branch: tokens gather image features at the vertices, then at the refined vertices.
        f2 = self.unet2(x)
        viewmats = torch.linalg.inv(flip_camera_axes(c2w))
        tokens = self.c.weight

        def vertex_features(points: torch.Tensor) -> torch.Tensor:
            grid = project_to_grid(points, K, viewmats, cfg.input_size)
            return self.xyzc_attn(tokens, sample_views(f2, grid))

        raw_b = self.body_head(vertices, vertex_features(vertices))
        if cfg.body_guided:
            raw_b = raw_b + body_prior(images, vertices, K, c2w)
        pos_b = (vertices + raw_b[..., :3].clamp(-1, 1)).clamp(-1, 1)
        body = torch.cat((pos_b, activate_attributes(raw_b)), -1)

        # Sparse volume around the refined body, sampled at the UNet Gaussians' centres.
        vol, grid = voxelize(pos_b, vertex_features(pos_b), cfg.voxel_size, cfg.voxel_padding, cfg.sparse_levels)
        volume_feats = sample_volumes(self.xyzc_net(vol), grid, pos_u)

        # Fusion: xyz residual on the UNet centres, every other attribute replaced.
        raw_m = self.fusion(torch.cat((pos_u, feats, volume_feats), -1), V)
        if cfg.body_guided:
            raw_m = raw_m + prior_u
        merged = torch.cat((pos_u + raw_m[..., :3].clamp(-1, 1), activate_attributes(raw_m)), -1)
        return HGMOutput(merged=merged, unet=unet, body=body)
