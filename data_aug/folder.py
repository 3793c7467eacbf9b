"""Writing an in-memory :class:`~data_aug.base.ImageSet` as an ImageNet-style image folder.

``write_image_folder(images, root, split)`` writes ``root/imagenet/<split>/<class>/<index:06d>.png``,
the layout ``get_dataset("imagenet", split, root=root)`` reads (:mod:`data_aug.real`), so a
small offline dataset can stand in for ImageNet at CPU scale. PNG is lossless: read back at
the same size, the pixels are exactly the ones written.

The reader numbers classes by the sorted names of the train split's class folders and lists
each class's files in name order, so reading a split back gives its images grouped by label
(label 0's first), in their original order within each label.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from utils import UserError

from .base import ImageSet


def default_class_name(label: int) -> str:
    """ImageNet-like folder name of class ``label`` (``n00000003``): sorting the names sorts the labels."""
    return f"n{label:08d}"


def _class_names(labels: list[int], class_names: Optional[Sequence[str]], split: str) -> list[str]:
    top = max(labels)
    if class_names is None:
        return [default_class_name(i) for i in range(top + 1)]
    names = [str(n) for n in class_names]
    if len(names) <= top:
        raise UserError(f"the {split} images have label {top} but only {len(names)} class names were given; "
                        f"give one name per class, label order.")
    if any(not n or n in (".", "..") or "/" in n or os.sep in n or n.startswith(".") for n in names):
        raise UserError(f"class names must be plain folder names (not empty, no '/', not starting with '.'), "
                        f"got {names[:5]}{' ...' if len(names) > 5 else ''}.")
    if len(set(names)) != len(names) or names != sorted(names):
        raise UserError("class names must be distinct and in sorted order, because an image folder's reader "
                        "numbers classes by their sorted folder names; sorted order must be label order.")
    return names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image_folder(images: ImageSet, root: os.PathLike | str, split: str,
                       class_names: Optional[Sequence[str]] = None, *, overwrite: bool = False) -> Path:
    """Write ``images`` (uint8 ``N x 3 x S x S`` and labels) as ``root/imagenet/<split>/<class>/<index:06d>.png``;
    returns the split folder.

    ``class_names[label]`` names each class folder (default ``n<label:08d>``, like ImageNet's
    wnids); their sorted order must be label order. ``<index>`` is the image's position in
    ``images``. The split is written into a temporary folder beside it and renamed into place,
    so a crash never leaves a half-written split. A non-empty split folder is refused unless
    ``overwrite``. Unlabelled images (label ``-1``) are refused: an image folder has no place
    for them. The train split must hold every label from 0 to its largest, or the reader
    would renumber the classes.
    """
    from PIL import Image

    split = str(split)
    if not split or split in (".", "..") or "/" in split or os.sep in split:
        raise UserError(f"split must be a plain folder name such as train or val, got {split!r}.")
    if len(images) == 0:
        raise UserError(f"the {split} image set is empty; there is nothing to write.")
    labels = [int(v) for v in images.labels.tolist()]
    if min(labels) < 0:
        unlabelled = sum(v < 0 for v in labels)
        raise UserError(f"{unlabelled} of the {len(labels)} {split} images have no label (label -1); an image "
                        f"folder sorts images into class folders, so write only labelled images.")
    names = _class_names(labels, class_names, split)
    present = sorted(set(labels))
    if split == "train" and present != list(range(present[-1] + 1)):
        missing = sorted(set(range(present[-1] + 1)) - set(present))
        raise UserError(f"the train images have no image of label(s) {missing[:5]}; the reader numbers classes "
                        f"by the train split's class folders, so every label from 0 to {present[-1]} needs one.")

    base = Path(root) / "imagenet"
    target = base / split
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; remove it or choose another root.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target} already holds files; remove it, or overwrite it (overwrite=True, "
                        f"--overwrite on the command line).")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".tmp", dir=base))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the split folder gets mkdir's mode
        for label in present:
            (tmp / names[label]).mkdir()
        pixels = images.images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # N x S x S x 3 for PIL
        for index, (image, label) in enumerate(zip(pixels, labels)):
            Image.fromarray(image).save(tmp / names[label] / f"{index:06d}.png")
        if target.is_dir():
            if any(target.iterdir()):  # overwrite: move the old split aside, then delete it
                old = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".old", dir=base))
                os.replace(target, old / split)
            else:
                target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / split).exists():
            os.replace(old / split, target)  # put the old split back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


__all__ = ["default_class_name", "write_image_folder"]
