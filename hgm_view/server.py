"""The page and its WebSocket on one port, served from a background thread.

`GET /` is `web/index.html`, `/view.js` the page's code, `/vendor/...` the npm packages that
`make setup` installed into `<cache>/web/node_modules` (three.js, Spark), and `/ws` the WebSocket
that carries `AvatarUpdate` messages (`avatar.py`). A page that connects gets the latest avatar at
once, then every new one.
"""

from __future__ import annotations

import asyncio
import http
import threading
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from hgm_core.paths import cache_dir
from hgm_view.avatar import AvatarUpdate, encode_update

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/view.js": "view.js"}
REQUIRED_MODULES = ("three/build/three.module.js", "@sparkjsdev/spark/dist/spark.module.js")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".json": "application/json", ".map": "application/json",
                 ".wasm": "application/wasm"}


class ViewerSetupError(RuntimeError):
    """The page's npm packages are missing."""


def web_modules_dir() -> Path:
    """Where `make setup` installs the page's npm packages (`npm ci` of `web/package.json`)."""
    return cache_dir() / "web" / "node_modules"


def check_web_modules(modules: Path) -> None:
    """Raises ViewerSetupError naming the fix when three.js or Spark is not installed in `modules`."""
    missing = [m for m in REQUIRED_MODULES if not (modules / m).is_file()]
    if missing:
        raise ViewerSetupError(f"the page's npm packages are missing ({', '.join(missing)} under {modules}): "
                               "run `make setup` (npm ci of hgm_view/web/package.json into .cache/web)")


class ViewServer:
    """HTTP + WebSocket server for the page; `publish` may be called from any thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, modules: Path | None = None) -> None:
        self.host, self.port = host, port
        self.modules = web_modules_dir() if modules is None else Path(modules)
        check_web_modules(self.modules)
        self._loop = asyncio.new_event_loop()
        self._clients: set[ServerConnection] = set()
        self._latest: bytes | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hgm-view-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> ViewServer:
        """Start serving (port 0 picks a free one; `url` then names it). Raises OSError when the port is taken."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def publish(self, update: AvatarUpdate) -> int:
        """Send `update` to every connected page and keep it for pages that connect later; returns its sequence number."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = encode_update(update, seq)
            self._latest = message
        self._loop.call_soon_threadsafe(broadcast, self._clients, message)
        return seq

    def clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(timeout=5.0)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start(); the thread ends
            self._error = e
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        # No compression: float rows barely compress and deflate would cost the CPU the worker needs.
        async with serve(self._handle, self.host, self.port, process_request=self._http, compression=None,
                         max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop

    async def _handle(self, connection: ServerConnection) -> None:
        self._clients.add(connection)
        try:
            if self._latest is not None:
                await connection.send(self._latest)
            async for _ in connection:  # the page sends nothing we need; wait for it to go
                pass
        finally:
            self._clients.discard(connection)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # go on with the WebSocket handshake
        if path in PAGE_FILES:
            return _file_response(WEB_DIR / PAGE_FILES[path])
        if path.startswith("/vendor/"):
            target = (self.modules / path[len("/vendor/"):]).resolve()
            if target.is_relative_to(self.modules.resolve()):
                return _file_response(target)
        return _file_response(None)


def _file_response(path: Path | None) -> Response:
    if path is None or not path.is_file():
        status, body, kind = http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain"
    else:
        status, body, kind = http.HTTPStatus.OK, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    headers = Headers([("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
    return Response(status.value, status.phrase, headers, body)
