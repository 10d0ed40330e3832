"""`hgm back-train`: make the learned back-view refiner's pairs and train it (`hgm_core.train.back_train`).

    hgm back-train pairs --data data/pack/train_s1000_w128 --out data/backpairs_s1000
    hgm back-train fit --pairs data/backpairs_s1000 --val data/backpairs_s5555 --run runs/back_cnn --minutes 15
    hgm back-train fit --run runs/back_cnn --minutes 15      # continue the run (its saved config)
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "make back-view pairs from a pack and train the learned back-view refiner (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hgm_core.train.back_train import BackTrainConfig

    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    pairs = sub.add_parser("pairs", help="make (render, ground truth) back-view pairs from a person-window pack")
    pairs.add_argument("--data", type=Path, required=True, help="a person-window pack (hgm pack)")
    pairs.add_argument("--out", type=Path, required=True, help="pair folder (resumes: subjects already there are skipped)")
    pairs.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    pairs.add_argument("--checkpoint", default=None, help="one-view HGM checkpoint folder (default: the embedded one)")
    pairs.add_argument("--exact-body", action="store_true", help="the GT body as it is (no fit-like noise)")
    pairs.add_argument("--seed", type=int, default=0)
    fit = sub.add_parser("fit", help="train the refiner (a new run with --pairs and --val, or continue --run)")
    fit.add_argument("--run", type=Path, required=True, help="run folder (config.json, state.pt, best/)")
    fit.add_argument("--pairs", type=Path, nargs="+", help="training pair folders (a new run)")
    fit.add_argument("--val", type=Path, help="validation pair folder (a new run)")
    fit.add_argument("--steps", type=int, default=BackTrainConfig.total_steps, help="total steps of a new run")
    fit.add_argument("--minutes", type=float, default=15.0, help="stop after this long (run again to continue)")
    for q in (pairs, fit):
        q.add_argument("--threads", type=int, default=1, help="torch + numba threads (default 1)")


def run(args: argparse.Namespace) -> int:
    from hgm_core.cli import CliError
    from hgm_core.runtime import set_compute_threads
    from hgm_core.train.back_train import fit_run, make_pairs

    set_compute_threads(args.threads)
    if args.action == "pairs":
        if not args.data.is_dir():
            raise CliError(f"--data {args.data} is not a folder (a person-window pack from `hgm pack`)")
        return make_pairs(args)
    if not (args.run / "config.json").exists() and not (args.pairs and args.val):
        raise CliError(f"{args.run} holds no run to continue; a new run needs --pairs and --val")
    return fit_run(args)
