"""`hgm scene`: build the procedural person scene, write it as a 3DGS PLY and render a turntable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hgm_core.render.images import image_grid

HELP = "build a person-shaped Gaussian scene; write scene.ply and an 8-view turntable.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, default=Path("out"), help="output directory (default: out/)")
    p.add_argument("-n", "--num-gaussians", type=int, default=65536, help="number of Gaussians (default: 65536)")
    p.add_argument("--size", type=int, default=384, help="side of each turntable view in pixels (default: 384)")
    p.add_argument("--views", type=int, default=8, help="turntable views around the person (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "reference", "gsplat"], help="rasterizer backend (default: auto)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from hgm_core.cli import CliError
    from hgm_core.io.ply import write_ply
    from hgm_core.render import rasterize
    from hgm_core.render.output import RenderError
    from hgm_core.render.scenes import person_scene, turntable_cameras

    if args.num_gaussians < 1 or args.size < 16 or args.views < 1:
        raise CliError("need --num-gaussians >= 1, --size >= 16 and --views >= 1")
    args.output.mkdir(parents=True, exist_ok=True)
    g = person_scene(args.num_gaussians, seed=args.seed)
    ply = write_ply(args.output / "scene.ply", g)
    cams = turntable_cameras(args.size, n_views=args.views)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = rasterize(g, cams, background=(1.0, 1.0, 1.0), backend=args.backend)
    except RenderError as e:
        raise CliError(str(e)) from e
    seconds = time.perf_counter() - t0
    png = args.output / "turntable.png"
    Image.fromarray(image_grid(out.rgb, columns=min(4, args.views))).save(png)
    print(f"scene: {len(g)} Gaussians -> {ply}")
    print(f"turntable: {args.views} views of {args.size}x{args.size} in {seconds:.2f} s -> {png}")
    return 0
