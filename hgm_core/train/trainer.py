"""The training loop of `hgm train`: steps, losses, resumable state, periodic validation.

A run folder holds
    config.json        the `TrainConfig` (written once; a resumed run must match it)
    state.pt           weights, Adam state, step, RNG states, CPU seconds (every `checkpoint_minutes`)
    init.json          a warm-started run's source of weights (run or checkpoint, its step and CPU-hours)
    best/              `save_pretrained` of the best validation so far (`selection_score`)
    val.jsonl          one line per validation: step, CPU seconds, model and baseline metrics
    val_latest.png     the latest validation grid (input | GT, network, baseline at views 3, 6, 9)

Data are render layouts (cached at the training resolution, `hgm_core.data.cache`) or person-window
packs (`hgm_core.data.pack`). On a GPU (`device`), `batch_size` samples share one forward pass and
`workers` processes make the samples; each worker draws from its own seed (the run's seed, the step
the stream started at, the worker's index), so a resumed run continues with a fresh, reproducible stream.
A run without `val_data` skips validation (no `best/`; its weights are in `state.pt`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hgm_core.data.cache import complete_subjects, load_cached_subject
from hgm_core.data.pack import is_pack, load_packed_subject, packed_subjects
from hgm_core.model import (
    HGM,
    CheckpointError,
    ModelCard,
    config_for,
    read_checkpoint_config,
    to_gaussians,
)
from hgm_core.model.config import HGMConfig
from hgm_core.render import rasterize
from hgm_core.train.config import RESERVED_SEEDS, TrainConfig, TrainConfigError
from hgm_core.train.sample import Sample, crop_supervision, draw_views, make_sample

STATE_NAME = "state.pt"
INIT_NAME = "init.json"
"""Where a warm-started run records the source of its first weights (`init_weights`)."""


class TrainError(RuntimeError):
    """A run that cannot start or resume (no data, mismatched config, reserved seed in the data)."""


@dataclass
class StepTimes:
    """Seconds spent in one step, by phase."""

    data: float = 0.0
    forward: float = 0.0
    render: float = 0.0
    loss: float = 0.0
    backward: float = 0.0

    @property
    def total(self) -> float:
        return self.data + self.forward + self.render + self.loss + self.backward


@dataclass
class StepResult:
    loss: float
    parts: dict[str, float]
    times: StepTimes = field(default_factory=StepTimes)


# --------------------------------------------------------------------------------------------- data


def layout_seed(root: Path) -> int | None:
    """The datagen seed recorded in `root/dataset.json` (None for layouts without one, e.g. THuman2.0)."""
    index = Path(root) / "dataset.json"
    return json.loads(index.read_text()).get("seed") if index.exists() else None


def check_layout_seeds(config: TrainConfig) -> None:
    """Refuse layouts generated from a reserved evaluation seed, training data equal to the validation
    data, and person-window packs without the aimed input view."""
    for root in (r for r in (*config.train_data, config.val_data) if r):
        seed = layout_seed(Path(root))
        if seed in RESERVED_SEEDS:
            raise TrainConfigError(f"{root} was generated with seed {seed}, reserved for evaluation {RESERVED_SEEDS}")
    if config.val_data and Path(config.val_data).resolve() in {Path(r).resolve() for r in config.train_data}:
        raise TrainConfigError("the validation layout is also a training layout")
    packs = [r for r in (*config.train_data, config.val_data) if r and is_pack(Path(r))]
    if packs and not config.aim_input:
        # A person window's principal point is off its centre; only the aimed input view resamples it
        # into the centred camera the network's rays assume.
        raise TrainConfigError(f"person-window packs {packs} need aim_input (--aim-input)")


class SubjectPool:
    """Training subjects of several layouts or packs, rescanned while one is still being generated."""

    def __init__(self, roots: tuple[str, ...], image_size: int, cache_dir: Path) -> None:
        self.roots = [Path(r) for r in roots]
        self.packs = {root: is_pack(root) for root in self.roots}
        self.image_size, self.cache_dir = image_size, Path(cache_dir)
        self.items: list[tuple[Path, str]] = []
        self.rescan()

    def rescan(self) -> int:
        self.items = [(root, sid) for root in self.roots
                      for sid in (packed_subjects(root) if self.packs[root] else complete_subjects(root))]
        return len(self.items)

    def load(self, root: Path, sid: str) -> dict[str, np.ndarray]:
        if self.packs[root]:
            return load_packed_subject(root, sid)
        return load_cached_subject(root, sid, self.image_size, self.cache_dir)

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not self.items:
            raise TrainError(f"no complete subjects in {[str(r) for r in self.roots]}")
        return self.load(*self.items[int(rng.integers(len(self.items)))])


def training_sample(pool: SubjectPool, config: TrainConfig, model_config: HGMConfig, rng: np.random.Generator) -> Sample:
    subject = pool.draw(rng)
    p = np.asarray(config.input_view_probs, np.float64)
    n = len(subject["extrinsics"])
    input_view = int(config.input_views[int(rng.choice(len(p), p=p / p.sum()))]) % n
    views = draw_views(n, input_view, config.supervision_views, rng)
    sample = make_sample(subject, input_view, views, config.num_views, config.body_noise, rng, aim=config.aim_input,
                         input_size=model_config.input_size, fill=model_config.input_fill)
    return crop_supervision(sample, config.supervision_crop, config.crop_margin) if config.supervision_crop else sample


class SampleStream(torch.utils.data.IterableDataset):
    """An endless stream of training samples for a `DataLoader` with worker processes (see the
    module docstring for the seeds); `start_step` makes a resumed run draw a new stream."""

    def __init__(self, pool: SubjectPool, config: TrainConfig, model_config: HGMConfig, start_step: int) -> None:
        super().__init__()
        self.pool, self.config, self.model_config, self.start_step = pool, config, model_config, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.config.seed, self.start_step, info.id if info else 0])
        while True:
            yield training_sample(self.pool, self.config, self.model_config, rng)


def sample_batches(pool: SubjectPool, config: TrainConfig, model_config: HGMConfig, rng: np.random.Generator,
                   workers: int, start_step: int):
    """Endless lists of `config.batch_size` samples: made in this process from `rng` (reproducible
    across a resume) or, with `workers` > 0, by a `DataLoader`'s worker processes."""
    if workers == 0:
        while True:
            yield [training_sample(pool, config, model_config, rng) for _ in range(config.batch_size)]
    loader = torch.utils.data.DataLoader(SampleStream(pool, config, model_config, start_step), batch_size=None,
                                         num_workers=workers, prefetch_factor=4, persistent_workers=True)
    stream = iter(loader)
    while True:
        yield [next(stream) for _ in range(config.batch_size)]


# --------------------------------------------------------------------------------------------- one step


def render_sets(out_body: torch.Tensor, out_merged: torch.Tensor, sample: Sample):
    """Render the avatar (body set + merged set, activated `[N, 14]` each) from the sample's cameras
    (on the Gaussians' device: `rasterize` picks the backend)."""
    g = to_gaussians(torch.cat((out_body, out_merged)))
    return rasterize(g, sample.cameras, background=(1.0, 1.0, 1.0), backend="auto")


def person_crop(mask: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """A `size x size` window (clamped to the image) centred on a random pixel of `mask [S, S]` (> 0.5)."""
    S = mask.shape[-1]
    if size >= S:
        return slice(0, S), slice(0, S)
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:
        cy = cx = S // 2
    else:
        k = int(rng.integers(len(ys)))
        cy, cx = int(ys[k]), int(xs[k])
    y0 = min(max(cy - size // 2, 0), S - size)
    x0 = min(max(cx - size // 2, 0), S - size)
    return slice(y0, y0 + size), slice(x0, x0 + size)


def loss_terms(rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor, sample: Sample, config: TrainConfig,
               lpips_model, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The paper's losses: L2 RGB, L2 mask and LPIPS-VGG on `lpips_views` random supervision views
    (each on a `lpips_crop` window on the person: VGG is the dearest part of a CPU step); with
    `lambda_depth` and depth targets also L1 depth on the pixels the person covers in the GT and
    the render (the mask term covers the rest).

    rgb `[C, S, S, 3]`, alpha and depth `[C, S, S, 1]` (renders) against the sample's targets."""
    terms = {"rgb": ((rgb - sample.target_rgb) ** 2).mean(), "mask": ((alpha - sample.target_mask) ** 2).mean()}
    if config.lambda_depth > 0 and sample.target_depth is not None:
        # A single view cannot tell how deep the person is, and RGB + mask alone let the network
        # answer with a flat sheet of pixel Gaussians behind a faded body set; depth pins the surface.
        solid = ((sample.target_mask > 0.99) & (sample.target_depth > 0) & (alpha.detach() > 0.5)).to(depth.dtype)
        terms["depth"] = ((depth - sample.target_depth).abs() * solid).sum() / solid.sum().clamp_min(1.0)
    if config.lpips_views and config.lambda_lpips > 0:
        crops_p, crops_t = [], []
        for i in rng.choice(rgb.shape[0], config.lpips_views, replace=False):
            ys, xs = person_crop(sample.target_mask[i, ..., 0], config.lpips_crop, rng)
            crops_p.append(rgb[i, ys, xs])
            crops_t.append(sample.target_rgb[i, ys, xs])
        terms["lpips"] = lpips_model(torch.stack(crops_p).permute(0, 3, 1, 2), torch.stack(crops_t).permute(0, 3, 1, 2)).mean()
    return terms


def train_step(model: HGM, optimizer: torch.optim.Optimizer, samples: list[Sample], config: TrainConfig, lpips_model,
               rng: np.random.Generator) -> StepResult:
    """Forward (the samples as one batch), render, loss (mean over the samples), backward and one
    optimiser step; timings per phase (data time is the caller's). The samples are on the model's device."""
    times = StepTimes()
    device = samples[0].images.device

    def clock() -> float:  # CUDA runs asynchronously: wait for it so each phase gets its own time
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    t = clock()
    out = model(*(torch.cat([getattr(s, k) for s in samples]) for k in ("images", "vertices", "K", "c2w")))
    times.forward = clock() - t
    t = clock()
    renders = [render_sets(out.body[i], out.merged[i], s) for i, s in enumerate(samples)]
    times.render = clock() - t
    t = clock()
    weights = {"rgb": config.lambda_rgb, "mask": config.lambda_mask, "lpips": config.lambda_lpips, "depth": config.lambda_depth}
    parts: dict[str, torch.Tensor] = {}
    for r, s in zip(renders, samples):
        for k, v in loss_terms(r.rgb, r.alpha, r.depth, s, config, lpips_model, rng).items():
            parts[k] = parts.get(k, 0) + v / len(samples)
    loss = sum(weights[k] * v for k, v in parts.items())
    times.loss = clock() - t
    t = clock()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    times.backward = clock() - t
    return StepResult(float(loss.detach()), {k: float(v.detach()) for k, v in parts.items()}, times)


def build_optimizer(model: HGM, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `config.lr`, then constant."""
    return config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))


# --------------------------------------------------------------------------------------------- state


@dataclass
class RunState:
    step: int = 0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    """Wall seconds of steps taken on a CUDA device (a borrowed GPU's time, beside the CPU-hours)."""
    best_score: float = -float("inf")


def selection_score(summary: dict[str, float]) -> float:
    """What `best/` maximises: whole-image PSNR + foreground PSNR - 100 LPIPS.

    No single figure will do: the untrained body-guided network already has the best foreground
    PSNR of a first run (its pixel set covers the silhouette), while whole-image PSNR mostly rewards
    the outline and LPIPS the texture. 0.01 LPIPS weighs as much as 1 dB, about the ratio of their
    changes in that run."""
    return summary["psnr"] + summary["fg_psnr"] - 100.0 * summary["lpips"]


def save_state(run_dir: Path, model: HGM, optimizer: torch.optim.Optimizer, state: RunState,
               rng: np.random.Generator) -> None:
    """Atomically write weights, optimiser, step, RNG states and bookkeeping to `run_dir/state.pt`."""
    blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": state.step,
            "cpu_seconds": state.cpu_seconds, "gpu_seconds": state.gpu_seconds, "best_score": state.best_score, "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "model_config": model.config.to_dict()}
    tmp = run_dir / (STATE_NAME + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(run_dir / STATE_NAME)


def load_state(run_dir: Path, model: HGM, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> RunState:
    """Restore what `save_state` wrote into the given objects."""
    blob = torch.load(run_dir / STATE_NAME, map_location="cpu", weights_only=False)
    if blob["model_config"] != model.config.to_dict():
        raise TrainError(f"{run_dir / STATE_NAME} was saved with another model config")
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    rng.bit_generator.state = blob["numpy_rng"]
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    # States from before the selection score kept the best foreground PSNR instead: start the best over.
    return RunState(blob["step"], blob["cpu_seconds"], blob.get("gpu_seconds", 0.0), blob.get("best_score", -float("inf")))


def init_weights(model: HGM, source: Path) -> dict:
    """Warm start: load network weights from a run folder (its `state.pt`) or a checkpoint folder.

    The source may differ from `model` in fields no weight depends on (`HGMConfig.shares_weights`): the
    view count (the UNet attends over every pixel of every view, tokens belong to vertices), so the
    two-view network of `fuse` starts from the one-view weights, and how inputs are made.

    Returns:
        where they came from: `{"source", "step", "cpu_hours"}` (CPU-hours None for a checkpoint folder).
    Raises:
        TrainError: no weights there, or saved with another model config."""
    source = Path(source)
    if (source / STATE_NAME).exists():
        blob = torch.load(source / STATE_NAME, map_location="cpu", weights_only=False)
        if not HGMConfig.from_dict(blob["model_config"]).shares_weights(model.config):
            raise TrainError(f"{source / STATE_NAME} was saved with another model config")
        model.load_state_dict(blob["model"])
        record = {"source": str(source), "step": blob["step"], "cpu_hours": blob["cpu_seconds"] / 3600,
                  "gpu_hours": blob.get("gpu_seconds", 0.0) / 3600}
        if (source / INIT_NAME).exists():  # the source's own warm start: the card tells the whole lineage
            record["init"] = json.loads((source / INIT_NAME).read_text())
        return record
    if (source / "model.safetensors").exists():
        try:
            stored, card = read_checkpoint_config(source)
            if not stored.shares_weights(model.config):
                raise TrainError(f"{source} was saved with another model config")
            model.load_state_dict(HGM.from_pretrained(source).float().state_dict())
        except CheckpointError as e:
            raise TrainError(f"cannot warm-start from {source}: {e}") from None
        return {"source": str(source), "step": card.steps, "cpu_hours": None}
    raise TrainError(f"nothing to warm-start from in {source} (no {STATE_NAME}, no model.safetensors)")


def model_card(config: TrainConfig, state: RunState, subjects: int, val: dict, init: dict | None = None) -> ModelCard:
    m, b = val["model"]["all"], val["baseline"]["all"]
    recipe = (f" Input view aimed at the body's box centre as at inference: {'yes' if config.aim_input else 'no'}. "
              f"Supervision: {f'{config.supervision_crop}^2 person windows' if config.supervision_crop else 'whole frames'}.")
    if config.num_views == 2:  # what the second view is matters when reading the figures: fuse gets a refined render
        recipe += (" Second input view: the ground-truth back view (ring view input + n/2), aimed as `fuse` aims its "
                   "refined back view; validation also gives it the ground-truth back, an upper bound for `fuse`.")
    lineage = []
    while init:
        spent = f", {init['cpu_hours']:.2f} CPU-hours" if init.get("cpu_hours") is not None else ""
        spent += f", {init['gpu_hours']:.2f} GPU-hours" if init.get("gpu_hours") else ""
        lineage.append(f"{init['source']} at step {init['step']}{spent}")
        init = init.get("init")
    if lineage:
        recipe += (" Warm-started from " + ", itself warm-started from ".join(lineage)
                   + "; steps and CPU-hours above count this run only.")
    packed = all(is_pack(Path(r)) for r in config.train_data)
    data_form = f"person windows at {config.image_size}^2 (hgm pack)" if packed else f"cached at {config.image_size}^2"
    metrics = {f"val_{k}": v for k, v in m.items()} | {f"val_baseline_{k}": v for k, v in b.items()}
    metrics |= {f"val_back_{k}": v for k, v in val["model"].get("back", {}).items()}
    return ModelCard(
        training_data=(f"hgm datagen v2 (anny bodies, proxy clothes, HDRI light), train seeds {list(config.train_seeds)} "
                       f"({subjects} subjects, 12 views, {data_form}), validation seed {config.val_seed} "
                       f"({val['subjects']} subjects); seeds {list(RESERVED_SEEDS)} reserved for evaluation"),
        steps=state.step,
        metrics=metrics,
        notes=(f"{state.cpu_seconds / 3600:.2f} CPU-hours (one thread)"
               + (f" and {state.gpu_seconds / 3600:.2f} GPU-hours" if state.gpu_seconds else "") + ". Input: GT body with fitting-like noise "
               f"({config.body_noise}). Loss: L2 RGB + L2 mask + LPIPS-VGG ({config.lpips_views} view(s)/sample at {config.lpips_crop}^2)"
               + (f" + {config.lambda_depth:g} x L1 depth" if config.lambda_depth else "") + ", "
               f"{config.supervision_views} views/sample, {config.batch_size} sample(s)/step. Validation: view 0 in, views 1-11 scored "
               f"{'on person windows ' if packed else ''}at {config.image_size}^2, fixed noisy bodies; baseline = body "
               "vertices coloured from the input." + recipe),
    )


# --------------------------------------------------------------------------------------------- loop


def train(config: TrainConfig, run_dir: Path, resume: bool, device: torch.device | str = "cpu", workers: int = 0,
          max_minutes: float = 0.0) -> RunState:
    """Train until `config.max_steps` on `device`, checkpointing and validating on the way; `workers`
    sample-making processes (0 = in this process); `max_minutes` > 0 stops (validated and saved) after
    that much wall time, e.g. a borrowed machine's lease. See the module docstring."""
    from tqdm import tqdm

    from hgm_core.train.lpips import LPIPS
    from hgm_core.train.validate import validate

    check_layout_seeds(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if resume:
        if not (run_dir / STATE_NAME).exists():
            raise TrainError(f"nothing to resume in {run_dir} (no {STATE_NAME})")
        saved = TrainConfig.load(config_path)
        if saved != config:
            raise TrainError(f"{config_path} differs from this run's config; resume with --config {config_path}")
    elif (run_dir / STATE_NAME).exists():
        raise TrainError(f"{run_dir} already holds a run; pass --resume to continue it")
    else:
        config.save(config_path)

    device = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = HGM(config_for(config.preset, num_views=config.num_views)).train()
    if model.config.input_size != config.image_size:
        raise TrainConfigError(f"image_size {config.image_size} must equal the {config.preset} input size {model.config.input_size}")
    optimizer = build_optimizer(model, config)
    if resume:
        state = load_state(run_dir, model, optimizer, rng)
    else:
        state = RunState()
        if config.init_from:
            (run_dir / INIT_NAME).write_text(json.dumps(init_weights(model, Path(config.init_from))) + "\n")
    model.to(device)
    optimizer.load_state_dict(optimizer.state_dict())  # moves a resumed Adam state onto the parameters' device
    cpu_base = state.cpu_seconds - time.process_time()  # every CPU second of this process counts, validation too
    lpips_model = LPIPS.load().to(device)
    pool = SubjectPool(config.train_data, config.image_size, Path(config.cache_dir))
    val_pool = SubjectPool((config.val_data,), config.image_size, Path(config.cache_dir)) if config.val_data else None
    val_subjects = [val_pool.load(*item) for item in sorted(val_pool.items)[: config.val_subjects]] if val_pool else []

    baseline: dict = {}

    def run_validation() -> None:
        if val_pool is None:
            return
        state.cpu_seconds = cpu_base + time.process_time()
        result, grid = validate(model, val_subjects, config.body_noise, lpips_model, with_baseline=not baseline,
                                aim=config.aim_input)
        baseline.update(result.pop("baseline", {}))
        result["baseline"] = baseline
        line = {"step": state.step, "cpu_hours": state.cpu_seconds / 3600, "train_subjects": len(pool.items)} | result
        with open(run_dir / "val.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        _write_png(run_dir / "val_latest.png", grid)
        score = selection_score(result["model"]["all"])
        if score > state.best_score:
            state.best_score = score
            init = json.loads((run_dir / INIT_NAME).read_text()) if (run_dir / INIT_NAME).exists() else None
            model.save_pretrained(run_dir / "best", model_card(config, state, len(pool.items), result, init))
        m, b = result["model"]["all"], result["baseline"]["all"]
        tqdm.write(f"step {state.step}: val PSNR {m['psnr']:.2f} fg {m['fg_psnr']:.2f} LPIPS {m['lpips']:.4f} "
                   f"(baseline {b['psnr']:.2f} / {b['fg_psnr']:.2f} / {b['lpips']:.4f}); {len(pool.items)} train subjects")

    if state.step == 0:
        run_validation()
    last_ckpt = last_val = last_scan = started = time.monotonic()
    bar = tqdm(total=config.max_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    recent: list[tuple[float, StepTimes]] = []  # (loss, step times) since the last checkpoint
    batches = sample_batches(pool, config, model.config, rng, workers, state.step)
    while state.step < config.max_steps and not (max_minutes > 0 and time.monotonic() - started > 60 * max_minutes):
        t = time.perf_counter()
        samples = [s.to(device) for s in next(batches)]
        data_s = time.perf_counter() - t
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(state.step, config)
        result = train_step(model, optimizer, samples, config, lpips_model, rng)
        result.times.data = data_s
        state.step += 1
        state.cpu_seconds = cpu_base + time.process_time()
        if device.type == "cuda":
            state.gpu_seconds += time.perf_counter() - t
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", rgb=f"{result.parts['rgb']:.4f}", s_step=f"{result.times.total:.2f}")
        now = time.monotonic()
        if now - last_scan > 60 * config.rescan_minutes:
            pool.rescan()
            last_scan = now
        if now - last_val > 60 * config.val_minutes:
            run_validation()
            last_val = time.monotonic()
        recent.append((result.loss, result.times))
        if now - last_ckpt > 60 * config.checkpoint_minutes or state.step == config.max_steps:
            save_state(run_dir, model, optimizer, state, rng)
            last_ckpt = time.monotonic()
            # One line per checkpoint: the bar is hidden when the log is not a terminal (a background run).
            phases = {k: np.median([getattr(r[1], k) for r in recent]) for k in ("data", "forward", "render", "loss", "backward")}
            tqdm.write(f"checkpoint at step {state.step} ({state.cpu_seconds / 3600:.2f} CPU-h): mean loss "
                       f"{np.mean([r[0] for r in recent]):.4f}, {np.median([r[1].total for r in recent]):.3f} s/step over the "
                       f"last {len(recent)} steps (" + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()) + ")")
            recent.clear()
    bar.close()
    run_validation()
    save_state(run_dir, model, optimizer, state, rng)
    return state


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)
