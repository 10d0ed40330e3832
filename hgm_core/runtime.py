"""Process-wide settings, decided once by an entry point (`hgm` commands, the worker, tests, benches).

Library code never changes thread counts or environment variables: a library that does surprises
every program embedding it. The entry points call `configure_process` before they import the heavy
stacks, and `set_compute_threads` when they know how many cores a job should use.
"""

from __future__ import annotations

import os

from hgm_core.paths import cache_dir


def configure_process(threads: int | None = None) -> None:
    """Point third-party caches into `cache_dir()` (unless the user chose other places), pick
    numba's threading layer, and optionally set the compute thread count.

    Must run before `import anny`, `import warp` and `import numba` (they read these at import).
    """
    root = cache_dir()
    os.environ.setdefault("ANNY_CACHE_DIR", str(root / "anny"))
    os.environ.setdefault("WARP_CACHE_PATH", str(root / "warp"))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / "numba"))
    # numba's OpenMP layer and torch's OpenMP runtime slow each other down badly here (torch ops on
    # [N] tensors went from ~15 ms to ~1 s after a numba parallel region); the workqueue layer does
    # not. It must not be entered from several Python threads at once (numba raises if it is).
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    # OpenCV reads this at its first EXR decode; the synthetic data's HDRIs are EXR files.
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    if threads:
        set_compute_threads(threads)


def set_compute_threads(threads: int) -> None:
    """Use `threads` cores for torch and for the renderer's numba kernels (one knob for both).

    The body fit runs many small ops on ~14k vertices where extra threads only add synchronisation:
    on the 2-core reference machine under load the sample frame fits in 8.5 s with 1 thread and
    77 s with 2, so the commands default to 1.
    """
    import numba
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
