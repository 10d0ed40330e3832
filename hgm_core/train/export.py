"""Export a run's best checkpoint for the package: fp16 safetensors + config + model card with the curve.

    hgm train --run /work/runs/tiny_1view --export hgm_core/assets/checkpoints/tiny_1view
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from hgm_core.model import HGM, read_checkpoint_config
from hgm_core.model.checkpoint import WEIGHTS_NAME

MAX_BYTES = 25 * 1024 * 1024
"""Largest weights file that may go into git (docs/architecture.md §6)."""


class ExportError(RuntimeError):
    """No best checkpoint in the run, or the exported weights are too large for the package."""


def validation_table(val_jsonl: Path) -> str:
    """Markdown table of a run's validation curve: network vs the body-colour baseline, all novel views
    and the back views."""
    rows = [json.loads(line) for line in Path(val_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        return ""
    b, bb = rows[0]["baseline"]["all"], rows[0]["baseline"].get("back", {})
    head = ("| step | CPU-h | PSNR | fg PSNR | SSIM | LPIPS | back PSNR | back fg PSNR |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = [f"| baseline (body colours) | – | {b['psnr']:.2f} | {b['fg_psnr']:.2f} | {b['ssim']:.4f} | {b['lpips']:.4f} | "
             f"{bb.get('psnr', float('nan')):.2f} | {bb.get('fg_psnr', float('nan')):.2f} |"]
    for r in rows:
        m, mb = r["model"]["all"], r["model"].get("back", {})
        lines.append(f"| {r['step']} | {r['cpu_hours']:.2f} | {m['psnr']:.2f} | {m['fg_psnr']:.2f} | {m['ssim']:.4f} | "
                     f"{m['lpips']:.4f} | {mb.get('psnr', float('nan')):.2f} | {mb.get('fg_psnr', float('nan')):.2f} |")
    return head + "\n".join(lines)


def export_checkpoint(run_dir: Path, dest: Path) -> Path:
    """Write `run_dir/best` to `dest` in fp16 with its card extended by the validation curve; returns `dest`."""
    best = Path(run_dir) / "best"
    if not (best / WEIGHTS_NAME).exists():
        raise ExportError(f"{best} has no checkpoint yet (written at the first validation that improves)")
    _, card = read_checkpoint_config(best)
    model = HGM.from_pretrained(best).half()
    curve = validation_table(Path(run_dir) / "val.jsonl")
    notes = card.notes + (f"\n\nValidation curve of the run (fixed split, view 0 in, views 1-11 scored):\n\n{curve}\n" if curve else "")
    init_path = Path(run_dir) / "init.json"
    if init_path.exists():  # a warm-started run: the curve of the run its first weights came from
        init = json.loads(init_path.read_text())
        source_curve = validation_table(Path(init["source"]) / "val.jsonl") if (Path(init["source"]) / "val.jsonl").exists() else ""
        if source_curve:
            notes += (f"\nThis run started from the weights of {init['source']} at step {init['step']}; that run's own "
                      f"validation curve (its own validation settings):\n\n{source_curve}\n")
    out = model.save_pretrained(dest, replace(card, notes=notes + "\nWeights stored as fp16 (load as float32)."))
    size = (out / WEIGHTS_NAME).stat().st_size
    if size > MAX_BYTES:
        raise ExportError(f"{out / WEIGHTS_NAME} is {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit")
    return out
