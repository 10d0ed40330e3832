"""Child processes that must not outlive their parent: the worker the node starts, the compute
process a worker supervises. Standard library only, so the torch-free node imports it too."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """`preexec_fn` of a child process that must not outlive its parent (Linux; else a no-op).

    PDEATHSIG fires when the *thread* that spawned the child ends, so spawn from a thread that
    lives as long as the child should."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
