"""Dataset containers and batching.

Every dataset is an :class:`ImageSet`: images as a ``uint8`` tensor ``N x 3 x S x S``
(already at the working resolution, 3 channels) and integer labels (``-1`` where a set
has none). Keeping the data as uint8 tensors lets training slice batches directly (on
the GPU when there is one) and augment whole batches at once, which on these small
images is several times faster than per-image PIL transforms.

Image folders too large for memory (ImageNet) are :class:`FolderImageSet`: decoded
lazily, one image at a time, to the same uint8 ``3 x S x S`` format, and batched by a
DataLoader with workers. :func:`iterate_batches` hides the difference.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils import UserError


class ImageSet(Dataset):
    """An in-memory labelled image set. ``dataset[i] -> (float image in [0,1], label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str = "", split: str = "",
                 num_classes: Optional[int] = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.long()
        self.name, self.split = name, split
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index].float().div(255.0), int(self.labels[index])

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, indices: Sequence[int] | torch.Tensor, split: Optional[str] = None) -> "ImageSet":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], name=self.name,
                        split=split or self.split, num_classes=self.num_classes)

    def __repr__(self) -> str:
        return (f"ImageSet({self.name}/{self.split}: {len(self)} images "
                f"{self.image_size}px, {self.num_classes} classes)")


class FolderImageSet(Dataset):
    """A lazily decoded image set (e.g. an ImageFolder), items ``(uint8 3xSxS, label)``."""

    def __init__(self, base: Dataset, image_size: int, *, name: str = "", split: str = "",
                 num_classes: Optional[int] = None):
        from torchvision.transforms import v2

        self.base = base
        self.name, self.split, self.num_classes = name, split, num_classes
        self._image_size = image_size
        self._decoded = None  # (images, labels) once decoded by .images / .labels
        # shorter side to S, then centre crop: every item has the same shape, and
        # augmentation (random resized crop) happens batched afterwards
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True),
                                     v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.base)

    @property
    def image_size(self) -> int:
        return self._image_size

    def load(self, index: int):
        img, label = self.base[index]
        img = self.transform(img.convert("RGB") if hasattr(img, "convert") else img)
        return img, int(label)

    def __getitem__(self, index: int):
        img, label = self.load(index)
        return img.float().div(255.0), label

    def subset(self, indices: Sequence[int] | torch.Tensor, split: Optional[str] = None) -> "FolderImageSet":
        """A lazily decoded view of some of the images (as :meth:`ImageSet.subset`)."""
        from torch.utils.data import Subset

        idx = [int(i) for i in torch.as_tensor(indices, dtype=torch.long)]
        view = FolderImageSet.__new__(FolderImageSet)
        view.__dict__.update(self.__dict__)
        view.base, view.split, view._decoded = Subset(self.base, idx), split or self.split, None
        return view

    def _decode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "_decoded", None) is None:
            need = len(self) * 3 * self._image_size ** 2
            if need > IN_MEMORY_LIMIT:
                raise UserError(f"{self.name}/{self.split} is decoded lazily from image files ({len(self):,} images "
                                f"at {self._image_size} px, {need / 2 ** 30:.1f} GiB as one tensor) and this step "
                                f"needs them in memory; use fewer images (e.g. a smaller --num_queries) or a "
                                f"smaller --image-size.")
            items = [self.load(i) for i in range(len(self))]
            self._decoded = (torch.stack([img for img, _ in items]) if items else
                             torch.zeros(0, 3, self._image_size, self._image_size, dtype=torch.uint8),
                             torch.tensor([label for _, label in items], dtype=torch.long))
        return self._decoded

    @property
    def images(self) -> torch.Tensor:
        """All images as one uint8 tensor, decoded on first use; refused (one sentence) above
        :data:`IN_MEMORY_LIMIT` bytes."""
        return self._decode_all()[0]

    @property
    def labels(self) -> torch.Tensor:
        return self._decode_all()[1]

    def __repr__(self) -> str:
        return (f"FolderImageSet({self.name}/{self.split}: {len(self)} images "
                f"{self._image_size}px, {self.num_classes} classes, decoded lazily)")


# the largest lazily decoded set a step may hold in memory as one uint8 tensor (2 GiB: about
# 14,000 images at 224 px); larger ones must be streamed
IN_MEMORY_LIMIT = 2 * 2 ** 30


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 ``N x C x H x W`` batch to ``size x size`` (bilinear, antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(part.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """``N x H x W`` or ``N x 1 x H x W`` grey, or ``N x 3 x H x W``, to uint8 ``N x 3 x H x W``."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.to(torch.uint8).contiguous()


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                    generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu",
                    workers: int = 0, indices: Optional[torch.Tensor] = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images B x 3 x S x S on device, labels, dataset indices)``.

    In-memory sets are sliced directly; lazy sets go through a DataLoader with workers.
    The order is drawn from ``generator`` (a CPU generator), so it is reproducible.
    ``indices`` restricts iteration to those positions of ``dataset``.
    """
    n = len(dataset)
    order = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    device = torch.device(device)
    if isinstance(dataset, ImageSet):
        images, labels = dataset.images, dataset.labels
        if device.type != "cpu" and images.device != device:
            # keep the whole uint8 set on the GPU: one copy, then slicing is free
            images = dataset.images = dataset.images.to(device, non_blocking=True)
            labels = dataset.labels = dataset.labels.to(device)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            gidx = idx.to(images.device)
            yield images[gidx], labels[gidx], idx
        return

    size = getattr(dataset, "image_size", None)

    class _Indexed(Dataset):
        def __len__(self):
            return stop

        def __getitem__(self, i):
            j = int(order[i])
            try:
                img, label = dataset.load(j) if hasattr(dataset, "load") else dataset[j]
            except UserError as err:
                if size is None:
                    raise
                # a worker process's exception reaches the caller wrapped in its traceback's text: carry the
                # sentence beside a blank image instead, and raise it as it is in the caller's process
                return torch.zeros(3, size, size, dtype=torch.uint8), -1, j, str(err)
            if img.dtype != torch.uint8:
                img = img.mul(255).round().clamp(0, 255).to(torch.uint8)
            return img, label, j, ""

    loader = DataLoader(_Indexed(), batch_size=batch_size, shuffle=False, drop_last=drop_last,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    for images, labels, idx, errors in loader:
        failed = next((e for e in errors if e), None)
        if failed is not None:
            raise UserError(failed)
        yield (images.to(device, non_blocking=True), torch.as_tensor(labels).to(device), idx)
