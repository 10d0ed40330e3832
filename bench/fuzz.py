"""Hostile-client fuzzing of a live worker and a live broker (issue #17): replies by kind, crashes.

    .venv/bin/python bench/fuzz.py [--messages 10000] [--seed 0]

Mutation fuzzing over ipc:// loopback: each message starts from a valid request (reconstruct with
image, K, mask, stream, bind; live mode's track with stream and stamp; or health) and gets one to three mutations — a header field replaced by hostile raw
JSON (1e400, a 5,000-digit integer, NaN, 3,000-deep nesting, `true` for a version, a list for a
dtype, ...), a field dropped or added, a frame dropped, duplicated, truncated or padded, intrinsics
with extreme values, bytes flipped. (tests/test_fuzz_serve.py fuzzes the same servers generatively
with hypothesis; this tool runs the large count and reports figures.) The servers are
`tests.handlers --live` workers (a small real handler that keyframes and tracks; the transport is
under test, not the model) and
`hgm serve --broker`. A server that exits is a crash: it is counted and restarted. JSON to stdout
and bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

from _results import add_out_argument, write_results
from hgm_core.serve.client import WorkerClient, WorkerTimeout
from hgm_core.serve.protocol import decode

REPO = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, "-m", "tests.handlers"]
REPLY_TIMEOUT_S = 10.0
HOSTILE = [
    "1e400", "-1e400", "9" * 5000, "1" * 19, "NaN", "Infinity", "[" * 3000 + "]" * 3000, '{"a":' * 500 + "1" + "}" * 500,
    "true", "false", "null", "1.0", "0", "-1", "2", "4294967296", "[]", "{}", '""', '"x"', '["uint8"]', '{"uint8": 1}',
    "[1e39]", "[-1]", "[4611686018427387904, 4611686018427387904]", "[2147483647, 2147483647, 2147483647, 0]", '"' + "a" * 200 + '"',
]
EXTREME_FLOATS = [1e39, -1e39, 1e-30, 0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1e308, 5e-324, -40.0]


def valid_request(rng: random.Random) -> tuple[dict, list[bytes]]:
    """A request the worker accepts: (header fields, array frames)."""
    if rng.random() < 0.1:
        return {"protocol": 1, "id": f"h{rng.getrandbits(32)}", "kind": "health", "arrays": []}, []
    h, w = rng.randint(1, 48), rng.randint(1, 48)
    specs, frames = [{"name": "image", "dtype": "uint8", "shape": [h, w, 3]}], [rng.randbytes(h * w * 3)]
    if rng.random() < 0.6:
        f = max(h, w) * rng.uniform(0.5, 3)
        specs.append({"name": "K", "dtype": "float64", "shape": [3, 3]})
        frames.append(np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], "<f8").tobytes())
    if rng.random() < 0.3:
        specs.append({"name": "mask", "dtype": "uint8", "shape": [h, w]})
        frames.append(rng.randbytes(h * w))
    if rng.random() < 0.3:  # live mode's per-frame job: a stream is required, the frame's stamp optional
        header = {"protocol": 1, "id": f"t{rng.getrandbits(32)}", "kind": "track", "arrays": specs, "stream": "cam0"}
        optional = (("deadline_ms", 30_000), ("stamp", rng.uniform(0, 2e9)))
    else:
        header = {"protocol": 1, "id": f"r{rng.getrandbits(32)}", "kind": "reconstruct", "arrays": specs, "stages": "prior"}
        optional = (("deadline_ms", 30_000), ("mesh", rng.random() < 0.5), ("stream", "cam0"), ("bind", True))
    for key, value in optional:
        if rng.random() < 0.5:
            header[key] = value
    return header, frames


def mutate(rng: random.Random, header: dict, frames: list[bytes]) -> list[bytes]:
    """1-3 random mutations of a valid request -> the frames to send."""
    raw: dict[str, str] = {k: json.dumps(v) for k, v in header.items()}  # field -> raw JSON text
    frames = list(frames)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        if op == 0:  # a top-level field becomes hostile JSON
            raw[rng.choice([*raw, "deadline_ms", "stages", "mesh", "stream", "bind", "stamp", "timings", "info"])] = rng.choice(HOSTILE)
        elif op == 1 and raw:
            raw.pop(rng.choice(list(raw)))
        elif op == 2 and header.get("arrays"):  # one array entry's name/dtype/shape becomes hostile
            specs = [dict(s) for s in header["arrays"]]
            i = rng.randrange(len(specs))
            specs[i][rng.choice(["name", "dtype", "shape", "extra"])] = "\0HOSTILE\0"
            raw["arrays"] = json.dumps(specs).replace('"\\u0000HOSTILE\\u0000"', rng.choice(HOSTILE))
        elif op == 3 and frames:
            frames.pop(rng.randrange(len(frames)))
        elif op == 4 and frames:
            frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
        elif op == 5 and frames:  # an array frame a little short or long
            i = rng.randrange(len(frames))
            frames[i] = frames[i][: max(0, len(frames[i]) - rng.randint(1, 4))] if rng.random() < 0.5 else frames[i] + rng.randbytes(rng.randint(1, 4))
        elif op == 6:  # intrinsics with extreme entries (the shape and dtype stay valid)
            specs = header.get("arrays") or []
            for i, spec in enumerate(specs):
                if spec["name"] == "K" and i < len(frames):
                    K = np.frombuffer(frames[i], "<f8").copy() if len(frames[i]) == 72 else np.zeros(9)
                    K[rng.randrange(9)] = rng.choice(EXTREME_FLOATS)
                    frames[i] = K.tobytes()
        elif op == 7:
            raw["protocol"] = rng.choice(["true", "1.0", "2", "0", '"1"', "null"])
        else:
            raw[f"x{rng.randrange(100)}"] = rng.choice(HOSTILE)
    text = ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in raw.items()) + "}").encode()
    if rng.random() < 0.05:  # a flipped byte or a truncated header
        i = rng.randrange(len(text))
        text = text[:i] + bytes([rng.randrange(256)]) + text[i + 1 :] if rng.random() < 0.5 else text[:i]
    return [text, *frames]


class Target:
    """A server (and the processes behind it) that is restarted when it crashes."""

    def __init__(self, name: str, commands: list[list[str]], endpoint: str) -> None:
        self.name, self.commands, self.endpoint = name, commands, endpoint
        self.processes: list[subprocess.Popen] = []
        self.replies: Counter[str] = Counter()
        self.sent = self.crashes = self.no_reply = 0
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.start()

    def start(self) -> None:
        self.processes = [subprocess.Popen(c, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in self.commands]
        with WorkerClient(self.endpoint, timeout_s=1.0, retries=0) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.health().get("ok"):
                        break
                except WorkerTimeout:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                        raise RuntimeError(f"{self.name} did not start: {self.commands}") from None
        self._reconnect()

    def _reconnect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(self.endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sent += 1
        self.sock.send_multipart(frames)
        if self.sock.poll(REPLY_TIMEOUT_S * 1000):
            reply = self.sock.recv_multipart()
            body = reply[1:] if reply[0] == b"" and len(reply) > 1 else reply
            header = decode(body, max_message_bytes=64 << 20).header
            self.replies[header["error"]["kind"] if header["kind"] == "error" else header["kind"]] += 1
            return
        self.no_reply += 1
        self._reconnect()  # a late reply must not be taken for the next message's
        dead = [p for p in self.processes if p.poll() is not None]
        if dead:
            self.crashes += 1
            print(f"{self.name}: crash ({[p.returncode for p in dead]}) after {self.sent} messages, last {frames[0][:200]!r}", file=sys.stderr)
            self.stop()
            self.start()

    def stop(self) -> None:
        for p in self.processes:
            p.kill()
            p.wait()

    def report(self) -> dict:
        alive = all(p.poll() is None for p in self.processes)
        return {"messages": self.sent, "replies_by_kind": dict(self.replies.most_common()), "no_reply": self.no_reply,
                "crashes": self.crashes, "alive_at_end": alive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per target (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    add_out_argument(parser)
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="hgm-fuzz-"))
    worker_ep, front, back = f"ipc://{where}/worker.sock", f"ipc://{where}/front.sock", f"ipc://{where}/back.sock"
    broker_cmd = [sys.executable, "-m", "hgm_core", "serve", "--broker", "--bind", front, "--backend", back, "--heartbeat-s", "0.5"]
    targets = [
        Target("worker", [WORKER + ["--live", "--bind", worker_ep]], worker_ep),
        Target("broker", [broker_cmd, WORKER + ["--live", "--connect", back, "--heartbeat", "0.5"]], front),
    ]
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    try:
        for target in targets:
            for _ in range(args.messages):
                target.send(mutate(rng, *valid_request(rng)))
        report = {
            "bench": "fuzz",
            "what": "mutated valid requests (hostile JSON, frames, intrinsics) to a live worker and a live broker over ipc://",
            "seed": args.seed,
            "seconds": round(time.perf_counter() - t0, 1),
            **{t.name: t.report() for t in targets},
        }
    finally:
        for target in targets:
            target.stop()
    write_results("fuzz", report, args.out)


if __name__ == "__main__":
    main()
