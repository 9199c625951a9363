"""Real-sized models for the empirical NTK benchmarks, in plain torch (no torchvision).

* :func:`resnet18`: torchvision's ResNet-18 layout (He et al. 2016: a 7×7/2 convolution,
  BatchNorm, ReLU and a 3×3/2 max-pool, four stages of two basic blocks with 64, 128, 256 and
  512 channels, global average pooling, a linear head), 11.2 M parameters with 10 outputs.
  On 3×32×32 images the stages see 8×8, 4×4, 2×2 and 1×1 pixels. ``stem="cifar"`` gives the
  CIFAR variant instead (a 3×3/1 first convolution and no max-pool: stages at 32×32 … 4×4,
  about 15× the FLOPs).
* :func:`transformer`: ``depth`` ``nn.TransformerEncoderLayer``s (``d_model``, ``nhead``
  heads, feed-forward ``4 d_model``, pre-norm off, GELU), on ``(N, seq, d_model)`` inputs,
  mean-pooled over the sequence and a linear head: 3.2 M parameters for ``d_model=256``,
  ``depth=4``, 10 outputs.

Both are returned in eval mode (BatchNorm with its running statistics, no dropout). The ResNet
is initialised as torchvision does and its running statistics are those of 64 Gaussian images
(as after training, every BatchNorm normalises: activations stay O(1) through the network). The small versions
used by the tests are the same code with fewer channels (``width``) and layers.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18", "transformer"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, torchvision's basic block."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages; ``(N, 3, H, W)`` → ``(N, num_classes)``."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 stem: str = "imagenet") -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        else:
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}.")
        layers, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(h.mean((2, 3)))


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's initialisation: He-normal convolutions (fan-out), BatchNorm ``γ = 1, β = 0``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of ``x`` (a cumulative average over one pass in training mode), as
    a trained network has: in eval mode every BatchNorm then normalises (outputs O(1))."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1


def resnet18(num_classes: int = 10, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), stem: str = "imagenet",
             seed: int = 0, dtype: torch.dtype = torch.float32) -> ResNet:
    """ResNet-18 (torchvision's layout, see the module docstring) in eval mode, seeded."""
    torch.manual_seed(seed)
    model = ResNet(blocks, num_classes, width, stem)
    _init_like_torchvision(model)
    _calibrate_batchnorm(model, torch.randn(64, 3, 32, 32))
    return model.to(dtype).eval()


class _Transformer(nn.Module):
    def __init__(self, d_model: int, nhead: int, depth: int, num_classes: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def transformer(d_model: int = 256, nhead: int = 4, depth: int = 4, num_classes: int = 10, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformer encoder classifier on ``(N, seq, d_model)`` inputs (see the module docstring)."""
    torch.manual_seed(seed)
    return _Transformer(d_model, nhead, depth, num_classes).to(dtype).eval()
