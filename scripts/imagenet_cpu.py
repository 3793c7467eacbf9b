"""Build the CPU-scale stand-in for the paper's ImageNet experiments (Tables 3 and 8).

  python scripts/imagenet_cpu.py                                   # runs/imagenet_cpu/imagenet/{train,val}
  python scripts/imagenet_cpu.py --victim-checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt

The paper steals a published SimSiam ResNet50 trained on ImageNet and reads ImageNet as an
image folder. This script makes both from offline data, so the same code paths (the
ImageFolder reader, the SimSiam checkpoint loader) run on two CPU cores:

* DIR/imagenet/train/<class>/<index>.png from the dataset's train split and
  DIR/imagenet/val/<class>/<index>.png from its test split without the held-out end that the
  linear probe tests on (1,000 images for mnistm5k: ``data_aug.split_holdout``), so that querying
  "ImageNet val" never touches a probe's test image; at the native size, as lossless
  PNG (class folders n00000000, n00000001, ... in label order). Read them with
  ``-data DIR --dataset imagenet --image-size <native size>`` (28 for mnistm5k).
* with --victim-checkpoint, DIR/simsiam_victim.pth.tar: that victim's encoder in the format of
  facebookresearch/simsiam's checkpoints (module.encoder.*, a freshly initialised projector
  module.encoder.fc.* and predictor module.predictor.*), read back by ``models.load_encoder``
  like the published checkpoint. The SimSiam format carries no input normalisation: the
  loader applies ImageNet's, so the victim's own normalisation is dropped and the exported
  encoder computes the same function as the victim only if the victim used ImageNet's.

Running it again keeps a split folder that already holds as many images as the split has
(printed as "kept"); a folder with another count is refused unless --overwrite. The victim
file is rewritten every time (atomically; the same victim gives the same weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_aug import DATASETS, OFFLINE, dataset_info, get_dataset, split_holdout, write_image_folder
from models import load_encoder, save_simsiam
from utils import HelpFormatter, Numeric, UserError, run_cli

SPLITS = (("train", "train_split"), ("val", "test_split"))  # folder <- DatasetInfo attribute naming the split
VICTIM_FILE = "simsiam_victim.pth.tar"


def build_parser() -> argparse.ArgumentParser:
    labelled = [name for name in OFFLINE if DATASETS[name].num_classes > 0]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="mnistm5k", choices=labelled,
                   help="the offline labelled dataset that stands in for ImageNet: its train split becomes "
                        "imagenet/train and its test split, without the probe's held-out end, imagenet/val")
    p.add_argument("--out", default="runs/imagenet_cpu", metavar="DIR",
                   help="output folder DIR; it receives DIR/imagenet/{train,val} (pass it as -data DIR with "
                        "--dataset imagenet) and, with --victim-checkpoint, DIR/" + VICTIM_FILE)
    p.add_argument("--victim-checkpoint", default=None, metavar="CKPT",
                   help="an sslsteal victim checkpoint (run.py's <logdir>/checkpoint.pt) to re-export as a "
                        "SimSiam-format checkpoint DIR/" + VICTIM_FILE + ", with ImageNet's input normalisation "
                        "instead of its own; without it no victim file is written")
    p.add_argument("--overwrite", action="store_true",
                   help="rewrite the split folders even when they already exist (else a folder with the right "
                        "number of images is kept and one with another number is refused)")
    p.add_argument("--limit", type=Numeric(int, low=1), default=None, metavar="N",
                   help="take only the first N images of each split (for quick tests); default: all of them")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line error messages")
    return p


def _count_images(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*.png"))


def write_split(images, out: Path, split: str, overwrite: bool) -> str:
    """Write one split folder, or keep it when it already holds as many images; returns a status line."""
    folder = out / "imagenet" / split
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        found = _count_images(folder)
        if found == len(images):
            return f"kept    {folder} ({found} images already there)"
        raise UserError(f"{folder} holds {found} images but the {images.name} {images.split} split has "
                        f"{len(images)}; pass --overwrite to rewrite it, or choose another --out.")
    write_image_folder(images, out, split, overwrite=overwrite)
    classes = len(set(images.labels.tolist()))
    return (f"wrote   {folder} ({len(images)} images of {images.name} {images.split}, {classes} classes, "
            f"{images.image_size} px PNG)")


def export_victim(checkpoint: str, out: Path) -> list[str]:
    """Re-export a victim's encoder as DIR/simsiam_victim.pth.tar; returns the lines to print."""
    encoder, _, ckpt = load_encoder(checkpoint)
    own = ("no normalisation" if encoder.mean is None else
           f"its own mean {tuple(round(m, 4) for m in encoder.mean)}, std {tuple(round(s, 4) for s in encoder.std)}")
    path = save_simsiam(out / VICTIM_FILE, encoder)
    trained_on = f" trained on {ckpt['dataset']}" if isinstance(ckpt.get("dataset"), str) else ""
    return [f"wrote   {path} (SimSiam format: {encoder.arch} width {encoder.width}, {encoder.stem} stem, "
            f"{encoder.out_dim}-d representation; victim {checkpoint}{trained_on})",
            f"note    the victim is re-exported with ImageNet normalisation (mean (0.485, 0.456, 0.406), std "
            f"(0.229, 0.224, 0.225)) instead of {own}: the SimSiam format carries none"]


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)

    info = dataset_info(args.dataset)
    out = Path(args.out)
    for folder, attr in SPLITS:
        images = get_dataset(args.dataset, getattr(info, attr))
        if folder == "val":  # the probe's held-out test images stay out of every query set
            images = split_holdout(images)[0]
        if args.limit is not None and args.limit < len(images):
            images = images.subset(range(args.limit))
        print(write_split(images, out, folder, args.overwrite), flush=True)
    if args.victim_checkpoint:
        for line in export_victim(args.victim_checkpoint, out):
            print(line, flush=True)
    print(f"use it as ImageNet with: -data {out} --dataset imagenet --image-size {info.native_size}"
          + (f"  (victim: --victim-checkpoint {out / VICTIM_FILE})" if args.victim_checkpoint else ""))
    return out


if __name__ == "__main__":
    run_cli(main)
