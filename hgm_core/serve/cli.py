"""`hgm serve`: a warm reconstruction worker, or a broker in front of several workers.

    hgm serve                                        # worker on tcp://127.0.0.1:5555
    hgm keys -o keys --clients node,worker           # CURVE key pairs for the examples below
    hgm serve --bind ipc:///tmp/hgm.sock             # local worker for the ROS node
    hgm serve --isolate                              # the model in a supervised child process
    hgm serve --broker --bind tcp://0.0.0.0:5555 --backend tcp://0.0.0.0:5556 \\
              --curve-secret-key keys/server.key_secret --curve-clients keys/authorized_clients
    hgm serve --connect tcp://broker:5556 --curve-server-key keys/server.key \\
              --curve-secret-key keys/worker.key_secret   # one of the broker's workers

    hgm serve --ray --bind tcp://0.0.0.0:5555 --replicas 4      # workers as Ray Serve replicas (extra `ray`)
    hgm serve --ray --ray-address auto --autoscaling '{"min_replicas": 1, "max_replicas": 16}'

Behind a CURVE broker, workers are CURVE clients like any other: their public keys must be in the
broker's --curve-clients directory.
"""

from __future__ import annotations

import argparse
import logging
import signal
from urllib.parse import urlsplit

import zmq

from hgm_core.cli import CliError
from hgm_core.device import add_device_argument

HELP = "run a reconstruction worker that keeps the model warm (or a broker in front of several workers)"

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

log = logging.getLogger("hgm.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=None, help=f"endpoint clients connect to, tcp:// or ipc:// (default: {DEFAULT_BIND})")
    parser.add_argument("--broker", action="store_true", help="run a load-balancing broker instead of a worker")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, help=f"(broker) endpoint workers connect to (default: {DEFAULT_BACKEND})")
    parser.add_argument("--connect", default=None, help="(worker) serve jobs of the broker at this backend endpoint instead of binding")
    parser.add_argument("--checkpoint", default=None, help="(worker) HGM checkpoint folder for the coarse stage, or 'none' (as `hgm reconstruct`)")
    parser.add_argument("--fuse-checkpoint", default=None,
                        help="(worker) two-view HGM checkpoint folder for the fuse stage of `full`, or 'none' (as `hgm reconstruct`)")
    parser.add_argument("--fit-iterations", type=int, default=None, help="(worker) body-fit iterations (default: the pipeline's)")
    parser.add_argument("--config", default=None, help="(worker) ReconstructorConfig JSON (as in a result's info[\"config\"]); flags override it")
    parser.add_argument("--mesh", action="store_true", help="(worker) also send the avatar's surface mesh (~1.5 s per job)")
    parser.add_argument("--threads", type=int, default=1, help="(worker) compute threads (default: 1, fastest for the body fit on a loaded machine)")
    add_device_argument(parser)
    parser.add_argument("--isolate", action="store_true",
                        help="(worker) run the model in a supervised child process: a native crash costs one job an 'internal' reply, not the worker")
    parser.add_argument("--stages", default=None, help="(worker) comma-separated stages to accept (default: all)")
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest accepted image, H*W (default: 4096^2)")
    parser.add_argument("--max-message-mb", type=float, default=256.0, help="largest accepted message in MiB (default: 256)")
    parser.add_argument("--queue-depth", type=int, default=None, help="jobs waiting behind the running one (default: 4 for a worker, 64 for a broker)")
    parser.add_argument("--heartbeat-s", type=float, default=1.0, help="broker<->worker heartbeat interval in seconds; dead after 3 missed (default: 1)")
    parser.add_argument("--curve-secret-key", default=None, help="this server's key pair file (NAME.key_secret from `hgm keys`): require CURVE")
    parser.add_argument("--curve-clients", default=None, help="directory of allowed client public keys (default: any client knowing the server key)")
    parser.add_argument("--curve-server-key", default=None, help="(worker with --connect) the broker's public key file")
    ray = parser.add_argument_group("Ray Serve (--ray; the optional extra `ray`)")
    ray.add_argument("--ray", action="store_true", help="run the workers as Ray Serve replicas behind this endpoint (same protocol)")
    ray.add_argument("--ray-address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray instance")
    ray.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    ray.add_argument("--replicas", type=int, default=1, help="replicas when not autoscaling (default: 1)")
    ray.add_argument("--autoscaling", default=None, help="Ray Serve autoscaling_config as JSON, e.g. '{\"min_replicas\": 1, \"max_replicas\": 8}'")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default: 1)")
    ray.add_argument("--replica-gpus", type=float, default=None, help="GPUs per replica (default: 1 when the cluster has a GPU, else 0)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.broker and args.connect:
        raise CliError("--broker binds; --connect is for workers joining a broker")
    if args.ray and (args.broker or args.connect or args.isolate):
        raise CliError("--ray runs its own workers (Ray Serve replicas); it excludes --broker, --connect and --isolate")
    if args.curve_server_key and not args.connect:
        raise CliError("--curve-server-key is for a worker joining a broker with --connect")
    bind = args.bind or (None if args.connect else DEFAULT_BIND)
    max_bytes = int(args.max_message_mb * (1 << 20))
    if args.ray:
        server = _make_ray_front(args, max_bytes)
    else:
        server = _make_broker(args, max_bytes) if args.broker else _make_worker(args, max_bytes)
    if bind is not None and args.curve_secret_key is None and not _is_local(bind):
        log.warning("%s is reachable from other hosts without authentication; consider `hgm keys` and --curve-secret-key", bind)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    try:
        if args.broker:
            server.serve(bind, args.backend)
        elif args.ray:
            try:
                server.start()
            except Exception as e:  # e.g. a replica that cannot load the model: one line, not a traceback
                raise CliError(f"the Ray Serve replicas did not start: {type(e).__name__}: {str(e)[:2000]}") from None
            server.serve(bind)
        else:
            server.serve(bind=bind, connect=args.connect)
    except zmq.ZMQError as e:
        raise CliError(f"cannot serve on {bind or args.connect}: {e}") from None
    return 0


def _make_broker(args: argparse.Namespace, max_bytes: int):
    from hgm_core.serve.broker import Broker, BrokerConfig

    config = BrokerConfig(max_message_bytes=max_bytes, max_queue=args.queue_depth or 64, heartbeat_interval_s=args.heartbeat_s)
    return Broker(config, curve_server=_server_keys(args))


def _make_ray_front(args: argparse.Namespace, max_bytes: int):
    """The Ray front (`hgm_core.serve.ray_serve`); this process joins or starts Ray. The replicas
    build the live pipeline from the flags' `ReconstructorConfig` (reconstruct and track jobs)."""
    import json

    try:
        import ray

        from hgm_core.serve.ray_serve import RayFront, RayServeConfig
    except ImportError as e:
        raise CliError(f"--ray needs the optional extra `ray` (pip install 'hgm[ray]'): {e}") from None
    from hgm_core.serve.isolate import ComputeSpec
    from hgm_core.types import STAGES

    wanted = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
    if not set(wanted) <= set(STAGES):
        raise CliError(f"unknown stages {sorted(set(wanted) - set(STAGES))}; choose from {', '.join(STAGES)}")
    if args.replicas < 1 or args.threads < 1:
        raise CliError("--replicas and --threads must be at least 1")
    try:
        autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    except json.JSONDecodeError as e:
        raise CliError(f"--autoscaling is not JSON: {e}") from None
    if autoscaling is not None and not isinstance(autoscaling, dict):
        raise CliError("--autoscaling must be a JSON object (Ray Serve's autoscaling_config)")
    config = RayServeConfig(
        num_replicas=args.replicas, autoscaling=autoscaling, num_cpus=args.replica_cpus, num_gpus=args.replica_gpus,
        max_queue=args.queue_depth or 64, max_message_bytes=max_bytes, max_pixels=args.max_pixels, stages=wanted,
    )
    compute = ComputeSpec("hgm_core.serve.cli:live_handler", {"config": _reconstructor_config(args).to_dict()}, threads=args.threads)
    ray.init(address=args.ray_address, num_cpus=args.ray_num_cpus if args.ray_address is None else None,
             include_dashboard=False, configure_logging=False)
    return RayFront(compute, config, curve_server=_server_keys(args))


def _make_worker(args: argparse.Namespace, max_bytes: int):
    from hgm_core.types import STAGES
    from hgm_core.serve import curve
    from hgm_core.serve.worker import Worker, WorkerConfig

    wanted = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    if wanted is not None and not set(wanted) <= set(STAGES):
        raise CliError(f"unknown stages {sorted(set(wanted) - set(STAGES))}; choose from {', '.join(STAGES)}")
    client_keys = None
    if args.connect and args.curve_server_key:
        if not args.curve_secret_key:
            raise CliError("--curve-server-key needs this worker's own --curve-secret-key")
        try:
            client_keys = curve.CurveClientKeys.load(args.curve_server_key, args.curve_secret_key)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot load CURVE keys: {e}") from None
    server_keys = None if args.connect else _server_keys(args)
    if args.threads < 1:
        raise CliError("--threads must be at least 1")
    if args.isolate:
        # The child loads the model (and sets its thread count); a level it cannot run is answered
        # "stage_unavailable" by the pipeline there.
        from hgm_core.serve.isolate import ComputeSpec

        config = _reconstructor_config(args).to_dict()
        # The child runs the live pipeline: keyframes on its main thread, track jobs on another.
        handler, available = ComputeSpec("hgm_core.serve.cli:live_handler", {"config": config}, threads=args.threads), STAGES
        track = None  # served by the child (the worker's track lane forwards them)
        describe = None  # the child describes itself when it is ready
    else:
        from hgm_core.pipeline.live import LivePipeline
        from hgm_core.runtime import set_compute_threads

        set_compute_threads(args.threads)  # the entry point, not the library, owns the thread count
        reconstructor = _load_reconstructor(args)
        live = LivePipeline(reconstructor)  # keyframes (bind) and track jobs for the node's live mode
        handler, track, available = live.run, live.track, tuple(reconstructor.available_stages)
        describe = reconstructor.describe
    if wanted is not None and not set(wanted) <= set(available):
        raise CliError(f"stages {sorted(set(wanted) - set(available))} are not available here (only {', '.join(available)}); see --checkpoint and --fuse-checkpoint")
    worker_config = WorkerConfig(
        max_message_bytes=max_bytes,
        max_pixels=args.max_pixels,
        queue_depth=4 if args.queue_depth is None else args.queue_depth,
        stages=wanted or available,
        heartbeat_interval_s=args.heartbeat_s,
    )
    return Worker(handler, worker_config, curve_server=server_keys, curve_client=client_keys, track=track, describe=describe)


def _reconstructor_config(args: argparse.Namespace):
    try:
        from hgm_core.pipeline.cli import reconstructor_config
    except ImportError as e:
        raise CliError(f"the reconstruction pipeline is not available ({e})") from None
    return reconstructor_config(args)


def _load_reconstructor(args: argparse.Namespace):
    """The warm model: built once here, before the worker accepts jobs."""
    from hgm_core.pipeline import Reconstructor

    config = _reconstructor_config(args)
    try:
        return Reconstructor.from_config(config)
    except Exception as e:  # a broken config or missing asset: one line, not a traceback
        raise CliError(f"cannot load the reconstructor: {type(e).__name__}: {e}") from None


def live_handler(config: dict):
    """The compute's handler under `hgm serve --isolate` (the child process) and `hgm serve --ray`
    (a replica) (`ComputeSpec.factory`): the live pipeline (keyframes; its owner's `track` serves
    track jobs) over the reconstructor of `config` (`ReconstructorConfig.to_dict()`)."""
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.live import LivePipeline

    return LivePipeline(Reconstructor.from_config(ReconstructorConfig.from_dict(config))).run


def _server_keys(args: argparse.Namespace):
    if args.curve_secret_key is None:
        if args.curve_clients:
            raise CliError("--curve-clients needs --curve-secret-key")
        return None
    from hgm_core.serve.curve import CurveServerKeys

    try:
        return CurveServerKeys.load(args.curve_secret_key, args.curve_clients)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load CURVE keys: {e}") from None


def _is_local(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return True  # ipc:// and inproc:// never leave the host
    return parts.hostname in LOOPBACK or (parts.hostname or "").startswith("127.")
