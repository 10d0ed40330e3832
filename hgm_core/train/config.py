"""`TrainConfig`: everything a training run depends on, saved as `config.json` in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RESERVED_SEEDS = (4242, 9090)
"""Dataset seeds kept for evaluation (issue #11): a run refuses a training or validation layout made from them."""


class TrainConfigError(ValueError):
    """An inconsistent training configuration (bad values, reserved seeds, unknown fields)."""


@dataclass(frozen=True)
class BodyNoise:
    """Perturbation of the ground-truth body that mimics a monocular fit's error (canonical units).

    The canonical frame hides a fit that is too far *and* proportionally too large (the image is the
    same), so what remains is misplacement relative to the image, mostly along the optical axis,
    pose error and shape error. The fit matches 2D keypoints and the silhouette to a few pixels (README:
    3.7-4.8 px at 512^2, about 1 px at 128^2), so image-plane error is kept small and the depth error
    larger. Each sample draws:

    Attributes:
        clean_prob: probability of the exact body (no noise).
        rotation_deg: sd of a rotation about the body centre (random axis).
        translation: sd of the shift across the image (x, y).
        depth: sd of the shift along the input camera's axis (z).
        scale: sd of a uniform scale error; anisotropy: sd of an extra per-axis scale error.
        bumps / bump_amplitude / bump_radius: a smooth displacement field, the sum of `bumps`
            Gaussian blobs centred on random vertices with offsets of sd `bump_amplitude` (local pose
            and shape error, e.g. an arm a few centimetres off).
    """

    clean_prob: float = 0.15
    rotation_deg: float = 2.0
    translation: float = 0.008
    depth: float = 0.05
    scale: float = 0.02
    anisotropy: float = 0.015
    bumps: int = 8
    bump_amplitude: float = 0.012
    bump_radius: float = 0.12


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Data:
        train_data: render layouts (hgm datagen output or THuman2.0 renders) to train on; layouts
            still being generated are rescanned every `rescan_minutes`.
        val_data: the fixed held-out layout or pack ("" = no validation); val_subjects: how many of its
            subjects (first by id).
        cache_dir: where subjects are cached at `image_size` (`hgm_core.data.cache`).
        image_size: cache, network-input and supervision resolution (must equal the preset's input size).
        input_views / input_view_probs: ring views that serve as the input view (0 = front; 1 and 11
            are ±30°: the subject is seen turned), and how often.
        supervision_views: views rendered and scored per step (the input view plus random others).
        aim_input: make the input view as inference does: the camera turned to look at the
            (perturbed) body's box centre (`sample.aim_input`, `model.predict.network_view`); a back view
            (two views) is aimed as inference aims it (`model.predict.extra_network_view`).
        supervision_crop: render and score each supervision view on a square window around the
            person (`sample.crop_supervision`) at this many pixels; 0 = whole frames. The person
            covers a small part of a frame, so a whole-frame loss is mostly white background.
        crop_margin: the window's margin around the person's box, as a share of its longer side.
        batch_size: samples per optimiser step, one forward pass (1 on a CPU; more on a GPU).
    Model:
        preset, num_views: `hgm_core.model.config_for(preset, num_views=...)`.
    Loss (paper: L2 RGB + LPIPS-VGG + L2 mask, weight 1 each):
        lambda_rgb, lambda_mask, lambda_lpips: weights; lambda_depth: L1 depth on the covered pixels
            (canonical units; needs data with depth maps, e.g. packs of our layouts; 0 = off);
            lpips_views: views per step given to LPIPS,
            each on a `lpips_crop` square window on the person (VGG on a whole 128^2 view costs
            more than the rest of a CPU step; the other views still get the L2 terms).
    Optimiser:
        lr, warmup_steps, weight_decay, grad_clip: Adam(W) with linear warm-up, gradient-norm clip.
        init_from: warm start: network weights (not the optimiser) from another run's folder
            (its `state.pt`) or a checkpoint folder; "" = random initialisation.
    Schedule:
        max_steps; checkpoint_minutes (resumable state); val_minutes (validation JSON + grid);
        seed (model init and data stream).
    Bookkeeping (written into the model card):
        train_seeds, val_seed: the datagen seeds of the layouts above.
    """

    train_data: tuple[str, ...] = ()
    val_data: str = ""
    cache_dir: str = ""
    val_subjects: int = 16
    image_size: int = 128
    input_views: tuple[int, ...] = (0, 1, 11)
    input_view_probs: tuple[float, ...] = (0.5, 0.25, 0.25)
    supervision_views: int = 4
    aim_input: bool = False
    supervision_crop: int = 0
    crop_margin: float = 0.1
    batch_size: int = 1
    rescan_minutes: float = 5.0
    preset: str = "tiny"
    num_views: int = 1
    lambda_rgb: float = 1.0
    lambda_mask: float = 1.0
    lambda_lpips: float = 1.0
    lambda_depth: float = 0.0
    lpips_views: int = 1
    lpips_crop: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    init_from: str = ""
    max_steps: int = 200_000
    checkpoint_minutes: float = 5.0
    val_minutes: float = 10.0
    seed: int = 0
    body_noise: BodyNoise = field(default_factory=BodyNoise)
    train_seeds: tuple[int, ...] = ()
    val_seed: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise TrainConfigError(msg)

        need(len(self.input_views) == len(self.input_view_probs) and len(self.input_views) > 0,
             "input_views and input_view_probs must be non-empty and of one length")
        need(self.supervision_views >= 1, "supervision_views must be >= 1")
        need(0 <= self.lpips_views <= self.supervision_views, "lpips_views must be in [0, supervision_views]")
        need(self.lpips_crop >= 32, "lpips_crop must be >= 32 (VGG's five poolings)")
        need(self.supervision_crop == 0 or self.supervision_crop >= 32, "supervision_crop must be 0 (whole frames) or >= 32")
        need(self.crop_margin >= 0, "crop_margin must be >= 0")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.lr > 0 and self.max_steps > 0, "lr and max_steps must be > 0")
        for s in (*self.train_seeds, *(() if self.val_seed is None else (self.val_seed,))):
            need(s not in RESERVED_SEEDS, f"seed {s} is reserved for evaluation ({RESERVED_SEEDS}); never train or validate on it")
        need(self.val_seed is None or self.val_seed not in self.train_seeds, "the validation seed is also a training seed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"unknown TrainConfig fields {unknown}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(kw.get("body_noise"), dict):
            kw["body_noise"] = BodyNoise(**kw["body_noise"])
        return cls(**kw)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
