"""Headless Chromium driven over the Chrome DevTools protocol: open a page, run a script, take a
screenshot. Used by the viewer's tests and `hgm view --screenshot`; Debian's `chromium` is enough
(no driver, no browser download).

WebGL runs on SwiftShader (software), so it works without a GPU. The flags keep Chromium off
the network: this machine has none besides localhost.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--no-first-run", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
    "--hide-scrollbars", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
)


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or a page script failed."""


def find_chromium() -> str | None:
    """Path of a Chromium binary (Debian's `chromium` first), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 640, height: int = 480, binary: str | None = None, timeout_s: float = 30.0) -> None:
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError("Chromium not found: install Debian's `chromium` (make setup does, as root)")
        self.console: list[str] = []  # console messages and uncaught exceptions of the page
        self._next_id = 0
        self._profile = tempfile.TemporaryDirectory(prefix="hgm-chromium-")
        self._proc: subprocess.Popen | None = None
        self._ws = None
        self._closing = contextlib.ExitStack()

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        self._proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its helper processes share its group, so `__exit__` can end them all
        port = self._devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout_s) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("Chromium started without a page")
        self._ws = self._closing.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout_s))
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        self._closing.close()
        if self._proc is not None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            # Helpers that outlive the browser process still write into the profile (a suite run once
            # failed removing it: "Directory not empty"), so none may be left when it is removed.
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
        self._profile.cleanup()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:  # the whole group has already exited
            pass

    def _devtools_port(self) -> int:
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"Chromium exited at start (code {self._proc.returncode})")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.05)
        raise BrowserError(f"Chromium did not open its DevTools port within {self.timeout_s:.0f} s")

    def call(self, method: str, **params) -> dict:
        """One DevTools command; returns its result. Raises BrowserError on a protocol error."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            self._note_event(message)

    def _note_event(self, message: dict) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.consoleAPICalled":
            self.console.append(f"{params.get('type')}: " + " ".join(str(a.get("value", a.get("description", "")))
                                                                    for a in params.get("args", [])))
        elif message.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited). Raises BrowserError when it throws."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"page script failed: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None, period_s: float = 0.1):
        """Poll `expression` until it is truthy; returns its value. Raises BrowserError on time-out."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(period_s)
        raise BrowserError(f"timed out waiting for {expression!r}; page console: {self.console[-5:]}")

    def screenshot(self) -> np.ndarray:
        """`[H, W, 3]` uint8 of the viewport."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def show_page(browser: Browser, url: str, updates: int = 1, frames: int = 10, timeout_s: float = 60.0) -> None:
    """Open the `hgm view` page at `url` and wait until it shows its `updates`-th avatar and has drawn
    `frames` frames since (Spark sorts the splats in a worker: the first frames after an update may
    still use the previous order)."""
    browser.open(url)
    browser.wait_for(f"window.hgmView && window.hgmView.state.updates >= {updates}", timeout_s)
    wait_drawn(browser, frames, timeout_s)


def wait_drawn(browser: Browser, frames: int = 10, timeout_s: float = 60.0) -> None:
    """Wait until the page has drawn `frames` more frames since its latest avatar arrived."""
    browser.wait_for(f"window.hgmView.state.frames > window.hgmView.state.shown + {frames}", timeout_s)
