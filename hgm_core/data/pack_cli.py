"""`hgm pack`: a render layout's subjects as person windows, compactly (`hgm_core/data/pack.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hgm_core.cli import CliError

HELP = ("cut every view of a render layout's subjects to a square window around the person and store it "
        "compactly (JPEG + PNG + mm-quantised body, ~85 KB a subject at 128 px): a training pack that travels "
        "with the repository; resumable")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="render layout (hgm datagen output or THuman2.0 renders)")
    p.add_argument("out", type=Path, help="pack folder (created; an existing pack with the same settings is resumed)")
    p.add_argument("--size", type=int, default=128, help="window side in pixels after resampling (default: 128)")
    p.add_argument("--margin", type=float, default=0.12,
                   help="margin around the person's box on every side, as a share of its longer side (default: 0.12)")
    p.add_argument("--jpeg-quality", type=int, default=92, help="JPEG quality of the images (default: 92)")
    p.add_argument("--limit", type=int, default=None, help="pack only the source's first N subjects (sorted ids)")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hgm_core.data.cache import complete_subjects
    from hgm_core.data.pack import PackError, open_pack, pack_subjects, packed_subjects, update_index
    from hgm_core.data.reader import DatasetLayoutError

    if (args.limit is not None and args.limit < 1) or args.workers < 1:
        raise CliError("need --limit >= 1 and --workers >= 1")
    try:
        index = open_pack(args.source, args.out, args.size, args.margin, args.jpeg_quality)
        wanted = complete_subjects(args.source)[: args.limit]
        done = set(packed_subjects(args.out))
        todo = [s for s in wanted if s not in done]
        print(f"{args.source}: {len(wanted)} subjects (seed {index['seed']}), {len(wanted) - len(todo)} packed already, "
              f"{len(todo)} to pack into {args.out}")
        t0 = time.perf_counter()
        written = 0
        bar = tqdm(pack_subjects(args.source, args.out, todo, index, args.workers), total=len(todo), desc="subjects", unit="subj")
        for i, (_, size) in enumerate(bar, 1):
            written += size
            bar.set_postfix(kb=f"{written / 1024 / i:.0f}/subj")
            if i % 100 == 0:  # readers of a pack being built see its progress
                update_index(args.out)
        index = update_index(args.out)
    except (PackError, DatasetLayoutError) as e:
        raise CliError(str(e)) from None
    elapsed = time.perf_counter() - t0
    n = len(index["subjects"])
    rate = f" in {elapsed:.1f} s ({len(todo) / elapsed:.1f} subjects/s)" if todo else ""
    print(f"packed {len(todo)} subjects{rate}; {args.out} holds {n} subjects, {index['total_bytes'] / 2**20:.1f} MiB "
          f"({index['total_bytes'] / 1024 / max(n, 1):.1f} KB a subject)")
    return 0
