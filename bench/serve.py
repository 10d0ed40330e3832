"""Worker protocol overhead: a reconstruct round trip vs a raw ZeroMQ echo of the same bytes.

    .venv/bin/python bench/serve.py [--n 131072] [--repeats 15] [--endpoint tcp://127.0.0.1:5599]

A `Worker` (thread, tcp loopback) answers every job with the same precomputed 131,072-Gaussian
avatar, so the figure is the protocol's own cost: request encode + validation, the worker's
result encode (activated -> raw Gaussians), reply decode in the client. The baseline, in the same
process, is a ROUTER that echoes a reply of the same size to a DEALER carrying the same 512² image.
Medians; JSON to stdout and bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import threading

import numpy as np
import torch
import zmq

from hgm_core.gaussians import Gaussians
from hgm_core.types import Reconstruction
from hgm_core.serve.client import WorkerClient
from hgm_core.serve.worker import Worker
from _results import add_out_argument, median_s, write_results



def _avatar(n: int) -> Reconstruction:
    g = torch.Generator().manual_seed(0)
    gaussians = Gaussians(
        means=torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 2.0]),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.rand(n, 3, generator=g) * 0.01 + 0.001,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=g),
    )
    return Reconstruction(gaussians=gaussians, timings={"fixed": 0.0})


def protocol_round_trip(endpoint: str, image: np.ndarray, n: int, repeats: int) -> float:
    avatar = _avatar(n)
    worker = Worker(lambda request: avatar)
    thread = threading.Thread(target=worker.serve, kwargs={"bind": endpoint}, daemon=True)
    thread.start()
    try:
        with WorkerClient(endpoint, timeout_s=30, retries=0) as client:
            client.reconstruct(image)  # connect + warm-up
            return 1e3 * median_s(lambda: client.reconstruct(image), repeats)
    finally:
        worker.stop()
        thread.join(5)


def raw_echo(endpoint: str, image: np.ndarray, reply_bytes: int, repeats: int) -> float:
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind(endpoint)
    dealer.connect(endpoint)
    reply = np.zeros(reply_bytes, np.uint8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(100):
                ident, _ = router.recv_multipart(copy=False)
                router.send_multipart([ident, reply], copy=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def call() -> None:
        dealer.send(image, copy=False)
        dealer.recv(copy=False)

    try:
        call()
        return 1e3 * median_s(call, repeats)
    finally:
        stop.set()
        thread.join(5)
        router.close(0)
        dealer.close(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=131_072, help="Gaussians in the reply (default 131072)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5599")
    add_out_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    protocol_ms = protocol_round_trip(args.endpoint, image, args.n, args.repeats)
    echo_ms = raw_echo(args.endpoint.replace("5599", "5598"), image, args.n * 14 * 4, args.repeats)
    result = {
        "bench": "serve",
        "what": "512x512 RGB image in, N raw Gaussians (14 float32 each) out, tcp loopback, medians",
        "gaussians": args.n,
        "reply_mb": args.n * 14 * 4 / 1e6,
        "protocol_round_trip_ms": round(protocol_ms, 2),
        "raw_zmq_echo_ms": round(echo_ms, 2),
        "ratio": round(protocol_ms / echo_ms, 2),
    }
    write_results("serve", result, args.out)


if __name__ == "__main__":
    main()
