"""The wire format shared by the HTTP service (:mod:`service.http`) and the attacker's client
(:class:`attacks.client.HTTPConnection`): arrays as base64 of their raw bytes, images as raw
uint8 arrays or PNG files, and the request limits checked before anything is decoded.

Every field is checked for its exact JSON type (``shape`` holds integers: ``1.9``, ``true`` and
``"1"`` are refused, not rounded), sizes are checked before anything is decoded (a PNG's width and
height are read from its header bytes, before PIL sees the file, so a decompression bomb is never
opened), and every refusal is a :class:`RequestError`: a 4xx status and one sentence that quotes no
object of this process. The full contract, field by field, is in ``docs/serving.md``.

This module imports no web framework, so the client side needs only the standard library and torch.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from dataclasses import dataclass

import numpy as np
import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUEST_FIELDS = ("format", "shape", "dtype", "data", "images", "output", "proof")  # of POST /v1/embeddings
NONCE_LIMIT = 2 ** 64  # a proof's nonce travels as 8 big-endian bytes
MAX_DIM = 2 ** 31 - 1  # one dimension of a wire array


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""
    max_body_bytes: int = 32 * 2 ** 20
    max_batch: int = 256


class RequestError(Exception):
    """A refused request: its HTTP status and one sentence."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, scrub(message), extra


def scrub(text: str) -> str:
    """``text`` without memory addresses (``<_io.BytesIO object at 0x7f...>``): an error sentence
    tells the client what is wrong with its request, nothing about this process."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def show(value, limit: int = 40) -> str:
    """A short, safe description of a JSON value a client sent, for an error sentence."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = json.dumps(value)
        return text if len(text) <= limit else text[:limit] + "..."
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def is_int(value) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``true`` is not 1 on this wire)."""
    return type(value) is int


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object, or a 400: not UTF-8 JSON, nested too deeply for a
    parser (a body of 100,000 ``[``), a number too long to convert, or not an object."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestError(400, "the body is JSON nested too deeply; a request is one flat object "
                                "(see docs/serving.md)") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"the body is not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (UnicodeDecodeError, ValueError) as err:  # e.g. an integer of more than 4,300 digits
        raise RequestError(400, f"the body is not valid JSON: {str(err).splitlines()[0][:120]}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object")
    return payload


def encode_array(x: torch.Tensor) -> dict:
    """The wire form of a tensor: shape, dtype and base64 of its raw bytes (little-endian)."""
    arr = x.detach().cpu().contiguous().numpy()
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "data": base64.b64encode(arr.tobytes()).decode()}


def decode_array(payload: dict, dtype: str) -> torch.Tensor:
    """The tensor of a wire array (``shape``: a list of non-negative JSON integers, ``data``: base64
    of exactly that many ``dtype`` values), or a :class:`RequestError`."""
    shape, data = payload.get("shape"), payload.get("data")
    if not isinstance(shape, list) or not all(is_int(s) and s >= 0 for s in shape):
        raise RequestError(422 if isinstance(shape, list) else 400,
                           f"'shape' must be a list of non-negative integers, got {show(shape)}"
                           + (f" holding {', '.join(sorted({show(s, 12) for s in shape if not is_int(s)}))}"
                              if isinstance(shape, list) and not all(is_int(s) for s in shape) else ""))
    if len(shape) > 8 or any(s > MAX_DIM for s in shape):  # numpy refuses these even when the product is 0
        raise RequestError(422, f"'shape' has at most 8 dimensions of at most {MAX_DIM} each")
    if not isinstance(data, str):
        raise RequestError(400, f"'data' must be a base64 string, got {show(data)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'data' is not valid base64 (standard alphabet, with padding)") from None
    itemsize = np.dtype(dtype).itemsize
    count = 1
    for s in shape:  # in Python integers: a product that overflows int64 is simply too large
        count *= s
    if len(raw) != count * itemsize:
        raise RequestError(422, f"'data' holds {len(raw)} bytes but shape {shape} of {dtype} needs "
                                f"{count * itemsize}")
    try:
        return torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())
    except ValueError:  # e.g. [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]: no bytes, but numpy cannot index it
        raise RequestError(422, f"'shape' {shape} is too large to hold as an array") from None


def png_size(raw: bytes):
    """``(width, height)`` from a PNG's signature and IHDR chunk (bytes 8-24), or ``None`` when the
    bytes do not start like a PNG file. Nothing is decompressed."""
    if len(raw) < 24 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def decode_png(item, i: int, size: int) -> torch.Tensor:
    """One base64 PNG of ``size x size`` as a ``3 x size x size`` uint8 tensor, or a :class:`RequestError`."""
    if not isinstance(item, str):
        raise RequestError(400, f"image {i} is {show(item)}, not a base64 PNG string")
    try:
        raw = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"image {i} is not a base64 PNG: not valid base64") from None
    dims = png_size(raw)
    if dims is None:
        raise RequestError(400, f"image {i} is not a base64 PNG: its bytes do not start with the PNG "
                                f"signature and header")
    if dims != (size, size):  # from the header bytes: PIL never opens a wrong-sized (or bomb-sized) file
        raise RequestError(422, f"image {i} is {dims[0]}x{dims[1]}; this service takes {size}x{size} images")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            img.load()  # decodes now: a truncated or corrupt file fails here, not later
            rgb = np.asarray(img.convert("RGB"))
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... for damaged files
        raise RequestError(400, f"image {i} is a damaged PNG (truncated or corrupt); send the whole "
                                f"file") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def decode_images(body: dict, size: int, limits: Limits) -> torch.Tensor:
    """The ``B x 3 x size x size`` uint8 batch of a request body, or a :class:`RequestError`."""
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(show(k, 24) for k in unknown[:3])}; a request "
                                f"has {', '.join(REQUEST_FIELDS)}")
    fmt = body.get("format", "uint8")
    if fmt == "uint8":
        if body.get("dtype", "uint8") != "uint8":
            raise RequestError(422, f"images must be uint8, got dtype {show(body.get('dtype'))}")
        if "images" in body:
            raise RequestError(400, "'images' belongs to format 'png'; format 'uint8' sends 'shape' and 'data'")
        shape = body.get("shape")
        if isinstance(shape, list) and shape and is_int(shape[0]) and shape[0] > limits.max_batch:
            raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {shape[0]}")
        if isinstance(shape, list) and len(shape) == 4 and all(is_int(s) for s in shape) \
                and (shape[1] != 3 or shape[2:] != [size, size]):
            raise RequestError(422, f"images must be B x 3 x {size} x {size}, got {shape}")
        images = decode_array(body, "uint8")
    elif fmt == "png":
        extra = sorted({"shape", "dtype", "data"} & set(body))
        if extra:
            raise RequestError(400, f"format 'png' sends 'images' only, not {', '.join(extra)}")
        items = body.get("images")
        if not isinstance(items, list) or not items:
            raise RequestError(400, "format 'png' needs 'images': a non-empty list of base64 PNG files")
        if len(items) > limits.max_batch:
            raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {len(items)}")
        images = torch.stack([decode_png(item, i, size) for i, item in enumerate(items)])
    else:
        raise RequestError(400, f"unknown format {show(fmt)}: use 'uint8' or 'png'")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise RequestError(422, f"images must be B x 3 x {size} x {size}, got {list(images.shape)}")
    if images.shape[0] < 1:
        raise RequestError(422, "the batch is empty")
    if images.shape[0] > limits.max_batch:
        raise RequestError(413, f"a batch holds at most {limits.max_batch} images, got {images.shape[0]}")
    return images


def decode_proof(value):
    """A request's ``proof``: ``None`` or ``{"challenge": <hex string>, "nonce": <integer in [0, 2**64)>}``."""
    if value is None:
        return None
    if not (isinstance(value, dict) and set(value) == {"challenge", "nonce"} and isinstance(value["challenge"], str)
            and is_int(value["nonce"]) and 0 <= value["nonce"] < NONCE_LIMIT):
        raise RequestError(400, "'proof' must be {\"challenge\": <hex string>, \"nonce\": <integer from 0 to "
                                "2**64 - 1>}")
    return value


def image_hashes(images: torch.Tensor) -> list[str]:
    """SHA-256 of each image's bytes (uint8 or float, contiguous), what a batch row keeps of its inputs."""
    return [hashlib.sha256(img.contiguous().cpu().numpy().tobytes()).hexdigest() for img in images]
