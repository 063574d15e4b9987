"""Classifier architectures for primaries and secondaries, kept in a registry by name.

The paper (Widdicombe, Julier & Kim, 2022) names three architectures without giving their exact
layers; the choices below are ours and documented here:

* ``cnn2`` - "a simple 2-layer CNN": two 3x3 conv layers (32, 64 channels), each followed by
  ReLU and 2x2 max-pooling, then one linear classifier.
* ``minicnn`` - "MiniCNN (11 layers)": a 3x3 stem conv, four blocks of two 3x3 convs
  (widths 32, 64, 128, 128; blocks 2-4 halve the resolution while it is at least 4 pixels), global
  average pooling and two linear layers: 1 + 8 + 2 = 11 weight layers.
* ``miniresnet`` - "MiniResNet (11 layers)": ``minicnn`` plus a skip connection around every
  block (a 1x1 conv projection where the shape changes).
* ``minicnn_bn`` - not in the paper: ``minicnn`` with batch normalisation after every conv, an
  option for the *secondary* (a plain 11-layer net can stall at chance on hard inputs such as
  pixel-shuffled maps; see the README).

Every architecture takes ``(in_channels, image_size, num_classes)`` so that grayscale and colour
images of any square size work. Every ReLU is its own non-inplace module (hook-based attribution
methods such as DeepLift or guided backprop need a distinct module per use site). Weights are
Glorot (Xavier) uniform, biases zero, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import ConfigError

ModelBuilder = Callable[[int, int, int], nn.Module]
ARCHITECTURES: dict[str, ModelBuilder] = {}
MIN_IMAGE_SIZE: dict[str, int] = {}


def register(name: str, min_image_size: int) -> Callable[[ModelBuilder], ModelBuilder]:
    """Class decorator adding an architecture to the registry under ``name``."""

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        ARCHITECTURES[name] = builder
        MIN_IMAGE_SIZE[name] = min_image_size
        return builder

    return wrap


def glorot_init_(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every conv and linear layer."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


@register("cnn2", min_image_size=4)
class SimpleCNN(nn.Module):
    """The paper's simple 2-layer CNN."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc = nn.Linear(64 * side * side, num_classes)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def _norm(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class ConvBlock(nn.Module):
    """Two 3x3 convs with ReLUs; optionally a skip connection around them (MiniResNet) and
    batch normalisation after each conv."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, residual: bool, norm: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm1 = _norm(out_channels, norm)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, norm)
        self.relu2 = nn.ReLU()
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or in_channels != out_channels):
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.relu1(self.norm1(self.conv1(x)))))
        if self.residual:
            out = out + self.shortcut(x)
        return self.relu2(out)


class MiniNet(nn.Module):
    """Shared body of MiniCNN and MiniResNet (they differ only in the skip connections)."""

    widths = (32, 64, 128, 128)

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        residual: bool,
        norm: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, self.widths[0], 3, padding=1)
        self.stem_norm = _norm(self.widths[0], norm)
        self.stem_relu = nn.ReLU()
        blocks = []
        channels, size = self.widths[0], image_size
        for index, width in enumerate(self.widths):
            stride = 2 if index > 0 and size >= 4 else 1
            size = (size + stride - 1) // stride
            blocks.append(ConvBlock(channels, width, stride, residual, norm))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, 128)
        self.fc_relu = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_relu(self.stem_norm(self.stem(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(self.fc_relu(self.fc1(x)))


@register("minicnn", min_image_size=4)
def minicnn(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The paper's MiniCNN: MiniResNet without skip connections (also the secondary)."""
    return MiniNet(in_channels, image_size, num_classes, residual=False)


@register("miniresnet", min_image_size=4)
def miniresnet(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The paper's MiniResNet: MiniCNN plus a skip connection around every block."""
    return MiniNet(in_channels, image_size, num_classes, residual=True)


@register("minicnn_bn", min_image_size=4)
def minicnn_bn(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """MiniCNN with batch normalisation after every conv (a secondary option, not the paper's)."""
    return MiniNet(in_channels, image_size, num_classes, residual=False, norm=True)


def last_feature_layer(model: nn.Module, image: torch.Tensor) -> nn.Module | None:
    """The module whose output is the model's last convolutional feature map: the last
    ``nn.ReLU`` executed in a forward pass of ``image`` (one ``(1, C, H, W)`` image) whose output
    is 4-D, else the last ``nn.Conv2d`` executed; None if there is neither. ``cnn2``: ``relu2``;
    ``minicnn``, ``minicnn_bn``, ``miniresnet``: ``blocks[3].relu2`` (before global average
    pooling). Found with forward hooks, so the order is that of execution, not registration, and
    wrapped models work too. Grad-CAM explains this layer; input-agnostic maps weight by it."""
    seen: list[tuple[nn.Module, int]] = []

    def record(module: nn.Module, args, out) -> None:
        if isinstance(out, torch.Tensor):
            seen.append((module, out.dim()))

    hooks = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, (nn.ReLU, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    for kind in (nn.ReLU, nn.Conv2d):
        found = [module for module, dims in seen if isinstance(module, kind) and dims == 4]
        if found:
            return found[-1]
    return None


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build a registered architecture, with a clear error for unknown names and bad sizes."""
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"architecture {name!r} is unknown; expected one of: {known}")
    if image_size < MIN_IMAGE_SIZE[name]:
        raise ConfigError(
            f"architecture {name!r} needs images of at least {MIN_IMAGE_SIZE[name]}x"
            f"{MIN_IMAGE_SIZE[name]} pixels, got {image_size}x{image_size}"
        )
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    return ARCHITECTURES[name](in_channels, image_size, num_classes)
