"""Which torch device the pipeline computes on: `auto`, `cpu`, `cuda` or `cuda:N`.

An entry point (`hgm serve|reconstruct|eval|train --device`) names the device; the `Reconstructor`
resolves it once (`resolve_device`) and hands the result to every stage component that computes
with torch. `auto` is CUDA when torch sees a CUDA device, else the CPU. Asking for CUDA on a machine
without it is a `DeviceUnavailableError` (wire kind `stage_unavailable`) at startup, never a crash
later. `device_report` says what a device is (name, memory), for health replies and reports.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from hgm_core.types import StageUnavailableError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when torch sees it, else cpu), cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceUnavailableError(StageUnavailableError):
    """The requested device does not exist here (no CUDA in this torch build or machine, or no such index)."""


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device` of the commands that build a `Reconstructor` (`ReconstructorConfig.device`); None
    keeps the config's. Importing this module does not load torch (the broker must not)."""
    parser.add_argument("--device", default=None, help=f"where the torch stages compute: {DEVICE_HELP} (default: the config's, auto)")


def check_device_name(name: str) -> str:
    """`name` if it is a device this module understands (`DEVICE_HELP`); ValueError otherwise.
    Checks the spelling only: whether the device exists is `resolve_device`'s question."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise ValueError(f"device must be {DEVICE_HELP}; got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device for `name` (`DEVICE_HELP`).

    Raises:
        ValueError: `name` is not a device name.
        DeviceUnavailableError: CUDA requested where torch sees none, or an index beyond the
            devices it sees.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES)"
        raise DeviceUnavailableError(f"device {name!r} requested, but {why}; use --device cpu or auto")
    index = device.index if device.index is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(f"device {name!r} requested, but torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def device_report(device: torch.device) -> dict[str, object]:
    """JSON facts about `device`: {"device", "torch"} and for CUDA also "gpu" (name),
    "gpu_memory_total_mb", "gpu_memory_allocated_mb", "gpu_capability", "cuda" (runtime version)."""
    import torch

    out: dict[str, object] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "gpu": props.name,
            "gpu_memory_total_mb": round(props.total_memory / 2**20),
            "gpu_memory_allocated_mb": round(torch.cuda.memory_allocated(device) / 2**20, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    return out

