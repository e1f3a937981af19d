"""Fixture CNNs written for the tests (no torchvision), their ONNX exports, and the torch autograd
reference for SISE's block gradients.

Each fixture returns the model and its ``taps``: the module paths whose forward outputs are the
blocks the export step must discover, shallow to deep.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn


def conv_bn(cin, cout, k, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride=1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, width, 3, stride), conv_bn(width, width, 3, act=None))
        self.short = None if stride == 1 and cin == width else conv_bn(cin, width, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.short is None else self.short(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, out, 1, act=None))
        self.short = None if stride == 1 and cin == out else conv_bn(cin, out, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """torchvision-style ResNet: stem conv7x7/2-BN-ReLU, max-pool, four stages, GAP, FC."""

    def __init__(self, block, layers, width=64, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = width, []
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


RESNET_TAPS = ["relu", "layer1", "layer2", "layer3", "layer4"]


class VGG(nn.Module):
    """VGG-style: conv3x3-ReLU stacks separated by max-pools; flatten; two FC layers."""

    def __init__(self, cfg, num_classes=10, spatial_out=2):
        super().__init__()
        layers, cin = [], 3
        self.taps = []
        for v in cfg:
            if v == "M":
                self.taps.append(f"features.{len(layers) - 1}")
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * spatial_out ** 2, 32), nn.ReLU(),
                                        nn.Dropout(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (stride) (ReLU6) -> 1x1 project."""

    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.expand = conv_bn(cin, hidden, 1, act=nn.ReLU6)
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2Style(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.ReLU6)
        spec = [(16, 1, 6), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (48, 2, 6), (64, 2, 6),
                (64, 1, 6)]
        blocks, cin, self.taps = [], 16, []
        for i, (c, s, t) in enumerate(spec):
            if s == 2:
                self.taps.append(f"blocks.{i}.expand")  # the tensor that feeds the stride-2 depthwise conv
            blocks.append(InvertedResidual(cin, c, s, t))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, 96, 1, act=nn.ReLU6)
        self.taps.append("head")
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(96, num_classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                               nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class DenseNetStyle(nn.Module):
    """Dense blocks (Concat) joined by transitions (BN-ReLU-1x1 conv-AvgPool)."""

    def __init__(self, num_classes=10, growth=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        c = 16
        self.block1 = nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(3)])
        c += 3 * growth
        self.trans1 = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
        self.pool1 = nn.AvgPool2d(2)
        c //= 2
        self.block2 = nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(3)])
        c += 3 * growth
        self.trans2 = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
        self.pool2 = nn.AvgPool2d(2)
        c //= 2
        self.block3 = nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(3)])
        c += 3 * growth
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.fc = nn.Linear(c, num_classes)
        self.taps = ["stem", "trans1", "trans2", "final"]

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.pool1(self.trans1(self.block1(x)))
        x = self.pool2(self.trans2(self.block2(x)))
        x = self.final(self.block3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class NHWCWrapper(nn.Module):
    """Keras-like interface: NHWC input, transpose in; NHWC head (transpose back, mean over H, W)."""

    def __init__(self, body: ResNet):
        super().__init__()
        self.body = body

    def forward(self, x):
        b = self.body
        x = x.permute(0, 3, 1, 2)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return b.fc(x.permute(0, 2, 3, 1).mean((1, 2)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def fixture(name: str) -> tuple[nn.Module, list[str], tuple[int, ...]]:
    """(model in eval mode, block taps, input shape) for a named fixture; deterministic weights."""
    torch.manual_seed(0)
    if name == "resnet18":
        m = ResNet(BasicBlock, [2, 2, 2, 2], width=16)
        return randomize_bn(m), RESNET_TAPS, (1, 3, 64, 64)
    if name == "resnet50":
        m = ResNet(Bottleneck, [3, 4, 6, 3], width=16)
        return randomize_bn(m), RESNET_TAPS, (1, 3, 64, 64)
    if name == "resnet50-full":
        m = ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000)
        return randomize_bn(m), RESNET_TAPS, (1, 3, 224, 224)
    if name == "vgg16":
        m = VGG([c // 8 if c != "M" else c for c in VGG16_CFG])
        return randomize_bn(m), m.taps, (1, 3, 64, 64)
    if name == "vgg16-full":
        m = VGG(VGG16_CFG, num_classes=1000, spatial_out=7)
        return randomize_bn(m), m.taps, (1, 3, 224, 224)
    if name == "mobilenetv2":
        m = MobileNetV2Style()
        return randomize_bn(m), m.taps, (1, 3, 64, 64)
    if name == "densenet":
        m = DenseNetStyle()
        return randomize_bn(m), m.taps, (1, 3, 64, 64)
    if name == "resnet18-nhwc":
        m = NHWCWrapper(ResNet(BasicBlock, [2, 2, 2, 2], width=16))
        return randomize_bn(m), [f"body.{t}" for t in RESNET_TAPS], (1, 64, 64, 3)
    raise KeyError(name)


def export_onnx(model: nn.Module, input_shape, *, dynamo: bool = False, opset: int | None = None,
                dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export with torch's legacy (TorchScript) or dynamo exporter; returns an in-memory model."""
    x = torch.randn(*input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False, opset_version=opset or 18)
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=opset or 17, input_names=["image"],
                          output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None)
        return onnx.load_from_string(f.getvalue())


def torch_block_gradients(model: nn.Module, taps: list[str], x: np.ndarray, target: np.ndarray,
                          score: str = "softmax") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Reference: activations at ``taps`` and spatial means of d(sum target * psi)/d(activation)."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hooks = [modules[t].register_forward_hook(lambda m, i, o, t=t: acts.__setitem__(t, o)) for t in taps]
    try:
        logits = model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    psi = {"softmax": lambda z: torch.softmax(z, 1), "sigmoid": torch.sigmoid,
           "logit": lambda z: z, "identity": lambda z: z}[score](logits)
    loss = (torch.from_numpy(target) * psi).sum()
    grads = torch.autograd.grad(loss, [acts[t] for t in taps])
    return ([acts[t].detach().numpy() for t in taps], [g.mean((2, 3)).detach().numpy() for g in grads])
