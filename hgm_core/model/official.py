"""The official HGM weights: which of their tensors map onto `HGM` and how (`convert_official_state_dict`).

The official state_dict's keys and shapes are listed in docs/reference/hgm_official_state_dict.tsv;
`OFFICIAL_KEY_MAP` names the modules that line up with ours, `OFFICIAL_IGNORED` those deliberately
left out and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import torch

from hgm_core.model.checkpoint import CheckpointError
from hgm_core.model.config import HGMConfig
from hgm_core.model.hgm import HGM

OFFICIAL_KEY_MAP: tuple[tuple[str, str, str], ...] = (
    ("unet.", "unet.", "LGM UNet: identical names and shapes for `big` (also loads LGM-big `unet.*`)"),
    ("conv.", "conv.", "1x1 conv 14->14 after the UNet"),
    ("unet2.", "unet2.", "image encoder (ResUNet): identical names and shapes for `big`"),
    ("c.", "c.", "vertex tokens: only when the body model matches (SMPL-X 10,475; released training used SMPL 6,890)"),
    ("xyzc_attn.", "xyzc_attn.", "vertex cross-attention (w_qs, w_ks, w_vs, fc)"),
    ("xyzc_net.", "xyzc_net.", "SparseConvNet: same indices; spconv KRSC weights [out, 3, 3, 3, in] by identity"),
)
"""(official prefix, our prefix, note) for every module that lines up with ours."""

OFFICIAL_IGNORED: tuple[tuple[str, str], ...] = (
    ("unet.norm_out_2.", "never called in the official forward"),
    ("unet.conv_out_2.", "never called in the official forward"),
    ("xyzc_attn.layer_norm.", "never called (sum=False)"),
    ("res.", "MixNet fusion (raw-reshape attention): replaced by our fusion transformer"),
    ("net.", "SMPL head, missing from the release: replaced by our per-vertex body_head"),
    ("m_smplx.", "licence-gated SMPL-X data embedded in the weights: never copied"),
    ("smpler.", "SMPLer estimator: not part of this network"),
    ("lpips_loss.", "loss network"),
)
"""Official prefixes that are deliberately not converted, and why."""

SpconvLayout = Literal["krsc", "rsck", "rskc"]


@dataclass(frozen=True)
class Conversion:
    """Result of `convert_official_state_dict`.

    Attributes:
        state_dict: our keys -> tensors (load with `model.load_state_dict(..., strict=False)`).
        skipped: official keys deliberately not converted (`OFFICIAL_IGNORED`).
        unmatched: official keys no rule covers (unexpected content of the checkpoint).
        uncovered: our keys the checkpoint did not provide (they keep their initialisation).
    """

    state_dict: dict[str, torch.Tensor]
    skipped: list[str]
    unmatched: list[str]
    uncovered: list[str]


def _spconv_to_krsc(w: torch.Tensor, layout: SpconvLayout) -> torch.Tensor:
    # Shapes cannot tell the layouts apart when in == out (docs/reference/hgm_official_code.md §7), hence the explicit switch.
    if layout == "krsc":
        return w
    if layout == "rsck":  # spconv 1.x: [3, 3, 3, in, out]
        return w.permute(4, 0, 1, 2, 3)
    if layout == "rskc":  # spconv 2.0/2.1 native: [3, 3, 3, out, in]
        return w.permute(3, 0, 1, 2, 4)
    raise CheckpointError(f"unknown spconv layout {layout!r}; choose krsc, rsck or rskc")


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor], config: HGMConfig, spconv_layout: SpconvLayout = "krsc"
) -> Conversion:
    """Map an official HGM state_dict onto an `HGM(config)` state_dict.

    Shapes are checked against `config` (built on the meta device, so no memory is used);
    a mapped key with the wrong shape raises `CheckpointError` naming it.
    """
    with torch.device("meta"):
        expected = HGM(config).state_dict()
    out: dict[str, torch.Tensor] = {}
    skipped, unmatched, bad = [], [], []
    for key, value in official.items():
        key = key.removeprefix("module.")
        if any(key.startswith(p) for p, _ in OFFICIAL_IGNORED):
            skipped.append(key)
            continue
        rule = next(((src, dst) for src, dst, _ in OFFICIAL_KEY_MAP if key.startswith(src)), None)
        if rule is None:
            unmatched.append(key)
            continue
        ours = rule[1] + key[len(rule[0]):]
        if key.startswith("xyzc_net.") and value.ndim == 5:
            value = _spconv_to_krsc(value, spconv_layout)
        if ours not in expected or expected[ours].shape != value.shape:
            want = list(expected[ours].shape) if ours in expected else "no such key"
            bad.append(f"{key} {list(value.shape)} -> {ours} ({want})")
            continue
        out[ours] = value
    if bad:
        raise CheckpointError(f"{len(bad)} official tensors do not fit config {config.name!r}: " + "; ".join(bad[:5]))
    uncovered = sorted(set(expected) - set(out))
    return Conversion(out, sorted(skipped), sorted(unmatched), uncovered)


def official_shapes(tsv: str | Path) -> dict[str, tuple[list[int], str]]:
    """Parse `hgm_official_state_dict.tsv` (key, shape, dtype per line) -> {key: (shape, dtype)}."""
    table: dict[str, tuple[list[int], str]] = {}
    for line in Path(tsv).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        table[key] = (json.loads(shape), dtype)
    return table
