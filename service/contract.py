"""The HTTP service's wire contract as OpenAPI: every endpoint's request, its answers and its
refusals, with this service's own limits (input size, batch size, outputs) written into the
schema. :func:`service.http.build_app` publishes it at ``/openapi.json`` (and ``/docs``); the
schema fuzzer in ``tests/test_fuzz_service.py`` drives the running server from it; the same
contract in prose is in ``docs/serving.md``.
"""
from __future__ import annotations

from service.wire import NONCE_LIMIT, REQUEST_FIELDS, Limits

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "one sentence: what is wrong and how to fix it"},
        "retry_after": {"type": "number", "minimum": 0, "description": "429: seconds to wait before retrying"},
        "puzzle": {"type": "object", "required": ["challenge", "bits"],
                   "properties": {"challenge": {"type": "string", "pattern": "^[0-9a-f]+$"},
                                  "bits": {"type": "integer", "minimum": 0, "maximum": 256}},
                   "description": "428: the proof of work to solve (see 'proof')"},
    },
}

PROOF = {
    "type": "object", "required": ["challenge", "nonce"], "additionalProperties": False,
    "description": "The answer to a 428's puzzle, sent with the same batch: a nonce such that "
                   "SHA-256(bytes.fromhex(challenge) + nonce as 8 big-endian bytes) starts with at least "
                   "'bits' zero bits (the digest read as a 256-bit big-endian number is below 2**(256 - bits)).",
    "properties": {"challenge": {"type": "string", "pattern": "^[0-9a-f]+$",
                                 "description": "the puzzle's challenge, hex, as received"},
                   "nonce": {"type": "integer", "minimum": 0, "maximum": NONCE_LIMIT - 1}},
}

HEALTH = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}

USAGE = {
    "type": "object", "required": ["account", "used", "requests", "budget", "remaining"],
    "properties": {"account": {"type": "string"}, "used": {"type": "integer", "minimum": 0},
                   "requests": {"type": "integer", "minimum": 0},
                   "budget": {"type": ["integer", "null"], "description": "null: unlimited"},
                   "remaining": {"type": ["integer", "null"], "description": "null: unlimited"}},
}

INFO = {
    "type": "object", "required": ["answers", "out_dim", "outputs", "input_size"],
    "properties": {"answers": {"type": "string", "description": "the default output"},
                   "out_dim": {"type": "integer", "minimum": 1},
                   "outputs": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1},
                               "description": "the outputs this account may ask for, and their sizes"},
                   "input_size": {"type": "integer", "minimum": 1},
                   "max_batch": {"type": "integer", "minimum": 1}},
}

IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A token the client picks for one batch (1 to 255 printable ASCII characters, no spaces). "
                   "The final answer to it (200, or a 402 or 403 refusal) is kept for a day with the SHA-256 of "
                   "the request body: a retry with the same key and the same body gets that answer again "
                   "(header Idempotent-Replayed: true) and is not charged again; the same key with another "
                   "body is refused with 422.",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}

STATUSES = {
    400: "malformed: not a JSON object, a field of the wrong JSON type, an unknown field, bad base64, a damaged PNG",
    401: "no API key, or an unknown, expired or revoked one",
    402: "the batch would take the account past its budget (nothing is counted)",
    403: "an output this account may not ask for (head outputs), or a wrong or stale proof of work",
    413: "the body is over the size limit, or the batch over the batch limit",
    422: "a well-formed request this service cannot answer: wrong image size or shape, dtype, an output it "
         "does not offer, 'data' of the wrong length, an Idempotency-Key reused for another body",
    428: "a proof of work is required: solve 'puzzle' and send the same batch again with 'proof'",
    429: "over the account's rate limit: wait 'retry_after' seconds",
}


def json_body(schema: dict, description: str) -> dict:
    """An OpenAPI response: ``description`` and a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def embeddings_request(size: int, limits: Limits, outputs: list[str]) -> dict:
    """The ``POST /v1/embeddings`` body: a uint8 batch or a list of PNG files, this service's limits."""
    common = {"output": {"type": "string", "enum": list(outputs),
                         "description": f"which output to answer (default {outputs[0]!r})"},
              "proof": PROOF}
    uint8 = {
        "title": "uint8 batch", "type": "object", "required": ["shape", "data"], "additionalProperties": False,
        "properties": {
            "format": {"type": "string", "enum": ["uint8"], "description": "the default"},
            "dtype": {"type": "string", "enum": ["uint8"]},
            "shape": {"type": "array", "minItems": 4, "maxItems": 4,
                      "prefixItems": [{"type": "integer", "minimum": 1, "maximum": limits.max_batch},
                                      {"type": "integer", "enum": [3]},
                                      {"type": "integer", "enum": [size]}, {"type": "integer", "enum": [size]}],
                      "items": {"type": "integer"},
                      "description": f"[B, 3, {size}, {size}]: JSON integers written without a fraction "
                                     f"(1.0, true and \"1\" are refused)"},
            "data": {"type": "string", "contentEncoding": "base64",
                     "description": f"base64 (standard alphabet, padded) of exactly B*3*{size}*{size} bytes, "
                                    f"the images in C order (image, channel, row, column), 0-255"},
            **common}}
    png = {
        "title": "PNG batch", "type": "object", "required": ["format", "images"], "additionalProperties": False,
        "properties": {
            "format": {"type": "string", "enum": ["png"]},
            "images": {"type": "array", "minItems": 1, "maxItems": limits.max_batch,
                       "items": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png",
                                 "description": f"a whole PNG file of {size}x{size} pixels (any PNG colour "
                                                f"type; read as RGB), base64"}},
            **common}}
    assert set(uint8["properties"]) | set(png["properties"]) == set(REQUEST_FIELDS)
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": [uint8, png]}}},
            "description": f"At most {limits.max_body_bytes} bytes and {limits.max_batch} images; every image "
                           f"is one query."}


def embeddings_responses() -> dict:
    answer = {
        "type": "object", "required": ["shape", "dtype", "data", "output", "used", "remaining"],
        "properties": {
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2,
                      "description": "[B, D]"},
            "dtype": {"type": "string", "enum": ["float32"]},
            "data": {"type": "string", "contentEncoding": "base64",
                     "description": "base64 of the B x D answers as little-endian float32, row by row"},
            "output": {"type": "string"},
            "used": {"type": "integer", "minimum": 0}, "remaining": {"type": ["integer", "null"]}}}
    out = {200: json_body(answer, "the answers; the batch is in the ledger before they leave")}
    out.update({code: json_body(ERROR, text) for code, text in STATUSES.items()})
    return out


def auth_responses() -> dict:
    return {401: json_body(ERROR, STATUSES[401])}


def add_security(schema: dict) -> dict:
    """The bearer-key scheme, required by every endpoint under ``/v1``."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer",
                       "description": "Authorization: Bearer <key>; keys come from `serve.py accounts create`"}}
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"bearerAuth": []}]
    return schema
