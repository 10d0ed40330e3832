"""The pipeline's device (issue #15) on a machine without CUDA: names, the stages honour `cpu`, a CUDA
request is a clear `stage_unavailable` at startup (library, `hgm serve`, `hgm reconstruct`, an
isolated compute child), and health replies say what the worker runs on."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hgm_core.cli import CliError
from hgm_core.device import DeviceUnavailableError, check_device_name, device_report, resolve_device
from hgm_core.render import available_backends, rasterize
from hgm_core.serve.client import WorkerClient, WorkerError
from hgm_core.serve.isolate import ComputeSpec
from hgm_core.types import StageUnavailableError
from tests.conftest import random_gaussians
from tests.handlers import PixelSplatHandler, running_worker, test_image

REPO = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def test_device_names_are_checked_before_anything_is_loaded():
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert check_device_name(name) == name
    for name in ("gpu", "cuda:", "cuda:x", "CPU", "", "mps"):
        with pytest.raises(ValueError, match="auto .*cpu.*cuda"):
            check_device_name(name)
        with pytest.raises(ValueError):
            resolve_device(name)


@no_cuda
def test_auto_is_the_cpu_and_cuda_is_a_clear_stage_unavailable_without_cuda():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError, match=f"device '{name}' requested, but .*use --device cpu or auto") as info:
            resolve_device(name)
        assert isinstance(info.value, StageUnavailableError) and info.value.kind == "stage_unavailable"
    assert device_report(torch.device("cpu")) == {"device": "cpu", "torch": torch.__version__}


@no_cuda
def test_the_reconstructor_refuses_cuda_before_loading_any_model(monkeypatch):
    import importlib

    from hgm_core.pipeline import Reconstructor, ReconstructorConfig

    perceive = importlib.import_module("hgm_core.perception.perceive")  # the package exports a function of that name

    def loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr(perceive.PoseEstimator, "__init__", loading)  # the first thing from_config builds
    with pytest.raises(DeviceUnavailableError, match="'cuda:0' requested"):
        Reconstructor.from_config(ReconstructorConfig(device="cuda:0"))
    with pytest.raises(ValueError, match="device must be"):
        Reconstructor.from_config(ReconstructorConfig(device="gpu"))


def test_the_device_flag_reaches_the_config_and_bad_names_are_cli_errors():
    from hgm_core.pipeline.cli import reconstructor_config

    args = argparse.Namespace(config=None, mesh=False, checkpoint=None, fuse_checkpoint=None, fit_iterations=None, device="cpu")
    assert reconstructor_config(args).device == "cpu"
    assert reconstructor_config(argparse.Namespace(**{**vars(args), "device": None})).device == "auto"
    with pytest.raises(CliError, match="--device: device must be"):
        reconstructor_config(argparse.Namespace(**{**vars(args), "device": "gpu0"}))


def test_the_network_stage_honours_the_device_and_keeps_float32_on_the_cpu():
    from hgm_core.model.hgm import HGM
    from hgm_core.model.predict import default_checkpoint_dir
    from hgm_core.pipeline.coarse import CoarseStage
    from hgm_core.pipeline.components import MeshStage, PriorStage

    if not default_checkpoint_dir().is_dir():
        pytest.skip("no embedded checkpoint")
    model = HGM.from_pretrained(default_checkpoint_dir())  # fp16 weights in the file
    stage = CoarseStage(model.float(), PriorStage(), "embedded", device="cpu", half=True)
    assert stage.device == torch.device("cpu") and not stage.half  # no float16 on the CPU
    assert {p.device for p in stage.model.parameters()} == {torch.device("cpu")}
    assert {p.dtype for p in stage.model.parameters()} == {torch.float32}
    assert MeshStage(device="cpu").device == torch.device("cpu")


@pytest.mark.slow
def test_every_stage_runs_on_the_requested_cpu_and_says_so(sample_image):
    """The whole pipeline with `device="cpu"`: every component reports the CPU, the result is on it."""
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest

    rec = Reconstructor.from_config(ReconstructorConfig(device="cpu"))
    described = rec.describe()
    assert described["device"] == "cpu" and set(described["components"].values()) == {"cpu"}
    assert described["config"]["device"] == "cpu" and described["stages"] == list(rec.available_stages)
    level = "coarse" if "coarse" in rec.stages else "prior"
    out = rec.run(ReconstructionRequest(image=sample_image, stages=level, mesh=True))
    assert out.gaussians.means.device == torch.device("cpu")
    assert out.info["fit_body"]["device"] == "cpu" and out.info["mesh"]["device"] == "cpu"
    if level == "coarse":
        assert (out.info["coarse"]["device"], out.info["coarse"]["precision"]) == ("cpu", "float32")


@pytest.fixture
def sample_image():
    from hgm_core.io.inputs import load_image

    return load_image(REPO / "hgm_core" / "assets" / "sample" / "person.jpg")


def test_auto_rendering_happens_where_the_gaussians_are():
    assert available_backends("cpu") == ["numba", "reference"]
    assert available_backends(torch.device("cuda"))[-1] == "reference"  # gsplat first when installed
    from hgm_core.camera import orbit_cameras

    g, cams = random_gaussians(64, seed=1), orbit_cameras(32, 32, n_views=1)
    auto, numba = rasterize(g, cams, backend="auto"), rasterize(g, cams, backend="numba")
    assert auto.alpha.max() > 0.1  # the scene is in view
    torch.testing.assert_close(auto.rgb, numba.rgb)


@no_cuda
@pytest.mark.slow
def test_hgm_serve_and_reconstruct_with_cuda_fail_at_startup_with_the_reason(tmp_path):
    serve = subprocess.run([sys.executable, "-m", "hgm_core", "serve", "--device", "cuda", "--bind", f"ipc://{tmp_path}/w.sock"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert serve.returncode != 0
    assert "device 'cuda' requested, but" in serve.stderr and "Traceback" not in serve.stderr
    image = REPO / "hgm_core" / "assets" / "sample" / "person.jpg"
    rec = subprocess.run([sys.executable, "-m", "hgm_core", "reconstruct", str(image), "-o", str(tmp_path), "--device", "cuda:3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rec.returncode != 0
    assert "stage_unavailable: device 'cuda:3' requested, but" in rec.stderr and "Traceback" not in rec.stderr


class _Described:
    """A handler that can say what it runs on, as `Reconstructor.describe` does."""

    def __init__(self) -> None:
        self.splat = PixelSplatHandler()

    def describe(self) -> dict:
        return {"device": "cpu", "checkpoint": None, "config": {"device": "cpu", "mesh": {"voxel_size": 0.01}}}

    def run(self, request):
        return self.splat(request)


def described_handler():
    """`ComputeSpec` factory: the bound `run` of a describing handler."""
    return _Described().run


def cuda_handler():
    """`ComputeSpec` factory failing as `Reconstructor.from_config(device="cuda")` does without CUDA."""
    raise DeviceUnavailableError("device 'cuda' requested, but this torch build has no CUDA; use --device cpu or auto")


def test_health_says_what_the_worker_runs_on_in_process_and_in_a_compute_child(monkeypatch):
    described = _Described()
    with running_worker(described.run, describe=described.describe) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        assert client.health()["pipeline"] == described.describe()
    with running_worker(PixelSplatHandler()) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        assert client.health()["pipeline"] is None  # a handler that cannot describe itself

    monkeypatch.chdir(REPO)  # the compute child imports `tests.test_device`
    spec = ComputeSpec("tests.test_device:described_handler", start_timeout_s=120)
    with running_worker(spec) as worker, WorkerClient(worker.endpoint, timeout_s=120, retries=0) as client:
        for _ in range(1200):
            if (health := client.health())["ok"]:
                break
            time.sleep(0.1)
        assert health["pipeline"] == described.describe()


@pytest.mark.slow
def test_an_isolated_worker_without_cuda_says_why_instead_of_crashing(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = ComputeSpec("tests.test_device:cuda_handler", start_timeout_s=120)
    with running_worker(spec) as worker, WorkerClient(worker.endpoint, timeout_s=120, retries=0) as client:
        for _ in range(600):
            if (health := client.health())["compute"]["starts"] >= 1 and not health["compute"]["ready"]:
                break
            time.sleep(0.1)
        assert not health["ok"]
        with pytest.raises(WorkerError, match="could not start: stage_unavailable: device 'cuda' requested"):
            client.reconstruct(test_image())
        assert client.health()["role"] == "worker"  # the worker itself is still serving


def test_diagnostics_flatten_the_health_reply():
    pytest.importorskip("diagnostic_msgs")
    from hgm_node.diagnostics import health_values

    values = health_values({"busy": True, "pipeline": {"device": "cuda:0", "gpu": "NVIDIA H200", "gpu_memory_total_mb": 143771,
                                                       "checkpoint": None, "config": {"device": "auto", "coarse": {"half": True}}}})
    assert values == {
        "health.busy": "True",
        "health.pipeline.checkpoint": "None",
        "health.pipeline.config": '{"coarse":{"half":true},"device":"auto"}',
        "health.pipeline.device": "cuda:0",
        "health.pipeline.gpu": "NVIDIA H200",
        "health.pipeline.gpu_memory_total_mb": "143771",
    }
