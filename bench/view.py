"""`hgm view`'s page in headless Chromium (software WebGL, SwiftShader): how long one avatar update
takes on the page (decode + writing the splats; `state.updateMs`), a new avatar (new mesh) vs a
re-posed one of the same size (written in place, as in live mode), and the frame rate it then draws.
The in-place median is compared with the new-mesh median of the same run.

    .venv/bin/python bench/view.py [--sizes 5000 15000] [--updates 8] [--size 480x360] [--out PATH]

Software WebGL on a loaded 2-core CPU: frame rates say little about a browser with a GPU; the update
times are JavaScript on the CPU either way. Writes JSON to stdout and bench/results/view.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
from _results import add_out_argument, write_results

from hgm_view.avatar import AvatarUpdate
from hgm_view.browser import Browser, wait_drawn
from hgm_view.server import ViewServer


def _rows(n: int, seed: int) -> np.ndarray:
    """A 1.7 m column of n splats 3 m in front of the camera (what matters here is the count)."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((n, 14), np.float32)
    raw[:, 0] = rng.normal(0, 0.15, n)
    raw[:, 1] = rng.uniform(-0.85, 0.85, n)
    raw[:, 2] = 3.0 + rng.normal(0, 0.1, n)
    raw[:, 3:6] = rng.normal(0, 1, (n, 3))
    raw[:, 6] = 2.0
    raw[:, 7:10] = np.log(0.01)
    raw[:, 10] = 1.0
    return raw


def _publish_and_time(server: ViewServer, browser: Browser, raw: np.ndarray, seq: int) -> float:
    server.publish(AvatarUpdate(raw=raw, source="bench"))
    browser.wait_for(f"window.hgmView.state.seq >= {seq}", timeout_s=120)
    return float(browser.evaluate("window.hgmView.state.updateMs"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 15000], help="avatar sizes (splats)")
    parser.add_argument("--updates", type=int, default=8, help="updates per kind and size (median)")
    parser.add_argument("--size", default="480x360", help="viewport WIDTHxHEIGHT")
    add_out_argument(parser)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    rows, seq = [], 0
    with ViewServer(port=0) as server, Browser(width, height, timeout_s=120) as browser:
        browser.open(server.url + "?dpr=1")
        browser.wait_for("window.hgmView && window.hgmView.state.connected", timeout_s=60)
        for n in args.sizes:
            new_mesh, in_place = [], []
            for i in range(args.updates):
                seq += 1  # a different size each time: the page builds a new mesh
                new_mesh.append(_publish_and_time(server, browser, _rows(n + 1 + i % 2, i), seq))
            for i in range(args.updates):
                seq += 1  # the same size: written into the splats shown
                in_place.append(_publish_and_time(server, browser, _rows(n + 1 + (args.updates - 1) % 2, 100 + i), seq))
            wait_drawn(browser, frames=5, timeout_s=120)
            frames0, t0 = browser.evaluate("window.hgmView.state.frames"), time.perf_counter()
            time.sleep(3.0)
            fps = (browser.evaluate("window.hgmView.state.frames") - frames0) / (time.perf_counter() - t0)
            row = {"splats": n, "new_mesh_ms": statistics.median(new_mesh), "in_place_ms": statistics.median(in_place),
                   "fps_software_gl": fps}
            row["in_place_over_new_mesh"] = row["in_place_ms"] / row["new_mesh_ms"]
            rows.append(row)
            print(f"{n:>6} splats: new mesh {row['new_mesh_ms']:.0f} ms, in place {row['in_place_ms']:.0f} ms, "
                  f"{fps:.1f} fps (software GL)", flush=True)
    write_results("view", {"machine": platform.machine(), "viewport": [width, height], "updates": args.updates,
                           "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
