"""Live (track mode) building blocks: binding an avatar, posing it per frame, bytes per frame.

    .venv/bin/python bench/live.py [--gaussians 30000] [--repeats 20] [--no-sample]

Two avatars, each bound to an anny body (hgm_core.body.skinning, docs/live_stream.md):
- sample: the `prior` avatar of the bundled sample frame (perception + body fit + prior, run once);
- synthetic: `--gaussians` Gaussians scattered within 1 cm of the surface of an anny body in a
  plausible pose (tests/test_skinning.py's `plausible_params`).
Per avatar: the time to bind (median of 3), the time to pose one frame (medians over `--repeats`
frames of random plausible poses) in torch (`pose`) and on the torch-free node path
(`decode_frame` + `skin_raw`, raw rows ready for `pack_gaussians`) and the cost of packing the
posed avatar into PointCloud2 bytes, the time to turn a pose into bone transforms (anny forward
kinematics), and the bytes per frame of the full PointCloud2 avatar vs the compact stream, plus
what the compact stream latches once (canonical PointCloud2 + binding file).

Not measured here (not built yet, issue #12): tracking, the node's frame path end to end, latency.
One torch thread; the CPU is shared, `load_average` records how busy it was. Writes JSON to stdout
and bench/results/live.json.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

import torch  # noqa: E402
from _results import add_out_argument, median_s, write_results  # noqa: E402

from hgm_core.body import AnnyBody, BodyParams  # noqa: E402
from hgm_core.body.skinning import Binding, bind_body, pose  # noqa: E402
from hgm_core.gaussians import Gaussians  # noqa: E402
from hgm_core.io.live_stream import decode_frame, encode_frame, skin_raw, write_binding  # noqa: E402
from hgm_core.io.pointcloud import POINT_STEP, pack_gaussians  # noqa: E402
from tests.test_skinning import plausible_params  # noqa: E402


def sample_avatar(body: AnnyBody) -> tuple[Gaussians, BodyParams]:
    """The prior avatar of the bundled sample frame and its body fit (camera frame; the documented
    default field of view stands in for the frame's camera_info, which changes nothing timed here)."""
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest

    sample = ASSETS_DIR / "sample"
    image = np.asarray(Image.open(sample / "person.jpg").convert("RGB"))
    mask = np.asarray(Image.open(sample / "person_mask.png").convert("L"))
    rec = Reconstructor.from_config(ReconstructorConfig())
    frame, _ = rec.run_frame(ReconstructionRequest(image, None, mask, stages="prior"))
    if frame.body.body_model != body.name:
        raise SystemExit(f"the sample was fitted with {frame.body.body_model}, this bench binds to {body.name}")
    return frame.gaussians, frame.body.params


def synthetic_avatar(body: AnnyBody, n: int) -> tuple[Gaussians, BodyParams]:
    """`n` Gaussians within ~1 cm of an anny body in a plausible pose."""
    g = torch.Generator().manual_seed(0)
    params = plausible_params(body, batch=1, seed=0)
    with torch.no_grad():
        vertices = body(params).vertices[0]
    return Gaussians(
        means=vertices[torch.randint(0, len(vertices), (n,), generator=g)] + 0.01 * torch.randn(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.rand(n, 3, generator=g) * 0.01 + 0.002,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=g),
    ), params


def measure(body: AnnyBody, avatar: Gaussians, fit: BodyParams, repeats: int) -> dict:
    binding: Binding = bind_body(avatar, body, fit)
    bind_s = median_s(lambda: bind_body(avatar, body, fit), 3)
    frames = plausible_params(body, batch=repeats, seed=1)
    params = [BodyParams(fit.global_orient, fit.transl, frames.pose[i : i + 1], fit.shape) for i in range(repeats)]
    with torch.no_grad():
        transforms = [body.bone_transforms(p)[0] for p in params]
        bones_s = median_s(lambda: body.bone_transforms(params[0]), repeats)
        torch_s = _median_over(lambda T: pose(binding, T), transforms)
    arrays = binding.to_arrays(binding_id=1, body_model=body.name)
    canonical_raw = binding.canonical.to_raw().numpy()
    packets = [encode_frame(T.numpy(), binding_id=1) for T in transforms]
    node_s = _median_over(lambda data: skin_raw(canonical_raw, arrays, decode_frame(data)[0]), packets)
    posed_raw = skin_raw(canonical_raw, arrays, transforms[0].numpy())
    pack_s = median_s(lambda: pack_gaussians(posed_raw), repeats)
    binding_file = io.BytesIO()
    write_binding(binding_file, arrays)
    return {
        "gaussians": len(avatar),
        "joints": len(binding.joint_names),
        "influences_per_gaussian": binding.joint_index.shape[1],
        "bind_s": bind_s,
        "bone_transforms_ms": bones_s * 1e3,
        "pose_torch_ms": torch_s * 1e3,
        "pose_numpy_node_ms": node_s * 1e3,
        "pack_pointcloud2_ms": pack_s * 1e3,
        "bytes_per_frame": {"full_pointcloud2": len(avatar) * POINT_STEP, "compact_stream": len(packets[0])},
        "latched_once_bytes": {"canonical_pointcloud2": len(avatar) * POINT_STEP, "binding_file": binding_file.tell()},
    }


def _median_over(fn, inputs: list) -> float:
    """Median seconds of `fn(x)` over the inputs, one call each."""
    it = iter(inputs)
    return median_s(lambda: fn(next(it)), len(inputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaussians", type=int, default=30000, help="synthetic avatar size")
    parser.add_argument("--repeats", type=int, default=20, help="frames timed per path")
    parser.add_argument("--no-sample", action="store_true", help="skip the sample frame's prior avatar")
    add_out_argument(parser)
    args = parser.parse_args()
    body = AnnyBody()
    avatars = {"synthetic": synthetic_avatar(body, args.gaussians)}
    if not args.no_sample:
        avatars["sample_prior"] = sample_avatar(body)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "body_model": body.name,
        "avatars": {name: measure(body, g, p, args.repeats) for name, (g, p) in avatars.items()},
    }
    write_results("live", report, args.out)


if __name__ == "__main__":
    main()
