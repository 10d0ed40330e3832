"""The network checkpoints shipped in the package: small fp16 files that load as the stages expect,
and that make `coarse` and `full` available from a fresh clone."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from hgm_core.model import HGM
from hgm_core.model.checkpoint import WEIGHTS_NAME
from hgm_core.model.predict import default_checkpoint_dir
from hgm_core.train.export import MAX_BYTES


@pytest.mark.parametrize("views", [1, 2])
def test_embedded_network_is_a_small_fp16_anny_checkpoint_of_its_view_count(views):
    folder = default_checkpoint_dir(views)
    assert (folder / WEIGHTS_NAME).stat().st_size <= MAX_BYTES
    model = HGM.from_pretrained(folder)
    assert model.config.num_views == views and model.config.body_model == "anny"
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F16", "I64"}  # I64: batch norms' num_batches_tracked
    assert "README.md" in {p.name for p in folder.iterdir()}


def test_the_two_view_network_is_the_one_view_architecture():
    one, two = (HGM.from_pretrained(default_checkpoint_dir(v)).config for v in (1, 2))
    assert one.shares_weights(two) and one.input_fill == two.input_fill  # fuse frames its views as coarse does


def test_a_fresh_reconstructor_offers_coarse_and_full():
    pytest.importorskip("mediapipe")
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig

    rec = Reconstructor.from_config(ReconstructorConfig())
    assert rec.available_stages == ("prior", "coarse", "full")  # refine_body is off: `full` skips it, `refined` is refused
    assert rec.describe()["fuse_checkpoint"] == str(default_checkpoint_dir(2))
    with pytest.raises(ValueError, match="1 or 2 views"):
        default_checkpoint_dir(3)
