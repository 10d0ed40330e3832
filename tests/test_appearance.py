"""Live mode's appearance error (hgm_node.appearance): the posed avatar's colours against the frame's."""

from __future__ import annotations

import numpy as np
import pytest

from hgm_core.layout import SH_C0
from hgm_node.appearance import appearance_error

K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
GREY, RED, BLUE = (120, 120, 120), (220, 40, 30), (30, 60, 220)


def plane(x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int], z: float = 2.0, opacity: float = 0.9) -> np.ndarray:
    """`[N, 14]` raw rows: one Gaussian per pixel of the box at depth `z`, coloured `rgb`."""
    v, u = np.mgrid[y0:y1, x0:x1].reshape(2, -1)
    raw = np.zeros((len(u), 14), np.float32)
    raw[:, 0], raw[:, 1], raw[:, 2] = (u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z
    raw[:, 3:6] = (np.array(rgb) / 255.0 - 0.5) / SH_C0
    raw[:, 6] = np.log(opacity / (1 - opacity))
    raw[:, 10] = 1.0
    return raw


def frame(box: tuple[int, int, int, int], rgb: tuple[int, int, int], background=GREY) -> np.ndarray:
    image = np.empty((240, 320, 3), np.uint8)
    image[:] = background
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = rgb
    return image


BOX = (100, 40, 200, 200)


def test_matching_colours_give_no_error_and_other_colours_their_difference() -> None:
    avatar = plane(*BOX, RED)
    assert appearance_error(avatar, frame(BOX, RED), K) == pytest.approx(0.0, abs=1e-3)
    expected = np.abs(np.subtract(RED, BLUE)).mean() / 255.0
    assert appearance_error(avatar, frame(BOX, BLUE), K) == pytest.approx(expected, abs=1e-3)


def test_the_silhouette_edge_and_the_background_do_not_count() -> None:
    """The avatar a few pixels off the person: only the footprint's inner cells are compared."""
    avatar = plane(*BOX, RED)
    shifted = (BOX[0] + 5, BOX[1] + 3, BOX[2] + 5, BOX[3] + 3)
    assert appearance_error(avatar, frame(shifted, RED, background=(0, 255, 0)), K) == pytest.approx(0.0, abs=1e-3)
    # Half the person in another colour: the median follows whichever covers most of the footprint.
    image = frame(BOX, RED)
    image[BOX[1] : BOX[1] + 100, BOX[0] : BOX[2]] = BLUE  # 100 of 160 rows
    assert appearance_error(avatar, image, K) > 0.3


def test_only_the_front_surface_and_opaque_gaussians_count() -> None:
    front, back = plane(*BOX, RED, z=2.0), plane(*BOX, BLUE, z=2.5)
    faint = plane(*BOX, BLUE, z=1.5, opacity=0.1)
    image = frame(BOX, RED)
    assert appearance_error(np.concatenate([back, front, faint]), image, K) == pytest.approx(0.0, abs=1e-3)
    assert appearance_error(np.concatenate([back, faint]), image, K) > 0.3


def test_no_error_without_enough_of_the_avatar_in_view() -> None:
    assert appearance_error(plane(*BOX, RED, z=-2.0), frame(BOX, RED), K) is None  # behind the camera
    assert appearance_error(plane(150, 100, 166, 116, RED), frame(BOX, RED), K) is None  # 2 x 2 cells
    off = plane(*BOX, RED)
    off[:, 0] += 10.0  # far to the right of the image
    assert appearance_error(off, frame(BOX, RED), K) is None
