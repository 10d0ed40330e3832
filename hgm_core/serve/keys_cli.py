"""`hgm keys`: write CURVE key pairs for `hgm serve` and its clients (ZPL certificate files)."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import zmq
import zmq.auth

from hgm_core.cli import CliError

HELP = "write CURVE key pairs (server + clients) so `hgm serve` can require authenticated clients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, help="directory to write the keys into")
    parser.add_argument("--server", default="server", help="name of the server key pair (default: server)")
    parser.add_argument("--clients", default="client", help="comma-separated client key pair names (default: client)")
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")


def run(args: argparse.Namespace) -> int:
    if not zmq.has("curve"):
        raise CliError("this libzmq was built without CURVE support")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    names = [args.server] + clients
    if len(set(names)) != len(names) or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise CliError(f"key names must be distinct and alphanumeric (-, _ allowed): {names}")
    out: Path = args.output
    allowed = out / "authorized_clients"
    existing = [p for n in names for p in (out / f"{n}.key", out / f"{n}.key_secret") if p.exists()]
    if existing and not args.force:
        raise CliError(f"{existing[0]} exists; pass --force to overwrite")
    allowed.mkdir(parents=True, exist_ok=True)
    for name in names:
        public, secret = zmq.auth.create_certificates(str(out), name)
        os.chmod(secret, 0o600)
        if name in clients:
            shutil.copyfile(public, allowed / Path(public).name)
    print(f"wrote {len(names)} key pairs to {out}/ (NAME.key public, NAME.key_secret private)")
    print(f"  server:  hgm serve --curve-secret-key {out / (args.server + '.key_secret')} --curve-clients {allowed}")
    print(f"  clients: give each client {out / (args.server + '.key')} and its own NAME.key_secret")
    return 0
