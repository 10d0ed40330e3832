"""Worker protocol overhead: a reconstruct round trip vs a raw ZeroMQ echo of the same bytes.

    .venv/bin/python bench/serve.py [--n 131072] [--repeats 15] [--endpoint tcp://127.0.0.1:5599]

A `Worker` (thread, tcp loopback) answers every job with the same precomputed 131,072-Gaussian
avatar, so the figure is the protocol's own cost: request encode + validation, the worker's
result encode (activated -> raw Gaussians), reply decode in the client. The baseline, in the same
process, is a ROUTER that echoes a reply of the same size to a DEALER carrying the same 512² image.

Each call is timed in wall time and in CPU time of this process (all its threads: client, worker,
ZeroMQ I/O). A round trip hops across five threads, so on a loaded 2-core machine its wall time
mostly measures how long those threads wait for a core; the CPU time and the fastest call do not
depend on the load, which is reported too. `result_encode_cpu_ms` is the worker's in-process share
(`encode_result`, dominated by `Gaussians.to_raw` writing a fresh 7 MB buffer).
Medians; JSON to stdout and bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import os
import threading

import numpy as np
import torch
import zmq

from hgm_core.gaussians import Gaussians
from hgm_core.types import Reconstruction
from hgm_core.serve.client import WorkerClient
from hgm_core.serve.schema import encode_result
from hgm_core.serve.worker import Worker
from _results import add_out_argument, measure, write_results



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


def protocol_round_trip(endpoint: str, image: np.ndarray, avatar: Reconstruction, repeats: int) -> dict[str, float]:
    worker = Worker(lambda request: avatar)
    thread = threading.Thread(target=worker.serve, kwargs={"bind": endpoint}, daemon=True)
    thread.start()
    try:
        with WorkerClient(endpoint, timeout_s=30, retries=0) as client:
            client.reconstruct(image)  # connect + warm-up
            return measure(lambda: client.reconstruct(image), repeats)
    finally:
        worker.stop()
        thread.join(5)


def raw_echo(endpoint: str, image: np.ndarray, reply_bytes: int, repeats: int) -> dict[str, float]:
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
        return measure(call, repeats)
    finally:
        stop.set()
        thread.join(5)
        router.close(0)
        dealer.close(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=131_072, help="Gaussians in the reply (default 131072)")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5599")
    add_out_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    avatar = _avatar(args.n)
    protocol = protocol_round_trip(args.endpoint, image, avatar, args.repeats)
    echo = raw_echo(args.endpoint.replace("5599", "5598"), image, args.n * 14 * 4, args.repeats)
    encode = measure(lambda: encode_result("bench", avatar), args.repeats)
    result = {
        "bench": "serve",
        "what": "512x512 RGB image in, N raw Gaussians (14 float32 each) out, tcp loopback, medians "
                "(wall; cpu = this process's CPU time per call, all threads)",
        "gaussians": args.n,
        "reply_mb": args.n * 14 * 4 / 1e6,
        "repeats": args.repeats,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "protocol_round_trip_ms": round(1e3 * protocol["median_s"], 2),
        "protocol_round_trip_min_ms": round(1e3 * protocol["min_s"], 2),
        "protocol_round_trip_cpu_ms": round(1e3 * protocol["cpu_s"], 2),
        "raw_zmq_echo_ms": round(1e3 * echo["median_s"], 2),
        "raw_zmq_echo_min_ms": round(1e3 * echo["min_s"], 2),
        "raw_zmq_echo_cpu_ms": round(1e3 * echo["cpu_s"], 2),
        "result_encode_cpu_ms": round(1e3 * encode["cpu_s"], 2),
        "ratio": round(protocol["median_s"] / echo["median_s"], 2),
        "ratio_cpu": round(protocol["cpu_s"] / echo["cpu_s"], 2),
    }
    write_results("serve", result, args.out)


if __name__ == "__main__":
    main()
