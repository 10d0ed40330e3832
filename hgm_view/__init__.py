"""`hgm view`: the avatar as Gaussian splats in a browser, fed live over a WebSocket.

`avatar.py` holds what the page shows (`AvatarUpdate`) and its one binary message; `server.py`
serves the page and the WebSocket; `sources.py` feeds it from a PLY file or a `hgm reconstruct`
output folder (re-sent when it changes), `ros_source.py` from the node's topics; `browser.py` drives headless
Chromium for tests and screenshots. The page itself is `web/` (three.js + Spark from npm, installed
by `make setup` into the cache, never committed). No rendering or model code: the page draws.
"""
