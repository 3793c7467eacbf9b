import pytest
import torch

from data_aug import NViews, SimCLRAugment, to_float
from data_aug.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    blur_kernel_size,
    grayscale,
    hsv_to_rgb,
    rgb_to_hsv,
)


def batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("out_size", [8, 16, 24])
def test_shapes_and_range(out_size):
    x = batch(size=16)
    out = SimCLRAugment(out_size)(x, torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, out_size, out_size)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_float_input_and_bad_shape():
    aug = SimCLRAugment(16)
    assert aug(to_float(batch()), torch.Generator().manual_seed(0)).shape == (8, 3, 16, 16)
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 16, 16))


def test_same_generator_same_views_and_views_differ():
    x = batch()
    aug = SimCLRAugment(16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_identity_when_everything_is_off():
    # full-image crop, no flip/jitter/grey/blur: grid_sample at the same size is the identity
    aug = SimCLRAugment(16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                        gray_p=0.0, blur_p=0.0)
    x = batch()
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), to_float(x), atol=1e-5)


def test_flip_only_mirrors():
    aug = SimCLRAugment(16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0,
                        gray_p=0.0, blur_p=0.0)
    x = batch()
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), to_float(x).flip(-1), atol=1e-5)


def test_grayscale_always_gives_equal_channels():
    aug = SimCLRAugment(16, gray_p=1.0)
    out = aug(batch(), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)


def test_crop_boxes_within_image_and_scale():
    aug = SimCLRAugment(16, crop_scale=(0.25, 1.0))
    boxes = aug.crop_boxes(1000, 16, 16, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 16).all() and (left + w <= 16).all()
    area = h * w / 256
    assert area.min() >= 0.25 * 0.75 and area.max() <= 1.0  # rounding of sides only


def test_blur_preserves_constant_image_and_smooths_noise():
    aug = SimCLRAugment(32, blur_p=1.0, blur_sigma=(1.5, 1.5))
    const = torch.full((4, 3, 32, 32), 0.4)
    assert torch.allclose(aug.gaussian_blur(const, torch.Generator().manual_seed(0)), const, atol=1e-6)
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = aug.gaussian_blur(noise, torch.Generator().manual_seed(0))
    assert blurred.std() < noise.std() * 0.8
    assert blur_kernel_size(32) == 3 and blur_kernel_size(224) == 23 and blur_kernel_size(16) == 3


def test_colour_ops_match_definitions():
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ones, zeros = torch.ones(5), torch.zeros(5)
    assert torch.allclose(adjust_brightness(x.clone(), ones), x)
    assert torch.allclose(adjust_brightness(x.clone(), zeros), torch.zeros_like(x))
    # contrast 0: every pixel becomes the image's mean grey level
    c0 = adjust_contrast(x.clone(), zeros)
    assert torch.allclose(c0, grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    # saturation 0: grey image
    assert torch.allclose(adjust_saturation(x.clone(), zeros), grayscale(x).expand_as(x))


def test_hsv_round_trip():
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    h, s, v = rgb_to_hsv(red).flatten().tolist()
    assert (h, s, v) == (0.0, 1.0, 1.0)


def test_nviews_wrapper():
    x = batch(n=5)
    views = NViews(SimCLRAugment(16), 3)(x, torch.Generator().manual_seed(0))
    assert isinstance(views, list) and len(views) == 3
    assert all(v.shape == (5, 3, 16, 16) for v in views)
    assert not torch.allclose(views[0], views[1])  # independent randomness per view
    with pytest.raises(ValueError):
        NViews(SimCLRAugment(16), 0)
