#!/usr/bin/env python3
"""The BYOL training step of byol-rs, in plain PyTorch + torchvision, for
`cargo xtask bench step --peer`.

Same models, same step, same batch and thread count as
`crates/byol-train/src/bench.rs`:

- both views through the online network (encoder -> projector -> predictor)
  with backward, both views through the target network (encoder ->
  projector) under no_grad in train mode (batch statistics), the symmetric
  loss (2 - 2 cos, the paper's sum over both directions), one Adam step (eps 1e-8, weight decay 1e-6) and the EMA
  update of the target over parameters and buffers;
- random N(0, 1) inputs made before the clock starts, reused in turn.

Prints one JSON line per model: {"name", "batch", "steps", "images_per_sec",
"ms_per_step", "peak_rss_mib", "peak_gpu_mib", "amp", "channels_last",
"threads", "device", "torch"}. `--amp bf16 --channels-last` is how a user
runs it fast on a GPU (autocast to bfloat16, NHWC memory format).
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def mlp(d_in, hidden, d_out, batch_norm=True):
    layers = [nn.Linear(d_in, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, d_out)]
    return nn.Sequential(*layers)


def small_encoder(in_channels=1):
    """byol-rs `ResNetConfig::small()`: 3x3/2 stem, one BasicBlock per stage,
    32/64/128 planes, global average pooling -> 128 features."""
    block = torchvision.models.resnet.BasicBlock

    def downsample(cin, cout, stride):
        if stride == 1 and cin == cout:
            return None
        return nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        block(32, 32, 1, downsample(32, 32, 1)),
        block(32, 64, 2, downsample(32, 64, 2)),
        block(64, 128, 2, downsample(64, 128, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ), 128


def resnet18_cifar(in_channels=3):
    """torchvision resnet18 with the CIFAR stem (3x3/1 conv, no max-pool)."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


def resnet50(in_channels=3):
    """torchvision resnet50 (ImageNet stem), 2048 features."""
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    return net, 2048


SETTINGS = {
    "small": dict(name="small 28x28x1", make=small_encoder, channels=1, size=28,
                  hidden=512, dim=128),
    "resnet18-cifar": dict(name="resnet18-cifar 32x32x3", make=resnet18_cifar,
                           channels=3, size=32, hidden=4096, dim=256),
    "resnet50-224": dict(name="resnet50 224x224x3", make=resnet50, channels=3,
                         size=224, hidden=4096, dim=256),
}
# names of "all": ResNet-50 only when asked for
DEFAULT_SET = ["small", "resnet18-cifar"]


class Byol(nn.Module):
    def __init__(self, make, channels, hidden, dim):
        super().__init__()
        self.encoder, features = make(channels)
        self.projector = mlp(features, hidden, dim)
        self.predictor = mlp(dim, hidden, dim)
        # the target is built on its own and loaded with the online weights
        self.target_encoder, _ = make(channels)
        self.target_projector = mlp(features, hidden, dim)
        self.target_encoder.load_state_dict(self.encoder.state_dict())
        self.target_projector.load_state_dict(self.projector.state_dict())
        for p in list(self.target_encoder.parameters()) + list(
            self.target_projector.parameters()
        ):
            p.requires_grad_(False)

    def online_parameters(self):
        return (
            list(self.encoder.parameters())
            + list(self.projector.parameters())
            + list(self.predictor.parameters())
        )

    @torch.no_grad()
    def update_target(self, tau):
        for online, target in (
            (self.encoder, self.target_encoder),
            (self.projector, self.target_projector),
        ):
            o = list(online.parameters()) + [
                b for b in online.buffers() if b.dtype.is_floating_point
            ]
            t = list(target.parameters()) + [
                b for b in target.buffers() if b.dtype.is_floating_point
            ]
            torch._foreach_mul_(t, tau)
            torch._foreach_add_(t, o, alpha=1.0 - tau)


def regression(p, z):
    return 2 - 2 * F.cosine_similarity(p, z, dim=-1)


def step(model, optimizer, v1, v2, tau, amp):
    with torch.autocast(device_type=v1.device.type, dtype=torch.bfloat16, enabled=amp):
        p1 = model.predictor(model.projector(model.encoder(v1)))
        p2 = model.predictor(model.projector(model.encoder(v2)))
        with torch.no_grad():
            z1 = model.target_projector(model.target_encoder(v1))
            z2 = model.target_projector(model.target_encoder(v2))
    loss = (regression(p1.float(), z2.float()) + regression(p2.float(), z1.float())).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.update_target(tau)
    return loss


def bench(setting, batch, steps, warmup, device, amp=False, channels_last=False):
    torch.manual_seed(0)
    s = SETTINGS[setting]
    model = Byol(s["make"], s["channels"], s["hidden"], s["dim"]).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    optimizer = torch.optim.Adam(
        model.online_parameters(), lr=1e-3, eps=1e-8, weight_decay=1e-6
    )
    shape = (batch, s["channels"], s["size"], s["size"])
    inputs = [
        (
            torch.randn(shape, device=device).contiguous(memory_format=fmt),
            torch.randn(shape, device=device).contiguous(memory_format=fmt),
        )
        for _ in range(4)
    ]
    gpu = device.startswith("cuda")

    def run(n):
        loss = None
        for i in range(n):
            v1, v2 = inputs[i % len(inputs)]
            loss = step(model, optimizer, v1, v2, 0.99, amp)
        if loss is not None:
            loss.item()  # wait for the device
        if gpu:
            torch.cuda.synchronize()

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    run(warmup)
    start = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - start
    return {
        "name": s["name"],
        "batch": batch,
        "steps": steps,
        "images_per_sec": steps * batch / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "amp": "bf16" if amp else "none",
        "channels_last": channels_last,
        "threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none",
                        help="autocast the forward to bfloat16")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC memory format for the networks and inputs")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = DEFAULT_SET if args.model == "all" else [args.model]
    for name in names:
        result = bench(name, args.batch, args.steps, args.warmup, args.device,
                       amp=args.amp == "bf16", channels_last=args.channels_last)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
