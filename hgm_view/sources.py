"""What feeds the page: a file or `hgm reconstruct` folder (re-sent whenever it changes) or the
node's topics (`ros_source.py`)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from hgm_view.avatar import AvatarUpdate, ViewInputError, load_path, watched_file

log = logging.getLogger("hgm_view")


def _signature(ply: Path) -> tuple:
    """What changes when `hgm reconstruct` rewrites its folder: the PLY's and body.json's size and mtime."""
    out = []
    for f in (ply, ply.parent / "body.json"):
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def watch_path(path: str | os.PathLike, publish: Callable[[AvatarUpdate], object], stop: threading.Event,
               period_s: float = 0.5) -> None:
    """Publish the avatar at `path` (PLY or output folder) now and again whenever it changes, until `stop`.

    Raises:
        ViewInputError: `path` is unusable at the start (later read errors, e.g. a file being
            rewritten, are retried at the next change).
    """
    ply = watched_file(path)
    seen = _signature(ply)
    publish(load_path(path))
    while not stop.wait(period_s):
        now = _signature(ply)
        if now == seen or None in now[:1]:
            continue
        try:
            update = load_path(path)
        except ViewInputError as e:  # caught mid-write: the next change (or poll) tries again
            log.debug("not yet readable: %s", e)
            continue
        seen = now
        publish(update)
