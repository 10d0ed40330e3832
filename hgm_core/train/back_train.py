"""Train the learned back-view refiner (`hgm_core.model.back_cnn`) on synthetic pairs.

    hgm back-train pairs --data /work/data/pack/train_s1000_w128 --out /work/data/backpairs_s1000
    hgm back-train fit --pairs /work/data/backpairs_s1000 --val /work/data/backpairs_s5555 \
        --run /work/runs/back_cnn --minutes 15       # resumes from RUN/state.pt; run again to go on

(the command is `hgm_core/train/back_train_cli.py`).

Pairs (`pairs`): per subject of a person-window pack (`hgm pack`), one random input view; the GT
body, perturbed like a monocular fit (`train.sample.perturb_body`, `BodyNoise`'s defaults, in the
canonical units of the subject's ring), goes with that view's window to the `coarse` network
(`predict_avatar`, the embedded checkpoint unless `--checkpoint`), and the avatar is rendered on
white from every view 150°-210° around (the back views of `hgm eval`) with that view's window camera.
Each view gives one pair: (render, its alpha) -> the view's ground-truth window (and its mask).
A subject's pairs are one `{sid}.npz` in the output folder (uint8 arrays `rendered [P, S, S, 3]`,
`alpha [P, S, S]`, `target [P, S, S, 3]`, `mask [P, S, S]`, plus `views`, `input_view`), written
atomically, so a run that stops resumes where it was.

Training (`fit`): L1 on random square crops (scale 0.8-1.2 of the window: `back_view`'s camera
frames the body a little tighter than a pack's window) with random horizontal flips, Adam, 1 thread
by default; `state.pt` every `checkpoint_minutes`, and then the validation pairs' L1 / PSNR / fg PSNR
of the refined against the unrefined render; the best validation L1 is exported to `RUN/best/` as a
refiner folder (`save_back_cnn`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hgm_core.camera import CANONICAL_CAM_RADIUS, Cameras
from hgm_core.configs import config_from_dict, config_to_dict
from hgm_core.model.back_cnn import BackCNN, BackCNNConfig, num_parameters, save_back_cnn
from hgm_core.pipeline.back_view import render_views
from hgm_core.train.config import BodyNoise
from hgm_core.train.eval_cli import view_offset_deg
from hgm_core.train.sample import perturb_body
from hgm_core.train.validate import angle_group

def back_views(extrinsics: np.ndarray, input_view: int) -> list[int]:
    """Views of `extrinsics [V, 4, 4]` (world -> camera) in `hgm eval`'s back group seen from
    `input_view` (150°-210° around: `validate.angle_group`)."""
    E = np.asarray(extrinsics, np.float64)
    rel = E @ np.linalg.inv(E[input_view])
    return [v for v in range(len(E)) if angle_group(round(view_offset_deg(rel[v]), 1)) == "back"]


def window_cameras(K: np.ndarray, viewmats: np.ndarray, size: int) -> Cameras:
    """Cameras `K [P, 3, 3]`, `viewmats [P, 4, 4]` (from the avatar's frame) of `size`^2 windows."""
    return Cameras(torch.from_numpy(K).float(), torch.from_numpy(viewmats).float(), size, size)


def subject_pairs(model, subject: dict[str, np.ndarray], input_view: int, noise: BodyNoise | None,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The back-view pairs of one packed subject (`data.pack.load_packed_subject`) seen from `input_view`.

    The network sees the input window with the GT body moved into that camera's optical frame and
    perturbed by `noise` (canonical units: the ring distance is `CANONICAL_CAM_RADIUS`)."""
    from hgm_core.model.predict import predict_avatar

    E = subject["extrinsics"]
    body = subject["body"].astype(np.float64) @ E[input_view, :3, :3].T + E[input_view, :3, 3]
    if noise is not None:
        units = CANONICAL_CAM_RADIUS / float(subject["distance"])
        body = perturb_body(body * units, noise, rng) / units
    avatar = predict_avatar(model, subject["images"][input_view], subject["masks"][input_view], subject["intrinsics"][input_view], body)
    views = back_views(E, input_view)
    rel = np.stack([E[v] @ np.linalg.inv(E[input_view]) for v in views])
    size = subject["images"].shape[1]
    rgb, alpha = render_views(avatar, window_cameras(subject["intrinsics"][views], rel, size))
    return {"rendered": rgb, "alpha": np.round(alpha * 255).astype(np.uint8), "target": subject["images"][views],
            "mask": subject["masks"][views], "views": np.asarray(views, np.int64), "input_view": np.int64(input_view)}


def write_pairs(out: Path, sid: str, pairs: dict[str, np.ndarray]) -> None:
    tmp = out / f".{sid}.tmp{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **pairs)
    tmp.replace(out / f"{sid}.npz")


def load_pairs(*folders: str | Path) -> dict[str, np.ndarray]:
    """Every pair of the pairs folders, concatenated: uint8 `rendered`, `alpha`, `target`, `mask`."""
    files = []
    for folder in folders:
        found = sorted(p for p in Path(folder).glob("*.npz") if not p.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{folder} has no pair files ({{sid}}.npz); make them with `pairs`")
        files += found
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("rendered", "alpha", "target", "mask")}
    for p in files:
        with np.load(p) as z:
            for k in parts:
                parts[k].append(z[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def to_tensors(pairs: dict[str, np.ndarray], index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs `index` -> float tensors in [0, 1]: rgb `[B, 3, S, S]`, alpha `[B, 1, S, S]`, target `[B, 3, S, S]`, mask `[B, 1, S, S]`."""
    rgb = torch.from_numpy(pairs["rendered"][index]).permute(0, 3, 1, 2).float() / 255
    alpha = torch.from_numpy(pairs["alpha"][index])[:, None].float() / 255
    target = torch.from_numpy(pairs["target"][index]).permute(0, 3, 1, 2).float() / 255
    mask = torch.from_numpy(pairs["mask"][index])[:, None].float() / 255
    return rgb, alpha, target, mask


def augment(batch: tuple[torch.Tensor, ...], crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """One random square crop (side 0.8-1.2 x the image's, white / zero past the edge), resampled to
    `crop`, and a random horizontal flip, the same for every tensor of `batch` (`[B, C, S, S]` each)."""
    S = batch[0].shape[-1]
    side = int(round(S * rng.uniform(0.8, 1.2)))
    x0, y0 = (int(rng.integers(min(0, S - side), max(0, S - side) + 1)) for _ in range(2))
    pad = max(0, -x0, -y0, x0 + side - S, y0 + side - S)
    flip = rng.uniform() < 0.5
    fills = (1.0, 0.0, 1.0, 0.0)  # rgb, alpha, target, mask
    out = []
    for t, fill in zip(batch, fills):
        t = F.pad(t, (pad,) * 4, value=fill)[..., y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
        t = F.interpolate(t, size=(crop, crop), mode="area" if side > crop else "bilinear")
        out.append(t.flip(-1) if flip else t)
    return tuple(out)


def image_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean PSNR and fg PSNR (inside `mask` > 0.5) of `pred` vs `target` (`[B, 3, S, S]` in [0, 1])."""
    from hgm_core.train import metrics

    return {"psnr": float(metrics.psnr(pred, target).mean()), "fg_psnr": float(metrics.psnr(pred, target, mask > 0.5).mean())}


@dataclass(frozen=True)
class BackTrainConfig:
    """One training run of the back refiner (saved as `RUN/config.json`).

    Attributes:
        pairs: training pair folders (training seeds; e.g. two draws of input views and body noise);
        val: the validation pairs' folder (seed 5555).
        model: the network's shape.
        batch, crop: pairs per step and the crop side they are resampled to.
        lr: Adam's rate (cosine decay to 10 % over `total_steps`); seed: batches and crops.
        checkpoint_minutes: state and validation every this many minutes (and at the end).
    """

    pairs: tuple[str, ...] = ()
    val: str = ""
    model: BackCNNConfig = field(default_factory=BackCNNConfig)
    batch: int = 8
    crop: int = 96
    lr: float = 1e-3
    total_steps: int = 12000
    seed: int = 0
    checkpoint_minutes: float = 5.0


def learning_rate(config: BackTrainConfig, step: int) -> float:
    """Cosine decay from `lr` to `lr / 10` over `total_steps` (flat after)."""
    t = min(step / max(config.total_steps, 1), 1.0)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def validate(model: BackCNN, val: dict[str, np.ndarray], chunk: int = 32) -> dict[str, float]:
    """L1, PSNR and fg PSNR of the refined and the unrefined renders of every validation pair (full windows)."""
    model.eval()
    n = len(val["rendered"])
    sums = {"l1": 0.0, "l1_unrefined": 0.0}
    preds, rgbs, targets, masks = [], [], [], []
    for i in range(0, n, chunk):
        rgb, alpha, target, mask = to_tensors(val, np.arange(i, min(i + chunk, n)))
        pred = model(rgb, alpha)
        sums["l1"] += float((pred - target).abs().mean((1, 2, 3)).sum())
        sums["l1_unrefined"] += float((rgb - target).abs().mean((1, 2, 3)).sum())
        preds.append(pred)
        rgbs.append(rgb)
        targets.append(target)
        masks.append(mask)
    pred, rgb, target, mask = (torch.cat(x) for x in (preds, rgbs, targets, masks))
    model.train()
    refined, before = image_scores(pred, target, mask), image_scores(rgb, target, mask)
    return {k: v / n for k, v in sums.items()} | refined | {f"{k}_unrefined": v for k, v in before.items()} | {"pairs": n}


def fit(config: BackTrainConfig, run: Path, minutes: float) -> dict:
    """Train for `minutes` (or until `total_steps`), resuming from `run/state.pt`; returns the last validation."""
    from tqdm import tqdm

    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))
    pairs, val = load_pairs(*config.pairs), load_pairs(config.val)
    model = BackCNN(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, best, history = 0, math.inf, []
    state_path = run / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, history = state["step"], state["best"], state["history"]
    rng = np.random.default_rng(config.seed + step)
    t_end = time.monotonic() + minutes * 60
    t_ckpt = time.monotonic() + config.checkpoint_minutes * 60
    cpu0 = time.process_time()
    bar = tqdm(total=config.total_steps, initial=step, desc="back_cnn", mininterval=10)
    losses: list[float] = []
    record: dict = {}

    def checkpoint() -> dict:
        nonlocal best
        record = {"step": step, "train_l1": float(np.mean(losses)) if losses else None, **validate(model, val),
                  "cpu_seconds": time.process_time() - cpu0}
        history.append(record)
        if record["l1"] < best:
            best = record["l1"]
            card = {"trained_on": config.pairs, "validated_on": config.val, "step": step, "validation": record,
                    "parameters": num_parameters(model)}
            save_back_cnn(model, run / "best", card)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best, "history": history}, state_path)
        (run / "history.json").write_text(json.dumps(history, indent=1))
        return record

    model.train()
    while step < config.total_steps and time.monotonic() < t_end:
        index = rng.integers(0, len(pairs["rendered"]), config.batch)
        rgb, alpha, target, _ = augment(to_tensors(pairs, index), config.crop, rng)
        for g in opt.param_groups:
            g["lr"] = learning_rate(config, step)
        loss = (model(rgb, alpha) - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if time.monotonic() > t_ckpt:
            record = checkpoint()
            losses.clear()
            bar.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            t_ckpt = time.monotonic() + config.checkpoint_minutes * 60
    bar.close()
    record = checkpoint()
    return record


# ----------------------------------------------------------------------------------------------- entry


def make_pairs(args: argparse.Namespace) -> int:
    """`hgm back-train pairs`: the pairs of a pack's subjects (resumes: done subjects are skipped)."""
    from tqdm import tqdm

    from hgm_core.data.pack import load_packed_subject, packed_subjects
    from hgm_core.model.hgm import HGM
    from hgm_core.model.predict import load_default_model

    model = HGM.from_pretrained(args.checkpoint) if args.checkpoint else load_default_model()
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    subjects = packed_subjects(args.data)[: args.limit]
    todo = [s for s in subjects if not (args.out / f"{s}.npz").exists()]
    meta = {"pack": str(args.data), "subjects": len(subjects), "checkpoint": args.checkpoint or "embedded",
            "noise": config_to_dict(BodyNoise()) if not args.exact_body else None, "seed": args.seed}
    (args.out / "pairs.json").write_text(json.dumps(meta, indent=1))
    for sid in tqdm(todo, desc="back pairs", mininterval=10):
        subject = load_packed_subject(args.data, sid)
        rng = np.random.default_rng([args.seed, int(sid) if sid.isdigit() else hash(sid) % 2**31])
        input_view = int(rng.integers(len(subject["extrinsics"])))
        write_pairs(args.out, sid, subject_pairs(model, subject, input_view, None if args.exact_body else BodyNoise(), rng))
    return 0


def fit_run(args: argparse.Namespace) -> int:
    """`hgm back-train fit`: a new run (`--pairs`, `--val`) or the run in `--run` continued."""
    run: Path = args.run
    if (run / "config.json").exists():
        config = config_from_dict(BackTrainConfig, json.loads((run / "config.json").read_text()))
    else:
        config = BackTrainConfig(pairs=tuple(str(p) for p in args.pairs), val=str(args.val), total_steps=args.steps)
    record = fit(config, run, args.minutes)
    print(json.dumps(record))
    return 0
