"""The `back_view` stage and its ControlNet-tile SD 1.5 img2img refiner, with RANDOM tiny weights.

Real Stable Diffusion and ControlNet weights are gigabytes and never downloaded, so these tests
build the same model classes from tiny configs with randomly initialised weights (UNet, ControlNet,
VAE with channels (8, 16), a 2-layer CLIP text model, a byte-level BPE tokenizer written here),
save them as local folders, and load them through the code path a user's weight folders take
(`local_files_only=True`). Loading, prompt encoding, ControlNet conditioning and img2img scheduling
run for real; the refined images are noise, so nothing here says anything about image quality.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from hgm_core.body import FitConfig, fit_body  # noqa: E402
from hgm_core.model.back_refiner import BackRefinerError, TileRefiner, TileSettings  # noqa: E402
from hgm_core.perception import default_intrinsics  # noqa: E402
from hgm_core.pipeline import Reconstructor, ReconstructorConfig  # noqa: E402
from hgm_core.pipeline.back_view import BackViewConfig, BackViewStage  # noqa: E402
from hgm_core.pipeline.stage import Frame  # noqa: E402
from hgm_core.types import ReconstructionRequest, StageUnavailableError  # noqa: E402
from tests.test_fit import anny_body, synthetic_case  # noqa: E402, F401  (anny_body: module fixture)
from tests.test_refine_body import surface_avatar  # noqa: E402

FAST = TileSettings(steps=10, strength=0.5)  # 5 denoising steps instead of the official 20


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet (GPT-2's bytes -> printable characters), each alone and word-final."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in cs]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(c, len(vocab))
    return vocab


@pytest.fixture(scope="module")
def random_tiny_weights(tmp_path_factory):
    """Local folders `base/` (SD 1.5 layout) and `controlnet/` of tiny RANDOMLY initialised models."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("random_tiny_sd15")
    torch.manual_seed(0)
    blocks = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}
    cross = {"cross_attention_dim": 16, "attention_head_dim": 2, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D")}
    unet = UNet2DConditionModel(**blocks, **cross, sample_size=16, in_channels=4, out_channels=4,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    controlnet = ControlNetModel(**blocks, **cross, in_channels=4, conditioning_embedding_out_channels=(4, 8))
    vae = AutoencoderKL(**blocks, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    words = root / "words"
    words.mkdir()
    (words / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (words / "merges.txt").write_text("#version: 0.2\n")  # no merges: every character is a token
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionControlNetImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
                                                    scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
    pipe.save_pretrained(root / "base")
    controlnet.save_pretrained(root / "controlnet")
    return root / "base", root / "controlnet"


def test_byte_vocab_covers_all_bytes_once() -> None:
    vocab = _byte_vocab()
    assert len(vocab) == 2 + 2 * 256 and len(set(vocab.values())) == len(vocab)


def test_random_tiny_weights_load_from_local_folders_and_run_the_official_schedule(random_tiny_weights) -> None:
    base, controlnet = random_tiny_weights
    refiner = TileRefiner.from_folders(base, controlnet, FAST)
    assert refiner.multiple == 4 and refiner.pipeline.safety_checker is None
    unet_calls, control_calls = [], []
    refiner.pipeline.unet.register_forward_hook(lambda m, i, o: unet_calls.append(i[0].shape))
    refiner.pipeline.controlnet.register_forward_hook(lambda m, i, o: control_calls.append(i[0].shape))
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    out = refiner(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    # img2img at strength 0.5 of 10 steps runs 5; guidance > 1 batches the negative prompt with the prompt.
    assert len(unet_calls) == len(control_calls) == 5 and unet_calls[0][0] == 2
    assert np.array_equal(refiner(image), out)  # one seeded generator per call: reproducible
    assert not np.array_equal(out, image)
    with pytest.raises(ValueError, match="multiple of 4"):
        refiner(image[:30])


def test_missing_folders_and_missing_diffusers_are_clear_errors(random_tiny_weights, tmp_path, monkeypatch) -> None:
    base, controlnet = random_tiny_weights
    with pytest.raises(BackRefinerError, match="missing"):
        TileRefiner.from_folders(tmp_path / "nothing", controlnet)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the `diffusion` extra were not installed
    with pytest.raises(StageUnavailableError, match="diffusers not installed"):
        BackViewStage.from_config(BackViewConfig(sd15_path=str(base), controlnet_path=str(controlnet)))


def test_without_weight_folders_back_view_is_off_and_full_says_why() -> None:
    rec = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 5, "back_view.cnn_path": None,
                                                                    "fuse.checkpoint": None}))
    assert "back_view" not in rec.stages and "full" not in rec.available_stages
    with pytest.raises(StageUnavailableError, match="sd15_path.*cnn_path.*two-view|two-view.*sd15_path.*cnn_path"):
        rec.plan(ReconstructionRequest(np.zeros((64, 64, 3), np.uint8), stages="full"))


def test_back_view_stage_with_random_tiny_weights_renders_and_refines_the_back(random_tiny_weights, anny_body) -> None:  # noqa: F811
    base, controlnet = random_tiny_weights
    config = ReconstructorConfig().override({"body.fit.iterations": 5, "back_view.sd15_path": str(base),
                                             "back_view.controlnet_path": str(controlnet), "back_view.size": 48,
                                             "back_view.diffusion.steps": 4, "back_view.diffusion.strength": 0.5,
                                             "fuse.checkpoint": None})
    rec = Reconstructor.from_config(config)
    stage = rec.stages["back_view"]
    assert isinstance(stage, BackViewStage)
    with pytest.raises(StageUnavailableError, match="fuse"):  # the stage exists; `full` still lacks fuse
        rec.plan(ReconstructionRequest(np.zeros((64, 64, 3), np.uint8), stages="full"))

    K = np.asarray(default_intrinsics(512, 512), np.float64)
    _, gt, perception = synthetic_case(anny_body, 2, torch.zeros(1, anny_body.shape_dim), K)
    fit = fit_body(perception, None, anny_body, config=FitConfig(camera_iterations=10, iterations=10))
    avatar = surface_avatar(gt.vertices[0].numpy())
    avatar.colors[avatar.means[:, 0] > avatar.means[:, 0].median()] = torch.tensor([1.0, 0.0, 0.0])  # red on the image's right
    frame = stage(Frame(request=ReconstructionRequest(np.zeros((512, 512, 3), np.uint8)), perception=perception, body=fit, gaussians=avatar))
    back = frame.back_view
    assert back.rendered.shape == back.image.shape == (48, 48, 3) and back.image.dtype == np.uint8
    person = (back.rendered < 250).any(-1)
    assert 0.1 < person.mean() < 0.7 and person[24, 24]  # the body fills the middle of the view, not all of it
    red = (back.rendered[..., 0] > 150) & (back.rendered[..., 1] < 100)
    cols = np.nonzero(red)[1]
    assert len(cols) and cols.mean() < 24  # seen from behind, the body's right-hand half is on the image's left
    report = frame.reports["back_view"]
    assert report["refined_by"] == "controlnet_tile_sd15_img2img" and report["denoising_steps"] == 2
    assert report["weights"] == {"base": str(base), "controlnet": str(controlnet)} and report["refine_seconds"] > 0
    json.dumps(report)
