"""The HGM network (paper §3.3.1; official code: docs/reference/hgm_official_code.md §3).

Public API::

    from hgm_core.model import HGM, config_for, default_views, CanonicalFrame, canonical_to_optical

    model = HGM(config_for("tiny", num_views=1, body_model="anny")).eval()
    K, c2w = default_views(model.config)                       # [V, 3, 3], [V, 4, 4] (OpenGL, canonical)
    out = model(images, vertices, K[None], c2w[None])          # images [1, V, 3, H, W] in [0, 1]
    avatar = canonical_to_optical(out.gaussians("merged"), CanonicalFrame.at_distance(2.0))
    model.save_pretrained("ckpt/"); HGM.from_pretrained("ckpt/", config=model.config)

One module per part: `unet` (LGM UNet branch), `image_encoder` (ResUNet of the body branch),
`body_branch` (projection, token cross-attention, body Gaussian head), `sparse` (voxelisation,
sparse 3D convolution, volume sampling), `fusion` (windowed transformer), `hgm` (the network),
`config` (presets), `checkpoint` (files, model card, official key map), `frames` (canonical <->
optical frame), `guide` (body-guided priors), `predict` (`predict_avatar`: one camera image + fitted
body in the optical frame -> Gaussians in the optical frame, cropped/normalised exactly as trained;
`check_avatar`; the embedded checkpoint `load_default_model`).

Deviations from the paper / official code, and why
--------------------------------------------------

=========================================  ===================================================  ==============================================
Official (hgm_official_code.md section)    Here                                                 Why
=========================================  ===================================================  ==============================================
Body tokens for SMPL(-X) only (§3.3)       Tokens for any body model; `config.body_model`       Anny (13,718 vertices) is the licence-free
                                           ("anny" default, "smplx", "smpl") fixes Nv           default (docs/architecture.md §6)
Cross-attention keys are the V views       `token_key=True`: the token is one more key/value    Tokens, w_qs and w_ks must learn in the
only: with V = 1 the softmax is 1, so      beside the views (same parameters); `False`          one-view network too; a vertex can weigh its
tokens, w_qs, w_ks get zero gradient       reproduces the official function (tested both ways)  prior against the images (occlusion)
(§3.3)
SMPL head `net` missing; likely a 1-D      Point-wise MLP `body_head` on [xyz, feature]         A conv over the vertex index depends on one
MixNet over vertex order (§3.3)                                                                 model's vertex ordering; the released code has
                                                                                                no weights to match anyway
spconv 2.x SparseConvNet (§3.4)            Same layers in torch (gather 27 neighbours + one     spconv 2.3.8 on CPU is wrong with > 1 thread,
                                           matmul), spconv weight layout [out, k, k, k, in]     needs patches for backward, and here disagrees
                                                                                                with dense conv3d even on 1 thread; ours is
                                                                                                tested equal to masked dense conv3d (fwd+bwd)
Voxel 0.005 for every config (§3.4)        `voxel_size`: big 0.005, small 0.01, tiny 0.02       CPU time and memory; the tiny/small volumes
                                                                                                stay a few thousand voxels
Duplicate voxel indices passed to spconv   Points in one voxel are averaged                     spconv requires unique sites
as-is (§3.4)
One grid shape from sample 0, B = 1 only   Per-sample origin, shared max shape, any batch       Batched training
(§3.4, §8)
Volume sampled with normaliser             Normaliser `size - 1` per level (align_corners)      Exact voxel-centre alignment at every level;
`grid_shape` for all levels (§3.4)                                                              no official sparse weights to stay bit-equal to
Vertex projection normalised              `2 u / W - 1` with align_corners=False (pixel         Our K uses pixel centres at +0.5; the official
`2 p / (size - 1) - 1` (§1.3)              centres at +0.5)                                     form is half a pixel off for that K
Fusion `res` = MixNet 1-D conv UNet,       `fusion`: pre-norm transformer over the Gaussians,   The raw-reshape tokenisation is a bug; windowed
108 M params, raw-reshape attention and    windowed (shifted every other block) SDPA in         SDPA keeps 65,536 tokens per view in memory
V = 2 feature reshape quirk (§3.5)         chunks; features flattened with a real transpose     on a CPU
259-channel fusion input hard-coded,       Input width 3 + up_channels[-1] + 4 * token_dim      Every config works (official `small` cannot)
only `big` consistent (§3.5)
Unused `unet.norm_out_2`, `conv_out_2`,    Not created; skipped by the converter                Dead parameters
`xyzc_attn.layer_norm` (§7)
Plücker rays ignore the principal point    Kept exactly (`hgm_core.camera.plucker_rays`, fovy   Weight compatibility; projection of vertices
(§1.2)                                     from fy); vertex projection uses the full K          uses the full K as in the official code
Merged xyz un-clamped, range [-2, 2]       Kept                                                 Same function as the official network
(§3.5)
UNet / fusion xyz head initialised         Fusion and body heads start with ~0 xyz offsets      Trains from scratch on CPU: merged starts equal
randomly                                                                                        to the UNet set, body set on the body
Heads predict absolute Gaussians           `body_guided` (tiny, small): residuals on priors     A CPU probe: from scratch, colours stay grey and
                                           (`guide`): body set coloured from the input; pixel   a pixel set started near zero opacity gets no
                                           set on the input rays at the body's depth, opacity   gradient; residuals on the body-colour avatar
                                           0.5 on the body, 0.12 in a band, off beyond          learn fast. `big` keeps the official function
=========================================  ===================================================  ==============================================

Configs (`config_for`): `big` = the paper (512 in, 256^2 Gaussians per view, UNet 64..1024 with
attention in the deep blocks, ResUNet-34 encoder, voxel 0.005); `small` (256 in, 128^2 per view);
`tiny` (128 in, 64^2 per view; the CPU-live path). Each for 1 view (front) or 2 views (front + back).
Trained weights: `hgm train` (hgm_core.train) on `hgm datagen` subjects; the best `tiny` one-view
network ships in `hgm_core/assets/checkpoints/tiny_1view` (fp16, model card with data and metrics).
"""

from hgm_core.model.checkpoint import CheckpointError, ModelCard, read_checkpoint_config
from hgm_core.model.config import BODY_MODEL_VERTICES, PRESETS, ConfigError, HGMConfig, config_for
from hgm_core.model.frames import (
    CanonicalFrame,
    FrameError,
    canonical_to_optical,
    canonical_to_optical_points,
    optical_to_canonical_points,
)
from hgm_core.model.hgm import GAUSSIAN_CHANNELS, HGM, HGMOutput, InputError, default_views, to_gaussians
from hgm_core.model.official import OFFICIAL_IGNORED, OFFICIAL_KEY_MAP, Conversion, convert_official_state_dict

__all__ = [
    "BODY_MODEL_VERTICES", "GAUSSIAN_CHANNELS", "HGM", "OFFICIAL_IGNORED", "OFFICIAL_KEY_MAP", "PRESETS",
    "CanonicalFrame", "CheckpointError", "ConfigError", "Conversion", "FrameError", "HGMConfig", "HGMOutput",
    "InputError", "ModelCard", "canonical_to_optical", "canonical_to_optical_points", "config_for",
    "convert_official_state_dict", "default_views", "optical_to_canonical_points", "read_checkpoint_config",
    "to_gaussians",
]
