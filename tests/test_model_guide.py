"""The body-guided priors (`hgm_core.model.guide`): which pixel-aligned Gaussians start visible, and where."""

import torch

from hgm_core.model.guide import PERSON_OPACITY_LOGIT, PIXEL_OPACITY_LOGIT, cover_person


def grids():
    """One 1 x 1 x 4 x 10 view: body (region 0) in columns 0-1 at depth 2, band (1) in column 2 at 2.5,
    beyond (2) at the median 3; the person also covers columns 3-5 (an arm the fit missed) and, past
    a background gap at column 6, columns 7-8 (another person's or a detached blob)."""
    region = torch.full((1, 1, 4, 10), 2)
    region[..., :2] = 0
    region[..., 2] = 1
    depth = torch.full((1, 1, 4, 10), 3.0)
    depth[..., :2] = 2.0
    depth[..., 2] = 2.5
    person = torch.zeros(1, 1, 4, 10, dtype=torch.bool)
    person[..., :6] = True
    person[..., 7:9] = True
    return depth, region, person


def test_person_pixels_take_the_depth_of_the_nearest_body_pixel():
    depth, region, person = grids()
    d, r = cover_person(depth, region, person)
    assert torch.equal(r[..., :3], region[..., :3])  # body and band keep their region and depth
    assert torch.equal(d[..., :3], depth[..., :3])
    assert (r[..., 3:6] == 3).all() and torch.allclose(d[..., 3:6], torch.tensor(2.5))  # carried from the band
    assert (r[..., 6] == 2).all() and (d[..., 6] == 3.0).all()  # background stays off, at its depth
    # A person blob beyond a background gap is covered (it is person) but depth never jumps the gap.
    assert (r[..., 7:9] == 3).all() and (d[..., 7:9] == 3.0).all()


def test_person_cover_reaches_only_as_far_as_its_rings():
    depth, region, person = grids()
    d, r = cover_person(depth, region, person, rings=1)
    assert torch.allclose(d[..., 3], torch.tensor(2.5)) and (d[..., 4:6] == 3.0).all()
    assert (r[..., 3:6] == 3).all()


def test_pixel_prior_starts_person_pixels_visible_only_with_person_cover():
    from hgm_core.model import config_for, default_views
    from hgm_core.model.guide import pixel_prior

    cfg = config_for("tiny")
    K, c2w = default_views(cfg)
    n, S = cfg.input_size, cfg.splat_size
    images = torch.ones(1, 1, 3, n, n)
    images[..., n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 0.3  # a grey person block
    # a tiny body far off the block's centre: most of the block is beyond the band
    vertices = torch.tensor([[[-0.02, 0.0, 0.0], [0.0, 0.02, 0.0], [0.02, -0.02, 0.0]]]) + torch.tensor([0.15, 0.15, 0.0])
    _, body = pixel_prior(images, vertices, K[None], c2w[None], S, "body")
    _, person = pixel_prior(images, vertices, K[None], c2w[None], S, "person")
    grey = (torch.nn.functional.adaptive_avg_pool2d(images[0], S)[0, 0] < 0.9).flatten()
    off, on = PIXEL_OPACITY_LOGIT[2], PERSON_OPACITY_LOGIT
    assert (body[0, grey, 3] == off).float().mean() > 0.5
    assert (person[0, grey, 3] == off).sum() == 0 and (person[0, grey, 3] == on).float().mean() > 0.5
    assert (person[0, ~grey, 3] == off).all()  # background stays off either way
