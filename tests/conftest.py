"""Shared pytest setup: caches inside the work tree, deterministic torch, tiny fixtures."""

from __future__ import annotations

import os

import pytest
import torch

from hgm_core.runtime import configure_process

# The test session is an entry point: it decides caches and threads once, as the `hgm` commands do.
# One thread keeps timings comparable and matches the commands' default. Verbose: pytest captures
# output itself, so no stderr filter process is put under its capture (and the processes tests start
# inherit HGM_VERBOSE); tests/test_quiet.py checks the quiet default in fresh processes.
configure_process(threads=int(os.environ.get("HGM_TEST_THREADS", "1")), verbose=True)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def random_gaussians(n: int, *, seed: int = 0, spread: float = 0.3, dtype: torch.dtype = torch.float32):
    """N random but valid Gaussians around the origin (shared by several test modules)."""
    from hgm_core.gaussians import Gaussians

    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g, dtype=dtype) * spread,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1),
        scales=torch.rand(n, 3, generator=g, dtype=dtype) * 0.05 + 0.01,
        opacities=torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
    )
