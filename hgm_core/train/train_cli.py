"""`hgm train`: train the HGM network on synthetic (or THuman2.0) renders, resumably, on a CPU.

    hgm train --run runs/tiny_1view --train-data data/train_s1000 --train-seeds 1000 \\
              --val-data data/val_s5555 --val-seed 5555 --cache data/cache
    hgm train --run runs/tiny_1view --resume          # continue from runs/tiny_1view/state.pt
    hgm train --run runs/v2 --config runs/tiny_1view/config.json --init-from runs/tiny_1view \
              --aim-input --supervision-crop 64           # a new run warm-started from another's weights
    hgm train --run runs/tiny_1view --export hgm_core/assets/checkpoints/tiny_1view   # fp16 + card

    hgm train --run runs/gpu --train-data data/pack/train_s1000_w128 --train-seeds 1000 --aim-input \
              --device cuda --batch-size 16 --workers 12   # a GPU: batches, samples made by 12 processes

Flags override the defaults of `TrainConfig`; `--config FILE` starts from a saved config.json. A
resumed run uses its own config.json. Without --val-data the run is not validated (no `best/`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

HELP = "train the HGM network (resumable; validation JSON + image grids in the run folder)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="run folder (config.json, state.pt, best/, val.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run with its saved config")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="only export the run's best checkpoint to DIR (fp16 + model card with the validation curve)")
    p.add_argument("--config", type=Path, default=None, help="start from this config.json (flags still override)")
    p.add_argument("--train-data", type=Path, nargs="+", default=None, help="training render layouts")
    p.add_argument("--train-seeds", type=int, nargs="+", default=None, help="datagen seeds of the training layouts")
    p.add_argument("--val-data", type=Path, default=None, help="held-out validation layout")
    p.add_argument("--val-seed", type=int, default=None, help="datagen seed of the validation layout")
    p.add_argument("--cache", type=Path, default=None, help="cache folder for subjects at training resolution")
    p.add_argument("--preset", choices=("tiny", "small", "big"), default=None, help="network size (default tiny)")
    p.add_argument("--views", type=int, choices=(1, 2), default=None, help="input views: 1 front, 2 front + back")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="warm start: weights of another run folder (its state.pt) or a checkpoint folder")
    p.add_argument("--aim-input", action=argparse.BooleanOptionalAction, default=None,
                   help="aim the input camera at the body's box centre, as inference does")
    p.add_argument("--supervision-crop", type=int, default=None, metavar="PX",
                   help="score supervision views on person windows of PX x PX (0 = whole frames)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default 1; more on a GPU)")
    p.add_argument("--workers", type=int, default=0, help="processes that make samples (default 0: this process)")
    p.add_argument("--device", default="cpu", help="where to train: auto, cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop (validated and saved) after this many minutes of wall time (default 0: no limit)")
    p.add_argument("--threads", type=int, default=1, help="torch + numba threads (default 1)")


def config_from_args(args: argparse.Namespace):
    from hgm_core.train.config import TrainConfig

    base = TrainConfig.load(args.config) if args.config else TrainConfig()
    flags = {
        "train_data": tuple(str(p) for p in args.train_data) if args.train_data else None,
        "train_seeds": tuple(args.train_seeds) if args.train_seeds else None,
        "val_data": str(args.val_data) if args.val_data else None,
        "val_seed": args.val_seed,
        "cache_dir": str(args.cache) if args.cache else None,
        "preset": args.preset,
        "num_views": args.views,
        "max_steps": args.max_steps,
        "lr": args.lr,
        "seed": args.seed,
        "init_from": str(args.init_from) if args.init_from else None,
        "aim_input": args.aim_input,
        "supervision_crop": args.supervision_crop,
        "batch_size": args.batch_size,
    }
    return replace(base, **{k: v for k, v in flags.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from hgm_core.cli import CliError
    from hgm_core.data.pack import is_pack
    from hgm_core.device import DeviceUnavailableError, resolve_device
    from hgm_core.runtime import set_compute_threads
    from hgm_core.train.config import TrainConfig, TrainConfigError
    from hgm_core.train.trainer import TrainError, train

    set_compute_threads(args.threads)
    if args.export:
        from hgm_core.train.export import ExportError, export_checkpoint

        try:
            out = export_checkpoint(args.run, args.export)
        except ExportError as e:
            raise CliError(str(e)) from e
        print(f"exported {args.run / 'best'} to {out}")
        return 0
    try:
        if args.resume:
            config = TrainConfig.load(args.run / "config.json")
        else:
            config = config_from_args(args)
        if not config.train_data:
            raise CliError("need --train-data (or --config)")
        layouts = [r for r in (*config.train_data, config.val_data) if r and not is_pack(Path(r))]
        if layouts and not config.cache_dir:
            raise CliError(f"render layouts {layouts} need --cache (a folder for subjects at training resolution)")
        if not config.val_data:
            print("no --val-data: this run is not validated (no best/; weights in state.pt)")
        state = train(config, args.run, resume=args.resume, device=resolve_device(args.device), workers=args.workers,
                      max_minutes=args.max_minutes)
    except (TrainError, TrainConfigError, FileNotFoundError, DeviceUnavailableError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"trained to step {state.step} ({state.cpu_seconds / 3600:.2f} CPU-hours); best validation score "
          f"{state.best_score:.2f} (PSNR + fg PSNR - 100 LPIPS); run in {args.run}")
    return 0
