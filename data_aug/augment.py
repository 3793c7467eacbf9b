"""Batched SimCLR augmentation on uint8/float image tensors.

The reference applied torchvision PIL transforms image by image; at 16-32 px that costs
more than the training step itself (measured in bench/augment_bench.py). Here every transform works on a whole
batch ``B x 3 x H x W`` at once, on whatever device the batch lives on, with per-image
random parameters drawn from one ``torch.Generator`` (so runs are reproducible and a
resumed run draws the same views).

The parameters follow the reference's SimCLR pipeline (reference-behaviour.md 1.3):

1. RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))  - bilinear, via grid_sample
2. RandomHorizontalFlip(0.5)                                  - folded into the crop's affine map
3. ColorJitter(0.8, 0.8, 0.8, 0.2) with probability 0.8        - brightness, contrast, saturation,
   hue in a random order per image, as torchvision does
4. RandomGrayscale(0.2)
5. GaussianBlur, sigma ~ U(0.1, 2.0), kernel 2*(int(0.1*size)//2)+1 (at least 3), reflect padding.
   The reference applied it to every image (listed as a bug); SimCLR applies it with
   probability 0.5, which is our default (``blur_p``).

Inputs may be uint8 (0-255) or float (0-1); the output is float in [0, 1]. Normalisation
is not done here: encoders normalise their own inputs (see ``models.resnet``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """The plain query transform: uint8 ``0..255`` to float ``0..1`` (float input unchanged)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _rand(n: int, generator: Optional[torch.Generator], lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    # parameters are drawn on the CPU (small), so one CPU generator drives every device
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``B x 1 x H x W``."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack((rr, gg, bb), dim=1), out)
    return out


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def adjust_brightness(x, f):
    return (x * _bc(f, x)).clamp_(0, 1)


def adjust_contrast(x, f):
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _bc(f, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x, f):
    f = _bc(f, x)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x, shift):
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + shift.to(x.device, x.dtype).view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1)).clamp_(0, 1)


def blur_kernel_size(image_size: int) -> int:
    k = 2 * (int(0.1 * image_size) // 2) + 1
    return max(3, k)


@dataclass(frozen=True)
class SimCLRAugment:
    """Batched SimCLR view augmentation: ``aug(images, generator) -> float B x 3 x S x S``."""

    image_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = to_float(images)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch B x 3 x H x W, got {tuple(x.shape)}")
        x = self.resized_crop(x, generator)
        x = self.color_jitter(x, generator)
        x = self.random_grayscale(x, generator)
        return self.gaussian_blur(x, generator)

    # -- 1 + 2: random resized crop with horizontal flip, one affine grid per image
    def crop_boxes(self, n: int, height: int, width: int, generator=None) -> torch.Tensor:
        """Boxes ``n x 4`` (top, left, h, w) in pixels, torchvision's sampling rule vectorised."""
        tries = 10
        area = height * width
        scale = _rand(n * tries, generator, *self.crop_scale).view(n, tries)
        logr = _rand(n * tries, generator, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])).view(n, tries)
        ratio = torch.exp(logr)
        w = torch.sqrt(scale * area * ratio).round()
        h = torch.sqrt(scale * area / ratio).round()
        ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        rows = torch.arange(n)
        pick = first.clamp(min=0)
        bw, bh = w[rows, pick], h[rows, pick]
        # fallback (no valid try): the whole image, as torchvision's central crop with ratio in range
        bw = torch.where(first >= 0, bw, torch.full_like(bw, width))
        bh = torch.where(first >= 0, bh, torch.full_like(bh, height))
        u = _rand(2 * n, generator).view(n, 2)
        top = torch.floor(u[:, 0] * (height - bh + 1))
        left = torch.floor(u[:, 1] * (width - bw + 1))
        return torch.stack((top, left, bh, bw), dim=1)

    def resized_crop(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        n, _, height, width = x.shape
        top, left, bh, bw = self.crop_boxes(n, height, width, generator).unbind(1)
        flip = torch.where(_rand(n, generator) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = bw / width * flip
        theta[:, 0, 2] = (2 * left + bw) / width - 1
        theta[:, 1, 1] = bh / height
        theta[:, 1, 2] = (2 * top + bh) / height - 1
        size = (n, 3, self.image_size, self.image_size)
        grid = F.affine_grid(theta.to(x.device, x.dtype), size, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # -- 3: colour jitter, a random order of the four operations for each image
    def color_jitter(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        n = x.shape[0]
        b, c, s, h = self.jitter
        apply = _rand(n, generator) < self.jitter_p
        factors = [
            _rand(n, generator, max(0.0, 1 - b), 1 + b),
            _rand(n, generator, max(0.0, 1 - c), 1 + c),
            _rand(n, generator, max(0.0, 1 - s), 1 + s),
            _rand(n, generator, -h, h),
        ]
        ops: list[Callable] = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
        order = torch.argsort(_rand(n * 4, generator).view(n, 4), dim=1)
        x = x.clone()
        for pos in range(4):
            for op_id, op in enumerate(ops):
                sel = (apply & (order[:, pos] == op_id)).nonzero().flatten()
                if sel.numel():
                    dsel = sel.to(x.device)
                    x[dsel] = op(x[dsel], factors[op_id][sel])
        return x

    # -- 4: random grayscale
    def random_grayscale(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        sel = (_rand(x.shape[0], generator) < self.gray_p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(sel, grayscale(x).expand_as(x), x)

    # -- 5: Gaussian blur, one sigma per image, separable depthwise convolution
    def gaussian_blur(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        n, ch, hh, ww = x.shape
        k = blur_kernel_size(self.image_size)
        r = k // 2
        sigma = _rand(n, generator, *self.blur_sigma)
        apply = _rand(n, generator) < self.blur_p
        if not bool(apply.any()) or r == 0:
            return x
        pos = torch.arange(-r, r + 1, dtype=torch.float32)
        kern = torch.exp(-(pos.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kern = kern / kern.sum(dim=1, keepdim=True)
        delta = torch.zeros(k)
        delta[r] = 1.0
        kern = torch.where(apply.view(-1, 1), kern, delta.view(1, -1))  # identity where not applied
        kern = kern.to(x.device, x.dtype).repeat_interleave(ch, dim=0)  # (n*ch) x k
        y = x.reshape(1, n * ch, hh, ww)
        y = F.pad(y, (r, r, 0, 0), mode="reflect")
        y = F.conv2d(y, kern.view(n * ch, 1, 1, k), groups=n * ch)
        y = F.pad(y, (0, 0, r, r), mode="reflect")
        y = F.conv2d(y, kern.view(n * ch, 1, k, 1), groups=n * ch)
        return y.view(n, ch, hh, ww)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``B x C x H x W`` by its own angle (degrees, counter-clockwise).

    Nearest-neighbour sampling around the image centre, pixels from outside filled with 0
    (black), output the same size: torchvision's ``rotate(img, angle)`` defaults, batched.
    """
    x = to_float(images)
    if x.dim() != 4:
        raise ValueError(f"expected a batch B x C x H x W, got {tuple(x.shape)}")
    theta = torch.deg2rad(degrees.to(device=x.device, dtype=torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    h, w = x.shape[-2:]
    # output pixel (u, v) reads the input at R(-angle)(u, v), in pixel units around the centre; counter-clockwise
    # on screen (y pointing down) means the sampling map [[cos, -sin], [sin, cos]] in (x, y) coordinates
    ys = torch.arange(h, device=x.device, dtype=torch.float64) - (h - 1) / 2
    xs = torch.arange(w, device=x.device, dtype=torch.float64) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    src_x = cos[:, None, None] * gx - sin[:, None, None] * gy + (w - 1) / 2
    src_y = sin[:, None, None] * gx + cos[:, None, None] * gy + (h - 1) / 2
    ix, iy = torch.round(src_x).long(), torch.round(src_y).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).view(x.shape[0], 1, h * w).expand(-1, x.shape[1], -1)
    out = torch.gather(x.reshape(x.shape[0], x.shape[1], h * w), 2, flat).view_as(x)
    return out * inside.unsqueeze(1).to(out.dtype)


class NViews:
    """Apply a batch transform ``n_views`` times with independent randomness.

    ``NViews(aug, 2)(images, generator)`` returns a list of 2 tensors ``B x ...``; consumers
    concatenate them view-major (all first views, then all second views), as the reference.
    """

    def __init__(self, transform: Callable, n_views: int = 2):
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.transform, self.n_views = transform, n_views

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        return [self.transform(images, generator) for _ in range(self.n_views)]
