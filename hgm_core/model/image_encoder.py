"""Light image encoder of the body branch: IBRNet / GP-NeRF ResUNet (docs/reference/hgm_official_code.md §3.2), same names.

Input is the UNet's 9-channel tensor; output a feature map at 1/4 resolution that the body
branch samples at the projected vertices. Every `bn*` is an affine InstanceNorm (as in the
official code, despite the name); convolutions pad by reflection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=False)


class BasicBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN + identity (1x1 conv + IN when stride or width change), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, padding_mode="reflect")
        self.bn1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, padding_mode="reflect")
        self.bn2 = _norm(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout)) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ConvNormELU(nn.Module):
    """conv (bias, reflect) -> IN -> ELU (GP-NeRF `conv`)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, padding_mode="reflect")
        self.bn = _norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.bn(self.conv(x)))


class UpConv(nn.Module):
    """Bilinear x2 (align_corners=True) -> `ConvNormELU` 3x3 (GP-NeRF `upconv`)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvNormELU(cin, cout, 3)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class ImageEncoder(nn.Module):
    """`[B*V, in_channels, H, W]` -> `[B*V, out_channels, H/4, W/4]` (official `unet2`)."""

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, int, int], blocks: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 7, 2, 3, bias=False, padding_mode="reflect")
        self.bn1 = _norm(c1)
        self.layer1 = self._stage(c1, c1, blocks[0])
        self.layer2 = self._stage(c1, c2, blocks[1])
        self.layer3 = self._stage(c2, c3, blocks[2])
        self.upconv3 = UpConv(c3, c2)
        self.iconv3 = ConvNormELU(2 * c2, c2, 3)
        self.upconv2 = UpConv(c2, c1)
        self.iconv2 = ConvNormELU(2 * c1, out_channels, 3)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 1)

    @staticmethod
    def _stage(cin: int, cout: int, n: int) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x = self.iconv3(torch.cat((x2, self.upconv3(x3, x2.shape[-2:])), 1))
        x = self.iconv2(torch.cat((x1, self.upconv2(x, x1.shape[-2:])), 1))
        return self.out_conv(x)
