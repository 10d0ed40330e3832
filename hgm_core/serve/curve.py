"""CURVE security for the server side (worker and broker sockets). Keys are the ZPL certificate
files `hgm keys` writes (`NAME.key` public, `NAME.key_secret` public + secret)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


@dataclass(frozen=True)
class CurveServerKeys:
    """A server key pair and who may connect.

    Attributes:
        public, secret: z85 keys (40 bytes each).
        allowed_clients: directory of client public key files (`*.key`); None accepts any client
            that knows the server's public key (the link is still encrypted and the server authenticated).
    """

    public: bytes
    secret: bytes
    allowed_clients: Path | None = None

    @staticmethod
    def load(secret_file: str | Path, allowed_clients: str | Path | None = None) -> "CurveServerKeys":
        public, secret = zmq.auth.load_certificate(str(secret_file))
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key (use the .key_secret file)")
        if allowed_clients is not None and not Path(allowed_clients).is_dir():
            raise ValueError(f"allowed-clients directory {allowed_clients} does not exist")
        return CurveServerKeys(public, secret, Path(allowed_clients) if allowed_clients is not None else None)


@dataclass(frozen=True)
class CurveClientKeys:
    """Keys of a server process that itself connects as a CURVE client (a worker to its broker)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @staticmethod
    def load(server_key_file: str | Path, secret_file: str | Path) -> "CurveClientKeys":
        server_public, _ = zmq.auth.load_certificate(str(server_key_file))
        public, secret = zmq.auth.load_certificate(str(secret_file))
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key (use the .key_secret file)")
        return CurveClientKeys(server_public, public, secret)


def start_authenticator(context: zmq.Context, keys: CurveServerKeys) -> ThreadAuthenticator:
    """Start the ZAP handler that checks client keys for every CURVE server socket of `context`.
    Must run before those sockets bind; stop it when the sockets are closed."""
    auth = ThreadAuthenticator(context)
    auth.start()
    location = str(keys.allowed_clients) if keys.allowed_clients is not None else zmq.auth.CURVE_ALLOW_ANY
    auth.configure_curve(domain="*", location=location)
    return auth


def make_server(sock: zmq.Socket, keys: CurveServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, keys: CurveClientKeys) -> None:
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
