"""`HGMConfig`: every size of the network in one dataclass, plus the `big` / `small` / `tiny` presets.

The config is what a checkpoint is checked against (`hgm_core.model.checkpoint`): two configs that
compare equal build networks with identical state_dict keys and shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

BODY_MODEL_VERTICES: dict[str, int] = {"anny": 13718, "smplx": 10475, "smpl": 6890}
"""Vertex count of each supported body model; the body branch has one learnable token per vertex."""

PRESETS = ("big", "small", "tiny")
WEIGHTLESS_FIELDS = ("num_views", "input_fill")
"""Fields that change how inputs are made or how many views are grouped, not any weight: networks whose
configs differ only in these share a state_dict (a warm start may cross them)."""


class ConfigError(ValueError):
    """Raised for inconsistent or unknown model configurations."""


@dataclass(frozen=True)
class HGMConfig:
    """Sizes of the HGM network (docs/reference/hgm_official_code.md §3; paper appendix "Network structures").

    UNet branch (LGM topology and parameter names):
        input_size: square input resolution H = W.
        down_channels / down_attention: one entry per down block; every block but the last halves
            the resolution. Attention is multi-view self-attention over all pixels of all views.
        up_channels / up_attention: one entry per up block; every block but the last doubles it.
        layers_per_block: ResNet layers per down block (up blocks use one more).
        attention_heads, norm_groups: of the UNet's attention and GroupNorm.
    Body branch:
        body_model / num_vertices: the body model whose vertices carry the tokens.
        token_dim: width of the vertex tokens, image features and voxel features (official 32).
        attn_heads: heads of the vertex cross-attention (official 8, d_k = token_dim / heads).
        token_key: the token is also a key/value of its own cross-attention, beside the V view
            samples. Officially (False) the keys are the views only, so with one view the softmax
            is constant and the tokens get exactly zero gradient (docs/reference/hgm_official_code.md §3.3).
        encoder_channels / encoder_blocks: widths and BasicBlock counts of the image encoder's
            three stages (official ResUNet-34-ish: (64, 128, 256), (3, 4, 6)).
        body_head_hidden: width of the per-vertex MLP that turns [xyz, feature] into a Gaussian.
    Sparse volume:
        voxel_size: edge of a level-0 voxel in canonical units (official 0.005); each of the
            `sparse_levels` stride-2 levels doubles it.
        voxel_padding: margin added around the refined body's bounding box.
    Fusion transformer:
        fusion_dim, fusion_depth, fusion_heads: width, number of blocks and heads.
        fusion_window: side of the square window of splat pixels that attend to each other
            (odd blocks shift it by half), so memory is O(N * window^2), not O(N^2).
        fusion_chunk: windows processed per scaled_dot_product_attention call (bounds peak memory).
    Guidance:
        body_guided: heads predict residuals on the body-guided priors of `hgm_core.model.guide`
            (body set coloured from the input, pixel-aligned set on the input rays at the body's
            depth) instead of absolute values. False is the official function (`big`); the CPU
            presets train with True because from-scratch prediction learns too slowly there.
    Views:
        num_views: 1 (front) or 2 (front + back); fixes the cross-view attention grouping.
        fovy_deg: default vertical field of view of `default_views` (LGM/HGM `opt.fovy`).
        input_fill: how a live image becomes the network's input view (`hgm_core.model.predict.network_view`):
            0 = a fixed focal length (`TRAIN_FOCAL_RATIO` * input_size), so a person 2.5 m away covers
            about half the frame's height and 4% of its pixels; > 0 = the focal length that makes the
            (fitted) body's box span this share of the frame: a normalised person crop, so most of the
            input pixels, and of the pixel-aligned Gaussians, land on the person.
    """

    name: str = "tiny"
    input_size: int = 128
    down_channels: tuple[int, ...] = (16, 32, 64, 128)
    down_attention: tuple[bool, ...] = (False, False, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (128, 64, 32)
    up_attention: tuple[bool, ...] = (True, False, False)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_groups: int = 8
    body_model: str = "anny"
    num_vertices: int = BODY_MODEL_VERTICES["anny"]
    token_dim: int = 32
    attn_heads: int = 8
    token_key: bool = True
    encoder_channels: tuple[int, int, int] = (16, 32, 64)
    encoder_blocks: tuple[int, int, int] = (1, 1, 1)
    body_head_hidden: int = 64
    voxel_size: float = 0.02
    voxel_padding: float = 0.05
    sparse_levels: int = 4
    fusion_dim: int = 64
    fusion_depth: int = 2
    fusion_heads: int = 4
    fusion_window: int = 8
    fusion_chunk: int = 256
    body_guided: bool = False
    num_views: int = 1
    fovy_deg: float = 49.1
    input_fill: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def splat_size(self) -> int:
        """Side S of the per-view Gaussian map: S * S Gaussians per view."""
        return self.input_size // 2 ** (len(self.down_channels) - 1) * 2 ** (len(self.up_channels) - 1)

    @property
    def num_gaussians(self) -> int:
        """Gaussians of the merged (and of the UNet) set: V * S * S."""
        return self.num_views * self.splat_size**2

    @property
    def feature_dim(self) -> int:
        """Channels of the UNet's last decoder activations (`feats`)."""
        return self.up_channels[-1]

    @property
    def sparse_dim(self) -> int:
        """Channels of the sampled sparse volume: one `token_dim` block per level."""
        return self.token_dim * self.sparse_levels

    def validate(self) -> "HGMConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"HGMConfig({self.name}): {msg}")

        need(len(self.down_channels) == len(self.down_attention), "down_channels and down_attention differ in length")
        need(len(self.up_channels) == len(self.up_attention), "up_channels and up_attention differ in length")
        need(2 <= len(self.up_channels) <= len(self.down_channels), "need 2 <= len(up_channels) <= len(down_channels)")
        need(self.up_channels[0] == self.down_channels[-1], "up_channels[0] must equal down_channels[-1]")
        need(self.input_size % 2 ** (len(self.down_channels) - 1) == 0, "input_size must be divisible by 2^(down blocks - 1)")
        need(self.input_size % 16 == 0, "input_size must be divisible by 16 (image encoder strides)")
        chans = self.down_channels + self.up_channels
        need(all(c % self.norm_groups == 0 for c in chans), f"every channel count must divide into {self.norm_groups} groups")
        need(all(c % self.attention_heads == 0 for c in chans), "attention_heads must divide every channel count")
        need(self.body_model in BODY_MODEL_VERTICES, f"unknown body_model {self.body_model!r}; choose from {sorted(BODY_MODEL_VERTICES)}")
        need(self.num_vertices == BODY_MODEL_VERTICES[self.body_model],
             f"body_model {self.body_model!r} has {BODY_MODEL_VERTICES[self.body_model]} vertices, config says {self.num_vertices}")
        need(self.token_dim % self.attn_heads == 0, "attn_heads must divide token_dim")
        need(self.fusion_dim % self.fusion_heads == 0, "fusion_heads must divide fusion_dim")
        need(self.splat_size % self.fusion_window == 0, f"fusion_window must divide splat_size {self.splat_size}")
        need(self.fusion_window % 2 == 0, "fusion_window must be even (odd blocks shift by half a window)")
        need(self.num_views in (1, 2), "num_views must be 1 (front) or 2 (front + back)")
        need(self.voxel_size > 0 and self.voxel_padding >= 0, "voxel_size must be > 0 and voxel_padding >= 0")
        need(self.sparse_levels >= 1, "sparse_levels must be >= 1")
        need(0.0 <= self.input_fill <= 1.0, "input_fill must be in [0, 1] (0 = fixed focal length)")
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shares_weights(self, other: "HGMConfig") -> bool:
        """Whether a network of `other` has exactly this network's weights (`WEIGHTLESS_FIELDS` aside)."""
        a, b = self.to_dict(), other.to_dict()
        return all(a[k] == b[k] for k in a if k not in WEIGHTLESS_FIELDS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HGMConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown HGMConfig fields {unknown}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def diff(self, other: "HGMConfig") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: `{name: (self value, other value)}`."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


_BIG = dict(
    name="big",
    input_size=512,
    down_channels=(64, 128, 256, 512, 1024, 1024),
    down_attention=(False, False, False, True, True, True),
    up_channels=(1024, 1024, 512, 256, 128),
    up_attention=(True, True, True, False, False),
    layers_per_block=2,
    attention_heads=16,
    norm_groups=32,
    encoder_channels=(64, 128, 256),
    encoder_blocks=(3, 4, 6),
    body_head_hidden=256,
    voxel_size=0.005,
    fusion_dim=256,
    fusion_depth=4,
    fusion_heads=8,
    fusion_window=16,
    fusion_chunk=64,
)
_SMALL = dict(
    name="small",
    input_size=256,
    down_channels=(32, 64, 128, 256, 512),
    down_attention=(False, False, False, True, True),
    up_channels=(512, 256, 128, 64),
    up_attention=(True, True, False, False),
    layers_per_block=1,
    attention_heads=8,
    norm_groups=16,
    encoder_channels=(32, 64, 128),
    encoder_blocks=(1, 2, 2),
    body_head_hidden=128,
    voxel_size=0.01,
    fusion_dim=128,
    fusion_depth=2,
    fusion_heads=8,
    fusion_window=8,
    fusion_chunk=256,
    body_guided=True,
)
_TINY: dict[str, Any] = dict(name="tiny", body_guided=True, down_attention=(False, False, False, True), input_fill=0.8)
"""`tiny` sees a person crop (`input_fill`) and keeps attention at 16^2 only: the 32^2 self-attention was half
of a CPU training step (0.56 of 1.15 s forward + backward) for a person who covered 4% of the input."""


def config_for(preset: str, *, num_views: int = 1, body_model: str = "anny", **overrides: Any) -> HGMConfig:
    """A preset (`big` = the paper, `small`, `tiny` = CPU-live) for a view count and body model.

    Extra keyword arguments override single fields (e.g. `voxel_size=0.005`).
    """
    table = {"big": _BIG, "small": _SMALL, "tiny": _TINY}
    if preset not in table:
        raise ConfigError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if body_model not in BODY_MODEL_VERTICES:
        raise ConfigError(f"unknown body_model {body_model!r}; choose from {sorted(BODY_MODEL_VERTICES)}")
    base = HGMConfig(**table[preset])
    return replace(base, num_views=num_views, body_model=body_model, num_vertices=BODY_MODEL_VERTICES[body_model], **overrides)
