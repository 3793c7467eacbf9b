"""Benchmark: batched SimCLR augmentation vs torchvision's per-image transforms.

Prints, from one run on the same images, the milliseconds to make two views of a batch
with each path and the speed-up ratio, and the SimCLR training step time for context.
Usage: python bench/augment_bench.py [--size 16] [--batch 256] [--width 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from data_aug import SimCLRAugment, get_dataset  # noqa: E402
from loss import info_nce_views  # noqa: E402
from models import build_encoder, build_mlp  # noqa: E402
from utils import pick_device, setup_threads  # noqa: E402


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats * 1000.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    setup_threads()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = get_dataset("digitsm", "train", image_size=args.size).images[:args.batch]
    gen = torch.Generator().manual_seed(0)

    batched = SimCLRAugment(args.size)
    gpu_images = images.to(device)
    ms_batched = timed(lambda: [batched(gpu_images, gen) for _ in range(2)], args.repeats, sync)

    k = max(3, 2 * (int(0.1 * args.size) // 2) + 1)
    per_image = v2.Compose([
        v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5), v2.ToDtype(torch.float32, scale=True)])
    ms_per_image = timed(lambda: [torch.stack([per_image(im) for im in images]).to(device) for _ in range(2)],
                         args.repeats, sync)

    enc = build_encoder("resnet18", width=args.width).to(device)
    head = build_mlp([enc.out_dim, enc.out_dim, 128]).to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()))
    views = torch.cat([batched(gpu_images, gen) for _ in range(2)])

    def step():
        loss = info_nce_views(head(enc(views)).view(2, args.batch, -1), temperature=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms_step = timed(step, args.repeats, sync)
    print(f"device {device}, {args.batch} images x 2 views at {args.size}px")
    print(f"  batched tensor augmentation : {ms_batched:8.1f} ms")
    print(f"  torchvision per-image       : {ms_per_image:8.1f} ms")
    print(f"  speed-up                    : {ms_per_image / ms_batched:8.1f}x")
    print(f"  training step (resnet18 w{args.width}): {ms_step:8.1f} ms  "
          f"(augmentation share: batched {ms_batched / (ms_batched + ms_step):.0%}, "
          f"per-image {ms_per_image / (ms_per_image + ms_step):.0%})")


if __name__ == "__main__":
    main()
