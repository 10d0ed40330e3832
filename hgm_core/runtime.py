"""Process-wide settings, decided once by an entry point (`hgm` commands, the worker, tests, benches).

Library code never changes thread counts, environment variables, warning filters or log levels: a
library that does surprises every program embedding it. The entry points call `configure_process`
before they import the heavy stacks, and `set_compute_threads` when they know how many cores a job
should use.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import pty
import re
import select
import subprocess
import sys
import termios
import tty
import warnings
from collections.abc import Callable
from types import ModuleType

from hgm_core.paths import cache_dir

VERBOSE_ENV = "HGM_VERBOSE"
"""`1`: show third-party output (what `hgm -v` sets; child processes such as the node's local worker inherit it)."""

_FILTER_ENV = "HGM_STDERR_FILTER"
"""Names the pipe (or pseudo-terminal) that fd 2 was turned into, so that a child process still writing
into it (the node's local worker, an isolated compute) does not stack a second filter on it."""

NATIVE_NOISE = re.compile(
    rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "  # absl INFO and WARNING lines; E (error) and F (fatal) pass
    rb"|Warp CUDA warning: Could not find or load the NVIDIA CUDA driver\."
)
"""Lines that C++ libraries write straight to fd 2 whatever the settings (mediapipe's TFLite and absl
logging, warp's CUDA probe on a CPU-only host); matched at the start of a line."""

_QUIET_LOGGERS = ("anny",)
"""Python loggers of third-party libraries whose INFO lines are progress chatter ("Loading cached model data")."""

_QUIET_WARNING_MODULES = r"google\.protobuf"
"""Deprecation notices raised inside protobuf on mediapipe's behalf (SymbolDatabase.GetPrototype)."""


def configure_process(threads: int | None = None, verbose: bool = False) -> None:
    """Point third-party caches into `cache_dir()` (unless the user chose other places), pick
    numba's threading layer, hide third-party noise unless `verbose` (or `HGM_VERBOSE=1`), and
    optionally set the compute thread count.

    Must run before `import anny`, `import warp`, `import numba` and `import mediapipe` (they read
    these at import or at their first use).
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
    if verbose or os.environ.get(VERBOSE_ENV) == "1":
        os.environ[VERBOSE_ENV] = "1"
    else:
        _hide_third_party_noise()
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


def _hide_third_party_noise() -> None:
    warnings.filterwarnings("ignore", module=_QUIET_WARNING_MODULES)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Warp prints its banner and a line per module load to stdout unless told otherwise; importing it
    # here would cost every command ~0.5 s, so its level is set the moment something imports it.
    _configure_on_import("warp", _quiet_warp)
    if os.environ.get(_FILTER_ENV) != _fd_identity(2):
        _filter_native_stderr()


def _quiet_warp(warp: ModuleType) -> None:
    warp.config.log_level = warp.LOG_WARNING


def _configure_on_import(name: str, configure: Callable[[ModuleType], None]) -> None:
    """Call `configure(module)` right after module `name` is first imported (now, if it already is)."""
    if name in sys.modules:
        configure(sys.modules[name])
    else:
        sys.meta_path.insert(0, _ConfigureOnImport(name, configure))


class _ConfigureOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, configure: Callable[[ModuleType], None]) -> None:
        self._name, self._configure = name, configure

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)  # once; and lets the real finders answer the lookup below
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module, configure = spec.loader.exec_module, self._configure

            def exec_then_configure(module: ModuleType) -> None:
                exec_module(module)
                configure(module)

            spec.loader.exec_module = exec_then_configure  # this spec's own loader: nothing else sees it
        return spec


def _filter_native_stderr() -> None:
    """Send fd 2 (and a terminal's fd 1) through a child process that drops `NATIVE_NOISE` lines and
    passes everything else.

    The filter is a separate process so that whatever this process writes just before it crashes
    (a C++ fatal log, a segfault report) still gets out. At exit, fd 2 is restored and the filter
    drained, so the last lines are printed before the shell prompt returns. On a terminal, fd 2
    becomes a pseudo-terminal of the same size, so progress bars and coloured logs still see one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    # Which of fds 1 and 2 go through the filter: stdout too when both show on the same terminal,
    # so that its lines and stderr's stay in the order they were written.
    fds = [2]
    if os.isatty(2):
        reader, writer = pty.openpty()
        tty.setraw(writer)  # pass bytes as written; the real terminal does its own line handling
        fcntl.ioctl(writer, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, bytes(8)))
        if os.isatty(1) and os.fstat(1).st_rdev == os.fstat(2).st_rdev:
            fds.append(1)
    else:
        # Progress bars would pile up in a log file as one long line of redraws.
        os.environ.setdefault("TQDM_DISABLE", "1")
        reader, writer = os.pipe()
    originals = {fd: os.dup(fd) for fd in fds}
    filter_ = subprocess.Popen([sys.executable, "-c", "from hgm_core.runtime import _copy_stderr; _copy_stderr()"],
                               stdin=reader, stdout=originals[2], stderr=originals[2],
                               start_new_session=True)  # Ctrl-C ends us, not the filter, which then drains
    os.close(reader)
    for fd in fds:
        os.dup2(writer, fd)
    os.close(writer)
    os.environ[_FILTER_ENV] = _fd_identity(2)
    owner = os.getpid()

    def restore() -> None:
        if os.getpid() != owner:  # a forked child inherited this hook; the filter is not its child
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in originals.items():  # the filter sees end-of-file once no child process holds a copy either
            os.dup2(original, fd)
        try:
            filter_.wait(timeout=2)
        except subprocess.TimeoutExpired:  # a detached grandchild still writes through it; let it
            pass

    atexit.register(restore)


def _fd_identity(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def _copy_stderr(source: int = 0, sink: int = 1, hold_s: float = 0.1) -> None:
    """The filter process: copy `source` to `sink` line by line, leaving out `NATIVE_NOISE` lines.

    An incomplete line is held back only briefly (the libraries write each noise line in one
    write), so progress bars that redraw with a carriage return still show as they happen.
    """
    pending = b""
    while True:
        ready, _, _ = select.select([source], [], [], hold_s if pending else None)
        try:
            chunk = os.read(source, 65536) if ready else b""
        except OSError:  # a pseudo-terminal's end of file
            chunk = b""
        if ready and not chunk:  # end of file: every writer is gone
            os.write(sink, pending)
            return
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not NATIVE_NOISE.match(line))
        if not ready or b"\r" in pending:
            out, pending = out + pending, b""
        if out:
            os.write(sink, out)
