"""The wire format shared by the HTTP service (:mod:`service.http`) and the attacker's client
(:class:`attacks.client.HTTPConnection`): arrays as base64 of their raw bytes, images as raw
uint8 arrays or PNG files, and the request limits checked before anything is decoded.

This module imports no web framework, so the client side needs only the standard library and torch.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""
    max_body_bytes: int = 32 * 2 ** 20
    max_batch: int = 256


class RequestError(Exception):
    """A refused request: its HTTP status and one sentence."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def encode_array(x: torch.Tensor) -> dict:
    """The wire form of a tensor: shape, dtype and base64 of its raw bytes (little-endian)."""
    arr = x.detach().cpu().contiguous().numpy()
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "data": base64.b64encode(arr.tobytes()).decode()}


def decode_array(payload: dict, dtype: str) -> torch.Tensor:
    try:
        raw = base64.b64decode(payload["data"], validate=True)
        shape = [int(s) for s in payload["shape"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as err:
        raise RequestError(400, f"the body needs 'shape' (a list of ints) and 'data' (base64): {err}") from None
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise RequestError(422, f"'data' holds {len(raw)} bytes but shape {shape} of {dtype} needs {expected}")
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())


def decode_images(body: dict, size: int, limits: Limits) -> torch.Tensor:
    """The ``B x 3 x size x size`` uint8 batch of a request body, or a :class:`RequestError`."""
    fmt = body.get("format", "uint8")
    if fmt == "uint8":
        if body.get("dtype", "uint8") != "uint8":
            raise RequestError(422, f"images must be uint8, got {body.get('dtype')!r}")
        shape = body.get("shape")
        if isinstance(shape, list) and len(shape) == 4 and isinstance(shape[0], int) and shape[0] > limits.max_batch:
            raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {shape[0]}")
        images = decode_array(body, "uint8")
    elif fmt == "png":
        from PIL import Image

        items = body.get("images")
        if not isinstance(items, list) or not items:
            raise RequestError(400, "format 'png' needs 'images': a non-empty list of base64 PNG files")
        if len(items) > limits.max_batch:
            raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {len(items)}")
        decoded = []
        for i, item in enumerate(items):
            try:
                img = Image.open(io.BytesIO(base64.b64decode(item, validate=True)))
            except (binascii.Error, ValueError, OSError, TypeError) as err:
                raise RequestError(400, f"image {i} is not a base64 PNG: {err}") from None
            if img.format != "PNG":
                raise RequestError(422, f"image {i} is {img.format}, not PNG")
            if img.size != (size, size):  # read from the header: nothing is decompressed yet
                raise RequestError(422, f"image {i} is {img.size[0]}x{img.size[1]}; this service takes "
                                        f"{size}x{size} images")
            decoded.append(torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1))
        images = torch.stack(decoded)
    else:
        raise RequestError(400, f"unknown format {fmt!r}: use 'uint8' or 'png'")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise RequestError(422, f"images must be B x 3 x {size} x {size}, got {list(images.shape)}")
    if images.shape[0] < 1:
        raise RequestError(422, "the batch is empty")
    if images.shape[0] > limits.max_batch:
        raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {images.shape[0]}")
    return images


def image_hashes(images: torch.Tensor) -> list[str]:
    """SHA-256 of each image's bytes (uint8 or float, contiguous), what a batch row keeps of its inputs."""
    return [hashlib.sha256(img.contiguous().cpu().numpy().tobytes()).hexdigest() for img in images]
