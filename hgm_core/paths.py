"""Where hgm keeps generated, heavy, git-ignored state (model caches, ported weights).

`HGM_CACHE_DIR` wins; otherwise `<checkout>/.cache` when running from a source checkout (so
`make` builds everything inside the work tree), else `~/.cache/hgm`. Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
"""Small files shipped inside the package (embedded checkpoint, sample frames)."""


def cache_dir() -> Path:
    env = os.environ.get("HGM_CACHE_DIR")
    if env:
        return Path(env)
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "hgm_core").is_dir():
        return checkout / ".cache"
    return Path.home() / ".cache" / "hgm"
