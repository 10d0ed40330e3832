"""`hgm datagen`: synthetic multi-view humans in the GPS-Gaussian / THuman2.0 render layout."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = ("generate synthetic multi-view humans (anny bodies, proxy clothes, HDRI light) in the THuman2.0 render layout, "
        "or (--sequence) motion sequences with a ground-truth body per frame")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", type=int, default=10, help="number of subjects (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; subject i uses subject_seed(seed, i)")
    p.add_argument("-o", "--output", "--out", type=Path, required=True, help="output directory")
    p.add_argument("--size", type=int, default=512, help="image width = height in pixels (default: 512)")
    p.add_argument("--views", type=int, default=12, help="views on the ring, 360/N degrees apart (default: 12)")
    p.add_argument("--ssaa", type=int, default=2, help="supersampling per axis for colour and mask (default: 2)")
    p.add_argument("--start", type=int, default=0, help="index of the first subject (to extend a dataset)")
    p.add_argument("--sequence", action="store_true",
                   help="write motion sequences instead (one subject walking, turning and waving before a fixed "
                        "camera, ground-truth body per frame; hgm_core/data/sequence.py): --subjects sequences "
                        "into OUTPUT/seq_NNNN")
    p.add_argument("--frames", type=int, default=60, help="frames per sequence (default: 60)")
    p.add_argument("--fps", type=float, default=15.0, help="sequence frame rate (default: 15)")
    p.add_argument("--frame-size", default="640x480", help="sequence image WIDTHxHEIGHT (default: 640x480)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hgm_core.cli import CliError
    from hgm_core.data.render import RenderConfig, write_subject
    from hgm_core.data.synth import GENERATOR_VERSION, SynthBody, build_subject, sample_subject, subject_seed

    if args.sequence:
        return _run_sequences(args)
    if args.subjects < 1 or args.size < 16 or args.views < 1 or args.ssaa < 1:
        raise CliError("need --subjects >= 1, --size >= 16, --views >= 1, --ssaa >= 1")
    config = RenderConfig(size=args.size, n_views=args.views, ssaa=args.ssaa)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "hgm synth", "version": GENERATOR_VERSION, "seed": args.seed, "size": args.size,
            "n_views": args.views, "ssaa": args.ssaa, "layout": "GPS-Gaussian / THuman2.0 render_data"}
    t0 = time.perf_counter()
    body = SynthBody()
    ids = []
    for i in tqdm(range(args.start, args.start + args.subjects), desc="subjects", unit="subj"):
        sid = f"{i:04d}"
        write_subject(out, sid, build_subject(sample_subject(subject_seed(args.seed, i), body), body), config)
        ids.append(sid)
    elapsed = time.perf_counter() - t0
    index = out / "dataset.json"
    previous = json.loads(index.read_text()).get("subjects", []) if index.exists() else []
    meta["subjects"] = sorted(set(previous) | set(ids))
    index.write_text(json.dumps(meta, indent=1, sort_keys=True))
    print(f"wrote {len(ids)} subjects to {out} in {elapsed:.1f} s ({60 * len(ids) / elapsed:.1f} subjects/min); "
          f"contact sheets in {out / 'sheet'}")
    return 0


def _run_sequences(args: argparse.Namespace) -> int:
    """`hgm datagen --sequence`: `--subjects` sequences of subjects `subject_seed(seed, i)`."""
    from hgm_core.body import AnnyBody
    from hgm_core.cli import CliError
    from hgm_core.data.sequence import SequenceConfig, SequenceError, write_sequence
    from hgm_core.data.synth import SynthBody, subject_seed

    try:
        width, height = (int(v) for v in args.frame_size.lower().split("x"))
    except ValueError:
        raise CliError(f"--frame-size must be WIDTHxHEIGHT, got {args.frame_size!r}") from None
    if args.subjects < 1:
        raise CliError("need --subjects >= 1")
    config = SequenceConfig(frames=args.frames, fps=args.fps, width=width, height=height)
    synth, anny = SynthBody(), AnnyBody()
    t0 = time.perf_counter()
    for i in range(args.start, args.start + args.subjects):
        try:
            path = write_sequence(args.output / f"seq_{i:04d}", subject_seed(args.seed, i), synth, anny, config)
        except SequenceError as e:
            raise CliError(str(e)) from None
        print(f"wrote {path} ({config.frames} frames)")
    print(f"{args.subjects} sequence(s) in {time.perf_counter() - t0:.1f} s")
    return 0
