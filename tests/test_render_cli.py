"""`hgm scene`: writes a PLY another reader accepts and a white-background turntable grid."""

from __future__ import annotations

import numpy as np
from PIL import Image
from plyfile import PlyData

from hgm_core.cli import main


def test_scene_command_writes_ply_and_turntable(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["scene", "-o", str(out), "-n", "3000", "--size", "48", "--views", "6"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "scene.ply") in printed and str(out / "turntable.png") in printed

    ply = PlyData.read(str(out / "scene.ply"))
    vertex = ply["vertex"]
    assert vertex.count == 3000
    heights = np.asarray(vertex["y"])
    assert 1.6 < heights.max() - heights.min() < 1.8

    image = np.asarray(Image.open(out / "turntable.png"))
    assert image.shape == (2 * 48, 4 * 48, 3)  # 6 views in rows of 4, the empty cells stay white
    assert (image[0, 0] == 255).all() and (image[48:, 2 * 48:] == 255).all()
    person = (image < 200).any(-1)
    for view in range(6):
        r, c = divmod(view, 4)
        assert person[r * 48:(r + 1) * 48, c * 48:(c + 1) * 48].mean() > 0.03, view


def test_scene_command_rejects_bad_sizes(tmp_path, capsys):
    assert main(["scene", "-o", str(tmp_path), "--size", "4"]) == 1
    assert "error" in capsys.readouterr().err
