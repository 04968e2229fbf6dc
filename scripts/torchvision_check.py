#!/usr/bin/env python3
"""Load a byol-rs encoder export (`cargo xtask export`) in PyTorch.

Builds the network the file's metadata describes -- torchvision's
`resnet18`/`resnet34`/`resnet50` when the blocks are theirs (with the CIFAR
or small stem swapped in), else a torchvision-style ResNet from
torchvision's own `BasicBlock`/`Bottleneck` (the `small` encoder) -- loads
the weights with `load_state_dict(strict=False)` and checks that only
`fc.*` is missing.

With `--input X --features F` it also runs the encoder in evaluation mode
on X (`[n, c, h, w]`, already normalised as byol-rs's evaluation transform
does) and compares with F, the features byol-rs computed on the same input
(`cargo xtask embed`, or the crate tests): the largest absolute difference
divided by the largest absolute feature must be below `--tolerance`. X and
F are `.npy` files or `.safetensors` files (the first tensor is used).

Exit status 0 when everything matches, 1 otherwise; one JSON line on
stdout with the figures.

    python scripts/torchvision_check.py --weights encoder.safetensors
    python scripts/torchvision_check.py --weights encoder.safetensors \\
        --input input.npy --features features.npy
"""

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from torchvision.models.resnet import BasicBlock, Bottleneck

TORCHVISION = {
    ("basic", (2, 2, 2, 2)): torchvision.models.resnet18,
    ("basic", (3, 4, 6, 3)): torchvision.models.resnet34,
    ("bottleneck", (3, 4, 6, 3)): torchvision.models.resnet50,
}


def stem_conv(stem, in_channels, width):
    """conv1 of byol-rs's stems (torchvision's own is the imagenet one)."""
    if stem == "imagenet":
        return nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    if stem == "cifar":
        return nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    if stem == "small":
        return nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
    raise SystemExit(f"unknown stem {stem!r}")


class SmallResNet(nn.Module):
    """A torchvision-style ResNet of any widths and depths, keys as
    torchvision's (conv1, bn1, layer1..layerN, no fc): byol-rs's `small`
    encoder is SmallResNet("small", 1, "basic", [1, 1, 1], [32, 64, 128])."""

    def __init__(self, stem, in_channels, block, blocks, widths):
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = stem_conv(stem, in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        channels = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                out = planes * block.expansion
                down = None
                if stride != 1 or channels != out:
                    down = nn.Sequential(
                        nn.Conv2d(channels, out, 1, stride, bias=False),
                        nn.BatchNorm2d(out),
                    )
                layers.append(block(channels, planes, stride, down))
                channels = out
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.depth = len(blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def build(meta):
    """The network of the export's metadata; `True` when it is torchvision's
    own ResNet class (which has an `fc` the export lacks)."""
    stem = meta["stem"]
    in_channels = int(meta["in_channels"])
    blocks = tuple(int(b) for b in meta["blocks"].split(","))
    widths = [int(w) for w in meta["widths"].split(",")]
    ctor = TORCHVISION.get((meta["block"], blocks))
    if ctor is not None and widths == [64, 128, 256, 512]:
        model = ctor()
        if stem != "imagenet" or in_channels != 3:
            # the CIFAR / small stems: another conv1 and no max-pool
            model.conv1 = stem_conv(stem, in_channels, 64)
        if stem != "imagenet":
            model.maxpool = nn.Identity()
        return model, True
    return SmallResNet(stem, in_channels, meta["block"], blocks, widths), False


def load_array(path):
    if path.endswith(".npy"):
        return np.load(path)
    with safe_open(path, "np") as f:
        return f.get_tensor(next(iter(f.keys())))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--input")
    p.add_argument("--features")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()

    with safe_open(args.weights, "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    model, is_torchvision = build(meta)
    result = model.load_state_dict(state, strict=False)
    expected_missing = ["fc.weight", "fc.bias"] if is_torchvision else []
    report = {
        "model": type(model).__name__,
        "torchvision": is_torchvision,
        "missing": result.missing_keys,
        "unexpected": result.unexpected_keys,
    }
    ok = sorted(result.missing_keys) == sorted(expected_missing) and not result.unexpected_keys
    if is_torchvision:
        model.fc = nn.Identity()
    if args.input:
        model.eval()
        x = torch.from_numpy(np.ascontiguousarray(load_array(args.input), dtype=np.float32))
        theirs = load_array(args.features).astype(np.float64)
        with torch.no_grad():
            ours = model(x).double().numpy()
        if ours.shape != theirs.shape:
            report["shape"] = [list(ours.shape), list(theirs.shape)]
            ok = False
        else:
            rel = float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-12))
            report["relative_error"] = rel
            report["rows"] = int(ours.shape[0])
            ok = ok and rel < args.tolerance
    report["ok"] = ok
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
