"""`hgm view [PLY | FOLDER] [--port N]`: the avatar as Gaussian splats in a browser.

With a path, the page shows that PLY or `hgm reconstruct` output folder and follows it: a rewrite
(another `hgm reconstruct -o FOLDER`) appears at once. Without one, it shows what the node publishes
on `human_gaussians` and `human_body` (needs rclpy; remap the topics the ROS way with --ros-args).
`--screenshot OUT.png` renders the page once in headless Chromium and exits.
"""

from __future__ import annotations

import argparse
import sys
import threading

from hgm_core.cli import CliError

HELP = "show the avatar as Gaussian splats in a browser, live (from a PLY, a reconstruct folder or the node's topics)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="3DGS PLY or `hgm reconstruct` output folder; omit to follow the "
                   "node's human_gaussians / human_body topics")
    p.add_argument("--port", type=int, default=8765, help="HTTP + WebSocket port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for "
                   "a headset on the LAN)")
    p.add_argument("--screenshot", metavar="PNG", help="render the page once in headless Chromium, save it, exit")
    p.add_argument("--size", default="800x600", help="--screenshot viewport WIDTHxHEIGHT (default 800x600)")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], help="ROS arguments (remappings) for "
                   "the topic subscriber")


def run(args: argparse.Namespace) -> int:
    from hgm_view.avatar import ViewInputError, load_path
    from hgm_view.server import ViewerSetupError, ViewServer

    if args.path:
        try:
            load_path(args.path)  # refuse a bad path with its own message before anything starts
        except ViewInputError as e:
            raise CliError(str(e)) from None
    try:
        server = ViewServer(args.host, args.port).start()
    except (ViewerSetupError, OSError) as e:
        raise CliError(str(e)) from None
    stop = threading.Event()
    feeder = None
    try:
        feeder, description = _start_feed(args, server, stop)
        if args.screenshot:
            return _screenshot(server.url, args.screenshot, args.size)
        print(f"hgm view: open {server.url} ({description}); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        stop.set()
        if feeder is not None:
            feeder.join(timeout=5.0)  # rclpy must be shut down before the interpreter exits
        server.close()
    return 0


def _start_feed(args: argparse.Namespace, server, stop: threading.Event) -> tuple[threading.Thread, str]:
    """Start the thread that feeds `server` until `stop`; returns it and a phrase for the start line."""
    if args.path:
        from hgm_view.sources import watch_path

        thread = threading.Thread(target=watch_path, args=(args.path, server.publish, stop), daemon=True,
                                  name="hgm-view-watch")
        thread.start()
        return thread, f"showing {args.path}, again whenever it changes"
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from hgm_view.ros_source import AvatarTopics
    except ImportError as e:
        raise CliError(f"no path given and ROS 2 is not importable ({e}): pass a PLY or a reconstruct folder") from None
    rclpy.init(args=["hgm_view", "--ros-args", *args.ros_args])
    node = AvatarTopics(server.publish)
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin() -> None:
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.2)
        finally:
            node.destroy_node()
            rclpy.try_shutdown()

    thread = threading.Thread(target=spin, daemon=True, name="hgm-view-ros")
    thread.start()
    return thread, f"following {node.resolve_topic_name('human_gaussians')} and {node.resolve_topic_name('human_body')}"


def _screenshot(url: str, out: str, size: str) -> int:
    from PIL import Image

    from hgm_view.browser import Browser, BrowserError, show_page

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must be WIDTHxHEIGHT, got {size!r}") from None
    try:
        with Browser(width, height) as browser:
            show_page(browser, url + "?dpr=1")
            Image.fromarray(browser.screenshot()).save(out)
    except BrowserError as e:
        raise CliError(str(e)) from None
    print(f"hgm view: wrote {out}", file=sys.stderr)
    return 0

