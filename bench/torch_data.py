#!/usr/bin/env python3
"""The data pipeline of byol-rs at ImageNet size, in PIL + torchvision, for
`cargo xtask bench data --size 224 --peer`.

The same work per image as the Rust side (`make_batch` of
crates/byol-train/src/loader.rs), over the same files:

- decode the JPEG with PIL (`Image.open(path).convert("RGB")`, as
  torchvision's `ImageFolder` loader does);
- make the paper's two views with `torchvision.transforms.v2`
  [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6]: RandomResizedCrop
  (scale 0.08-1, ratio 3/4-4/3, bilinear, antialias=True), horizontal flip
  p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2,
  GaussianBlur(23, sigma 0.1-2.0) p 1.0 / 0.1, solarize (threshold 128)
  p 0.0 / 0.2, ToDtype(float32, scale=True), Normalize(ImageNet mean, std);
- batch both views as float tensors (the DataLoader's collate, in the
  workers).

By default the views work on uint8 tensors (`ToImage` first), as
torchvision's performance notes advise, and blur with `v2.GaussianBlur(23)`
(a 23x23 depthwise convolution). `--input pil --blur pil` is the pipeline
lightly and solo-learn run: every transform on the PIL image and PIL's
`ImageFilter.GaussianBlur(radius=sigma)`, then `ToImage`. N worker
processes of a DataLoader (torch.set_num_threads(1) in each), the main
process only receiving batches. The clock covers everything from starting
the workers to the last batch, as the Rust side times all its batches.

Prints one JSON line per worker count: {"name", "workers", "images",
"seconds", "images_per_sec", "input", "blur", "torch", "torchvision",
"pil"}.
"""

import argparse
import json
import os
import random
import time

import PIL
import torch
import torchvision
from PIL import Image, ImageFilter
from torchvision.transforms import v2

EXTENSIONS = (".jpg", ".jpeg", ".png")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class PilGaussianBlur:
    """PIL's gaussian blur, sigma uniform in a range, as lightly and
    solo-learn blur their BYOL views: `ImageFilter.GaussianBlur(radius=sigma)`
    (PIL's radius is the standard deviation), on the PIL image."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def view(size, blur_p, solarize_p, tensor_input, pil_blur):
    """One BYOL view (Table 6 of the paper)."""
    first = [v2.ToImage()] if tensor_input else []
    last = [] if tensor_input else [v2.ToImage()]
    blur = PilGaussianBlur((0.1, 2.0)) if pil_blur else v2.GaussianBlur(23, sigma=(0.1, 2.0))
    return v2.Compose(
        first
        + [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([blur], p=blur_p),
            v2.RandomSolarize(threshold=128, p=solarize_p),
        ]
        + last
        + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    )


class TwoViews(torch.utils.data.Dataset):
    """Image files, each read as its two views."""

    def __init__(self, files, size, tensor_input, pil_blur):
        self.files = files
        self.view1 = view(size, 1.0, 0.0, tensor_input, pil_blur)
        self.view2 = view(size, 0.1, 0.2, tensor_input, pil_blur)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.view1(img), self.view2(img)


def image_files(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(EXTENSIONS)]
    return found


def one_worker_setup(worker_id):
    torch.set_num_threads(1)
    random.seed(worker_id)


def bench(files, size, batch, batches, workers, tensor_input, pil_blur, seed):
    dataset = TwoViews(files, size, tensor_input, pil_blur)
    rng = random.Random(seed)
    order = []
    while len(order) < batch * batches:
        epoch = list(range(len(files)))
        rng.shuffle(epoch)
        order += epoch
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=order[: batch * batches],
        num_workers=workers,
        worker_init_fn=one_worker_setup,
        prefetch_factor=2,
        drop_last=True,
    )
    images = 0
    start = time.perf_counter()
    for v1, v2_ in loader:
        assert v1.shape == (batch, 3, size, size) and v2_.dtype == torch.float32
        images += v1.shape[0]
    seconds = time.perf_counter() - start
    return {
        "name": "torchvision",
        "workers": workers,
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "input": "tensor" if tensor_input else "pil",
        "blur": "pil" if pil_blur else "torchvision",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pil": PIL.__version__,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated worker counts, one line each")
    parser.add_argument("--input", choices=["tensor", "pil"], default="tensor")
    parser.add_argument("--blur", choices=["torchvision", "pil"], default="torchvision",
                        help="v2.GaussianBlur(23) (the default) or PIL's ImageFilter.GaussianBlur")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.blur == "pil" and args.input != "pil":
        parser.error("--blur pil blurs PIL images: add --input pil")
    torch.set_num_threads(1)
    files = image_files(args.folder)
    if len(files) < args.batch:
        raise SystemExit(f"{args.folder}: {len(files)} images, fewer than a batch")
    for workers in (int(w) for w in args.workers.split(",")):
        result = bench(files, args.size, args.batch, args.batches, workers,
                       args.input == "tensor", args.blur == "pil", args.seed)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
