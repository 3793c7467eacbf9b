"""The victim service over HTTP: a FastAPI app around :class:`service.victim.VictimService` and
:class:`service.ledger.Ledger`.

Endpoints (JSON; errors are ``{"error": "<one sentence>"}`` with the status code):

* ``GET /healthz``: ``{"ok": true}``;
* ``GET /v1/info`` (auth): what the service publishes (output dimension, input size and format,
  the model card);
* ``GET /v1/usage`` (auth): the account's queries used and remaining;
* ``POST /v1/embeddings`` (auth): a batch of images, either ``{"format": "uint8", "shape":
  [B, 3, S, S], "data": "<base64 of the raw bytes>"}`` or ``{"format": "png", "images":
  ["<base64 PNG>", ...]}``; answers ``{"shape": [B, D], "dtype": "float32", "data": "<base64>",
  "used": ..., "remaining": ...}`` (raw float32 bytes: the answers arrive bit for bit).

Auth is ``Authorization: Bearer <key>`` (keys from ``serve.py accounts create``, stored
hashed; a revoked key is refused from its next request). A batch is validated first (body size,
batch size, each field's exact JSON type, shape, PNG dimensions from the header bytes before
decoding: no decompression bombs), then answered, then recorded in the ledger in one
transaction with the budget check, and only then sent: a refused request counts nothing, and
an answered one is always in the ledger. Status codes: 400 malformed, 401 key, 402 budget,
403 head output or a wrong proof of work, 413 too large, 422 wrong shape or type, 429 over the
account's rate limit (``retry_after`` seconds in the body and a ``Retry-After`` header), 428 a
proof of work is required (the body carries ``"puzzle": {"challenge", "bits"}``; the client
solves it and sends the batch again with ``"proof": {"challenge", "nonce"}``). No request is
answered with a 5xx unless the service itself is at fault.

A client may send ``Idempotency-Key: <token>`` with a batch: the final answer to it (200, 402 or
403) is kept in the ledger with the SHA-256 of the body, in the same transaction as the batch,
so a retry with the same key (after a lost reply, or a server SIGKILL) gets that answer again
(``Idempotent-Replayed: true``) without being charged twice. The whole contract is published as
OpenAPI at ``/openapi.json`` (:mod:`service.contract`) and in ``docs/serving.md``.
"""

import hashlib
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from service import contract
from service.ledger import AuthError, Ledger, Recorded, Replay
from service.wire import (
    Limits,
    RequestError,
    decode_images,
    decode_proof,
    encode_array,
    image_hashes,
    parse_json,
    scrub,
)
from utils import ProofRequired, QueryBudgetExceeded, UserError

IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")  # printable ASCII, no spaces
FINAL_REFUSALS = (402, 403)  # kept under an Idempotency-Key: a retry gets the same refusal
REPLAYED = {"Idempotent-Replayed": "true"}


@dataclass
class Answer:
    """A 200 answer and its extra headers (a replayed one says so)."""
    body: dict
    headers: dict = field(default_factory=dict)


class Batcher:
    """Dynamic batching: concurrent requests' images go through the backend in one forward pass.

    ``submit(x)`` (from any thread) queues a batch and blocks until its outputs are ready. One
    worker thread takes the first waiting batch plus every batch queued behind it (those that
    arrived while the previous pass ran), waiting up to ``max_wait`` seconds more for others
    (0: no extra wait, so a lone client pays no latency), up to ``max_images`` images; it runs
    ``backend.outputs`` once on all of them and hands each request its rows. ``enabled=False``
    turns batching off: each request is its own forward pass.
    """

    def __init__(self, backend, *, enabled: bool = True, max_wait: float = 0.0, max_images: int = 256):
        self.backend, self.enabled, self.max_wait, self.max_images = backend, enabled, max_wait, max_images
        self.queue: "queue.Queue" = queue.Queue()
        self.forward_passes = 0
        self._direct = threading.Lock()
        if enabled:
            threading.Thread(target=self._work, name="batcher", daemon=True).start()

    def submit(self, x: torch.Tensor) -> dict:
        if not self.enabled:
            with self._direct:
                self.forward_passes += 1
                return self.backend.outputs(x)
        slot = {"x": x, "done": threading.Event()}
        self.queue.put(slot)
        slot["done"].wait()
        if "error" in slot:
            raise slot["error"]
        return slot["outputs"]

    def _work(self) -> None:
        while True:
            group = [self.queue.get()]
            size = group[0]["x"].shape[0]
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_images:
                left = deadline - time.perf_counter()
                try:
                    slot = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                group.append(slot)
                size += slot["x"].shape[0]
            try:
                outputs = self.backend.outputs(torch.cat([slot["x"] for slot in group]))
                self.forward_passes += 1
                start = 0
                for slot in group:
                    n = slot["x"].shape[0]
                    slot["outputs"] = {k: v[start:start + n] for k, v in outputs.items()}
                    start += n
            except Exception as err:  # every waiting request gets the error, the worker lives on
                for slot in group:
                    slot["error"] = err
            for slot in group:
                slot["done"].set()


class Gateway:
    """The HTTP-independent part of the server: authenticate, validate, answer, record. The
    FastAPI app (:func:`build_app`) only moves bytes in and out of it."""

    def __init__(self, service, ledger: Ledger, limits: Optional[Limits] = None, *, batching: bool = True,
                 batch_wait: float = 0.0):
        self.service, self.ledger, self.limits = service, ledger, limits or Limits()
        self.size = int(service.info().get("input_size") or 0)
        self.batcher = Batcher(service.backend, enabled=batching, max_wait=batch_wait,
                               max_images=max(limits.max_batch, 256))
        self._lock = threading.Lock()  # the defenses' per-account state: one request at a time
        self._restored: set[str] = set()  # accounts whose defense state was read back from the ledger
        self._buckets: dict[str, list[float]] = {}  # account -> [tokens, last refill time]
        self._bucket_lock = threading.Lock()

    def throttle(self, account) -> None:
        """The account's rate limit (requests per second, a token bucket holding one second's worth):
        a request over it is refused with 429 before anything is decoded or counted."""
        if account.rate_limit is None:
            return
        rate, now = float(account.rate_limit), time.monotonic()
        with self._bucket_lock:
            tokens, last = self._buckets.get(account.name, [max(1.0, rate), now])
            tokens = min(max(1.0, rate), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[account.name] = [tokens, now]
                wait = (1.0 - tokens) / rate
                raise RequestError(429, f"account {account.name!r} is limited to {rate:g} requests per second; "
                                        f"retry in {wait:.2f} s", retry_after=round(wait, 3),
                                   headers={"Retry-After": str(max(1, round(wait + 0.5)))})
            self._buckets[account.name] = [tokens - 1.0, now]

    def account(self, authorization: Optional[str]):
        scheme, _, key = (authorization or "").partition(" ")
        try:
            return self.ledger.authenticate(key.strip() if scheme.lower() == "bearer" else None)
        except AuthError as err:
            raise RequestError(401, str(err)) from None

    @staticmethod
    def is_head(output: str) -> bool:
        """Outputs of the projection head are sold only to accounts with head access."""
        return "head" in output.split("+")

    def info(self, authorization: Optional[str]) -> dict:
        account = self.account(authorization)
        info = self.service.info()
        info["outputs"] = {name: dim for name, dim in info["outputs"].items()
                           if account.head_access or not self.is_head(name)}
        return info

    def usage(self, authorization: Optional[str]) -> dict:
        return self.ledger.usage(self.account(authorization).name)

    # ------------------------------------------------------------------ defense state

    def _restore(self, name: str) -> None:
        """An account's defense state as the ledger left it (after a restart), once per process."""
        if name in self._restored:
            return
        state = self.service.account(name).state
        for defense in self.service.defenses:
            scalars, histories = self.ledger.load_state(name, defense.name), self.ledger.load_rows(name, defense.name)
            state.pop(defense.name, None)
            if scalars or histories:
                defense.restore(state.setdefault(defense.name, {}), scalars, histories)
        self._restored.add(name)

    def _forget(self, name: str) -> None:
        """Drop an account's in-memory defense state: the next request reloads it from the ledger."""
        self._restored.discard(name)
        self.service.account(name).state.clear()

    def _snapshot(self, name: str) -> dict:
        state = self.service.account(name).state
        return {defense.name: defense.snapshot(state.get(defense.name, {})) for defense in self.service.defenses}

    # ------------------------------------------------------------------ answering

    def embeddings(self, authorization: Optional[str], body: bytes,
                   idempotency_key: Optional[str] = None) -> Answer:
        """Answer one batch (see the module docstring); with ``idempotency_key``, a batch answered
        (or finally refused) before under that key gets the same answer again, uncharged."""
        account = self.account(authorization)
        self.throttle(account)
        if len(body) > self.limits.max_body_bytes:
            raise RequestError(413, f"the body is {len(body)} bytes; the limit is {self.limits.max_body_bytes}")
        if idempotency_key is None:
            return Answer(self._answer(account, body, None))
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise RequestError(400, "the Idempotency-Key header must be 1 to 255 printable ASCII characters "
                                    "without spaces")
        request = hashlib.sha256(body).hexdigest()
        earlier = self.ledger.recorded(account.name, idempotency_key)
        if earlier is not None:
            return self._replay(earlier, request)
        try:
            return Answer(self._answer(account, body, (idempotency_key, request)))
        except Replay as replay:  # a concurrent request with this key was recorded first
            return self._replay(replay.recorded, request)
        except RequestError as err:
            if err.status in FINAL_REFUSALS:
                self.ledger.remember(account.name, idempotency_key, request, err.status,
                                     {"error": err.message, **err.extra})
            raise

    @staticmethod
    def _replay(earlier: Recorded, request: str) -> Answer:
        if earlier.request != request:
            raise RequestError(422, "this Idempotency-Key was sent before with a different body; use a new key "
                                    "for a new batch")
        if earlier.status == 200:
            return Answer(earlier.response, dict(REPLAYED))
        extra = {k: v for k, v in earlier.response.items() if k != "error"}
        raise RequestError(earlier.status, earlier.response.get("error", "refused"), headers=dict(REPLAYED), **extra)

    def _answer(self, account, body: bytes, idempotent: Optional[tuple]) -> dict:
        payload = parse_json(body)
        output = payload.get("output")
        if output is not None and not isinstance(output, str):
            raise RequestError(400, "'output' must be the name of an output (see /v1/info's 'outputs')")
        try:
            output = self.service.output_name(output)
        except UserError as err:
            raise RequestError(422, str(err)[:300]) from None
        if self.is_head(output) and not account.head_access:
            raise RequestError(403, f"account {account.name!r} has no head access, so it cannot ask for "
                                    f"{output!r}; ask the service's admin for an account with head access")
        images = decode_images(payload, self.size, self.limits)
        proof = decode_proof(payload.get("proof"))
        n = images.shape[0]
        if account.budget is not None and account.used + n > account.budget:
            raise RequestError(402, f"account {account.name!r}: {n} queries would exceed its budget of "
                                    f"{account.budget} ({account.used} used)")
        with self._lock:
            self._restore(account.name)
            try:
                x = self.service.admit(account.name, images, proof)
            except ProofRequired as request:  # 428 with the puzzle; solved and sent again with "proof"
                for defense, (scalars, _) in self._snapshot(account.name).items():
                    self.ledger.save_state(account.name, defense, scalars)  # the puzzle outlives a restart
                raise RequestError(428, "proof of work required: send the batch again with 'proof'",
                                   puzzle={"challenge": request.puzzle.challenge,
                                           "bits": request.puzzle.bits}) from None
            except UserError as err:  # a wrong or stale proof
                raise RequestError(403, f"proof of work refused: {err}") from None
        outputs = self.batcher.submit(x)  # gathered with other requests into one forward pass
        with self._lock:  # the defenses' state and the ledger change together, one request at a time
            now = self.ledger.account(account.name)
            if now.budget is not None and now.used + n > now.budget:  # before any state changes
                raise RequestError(402, f"account {account.name!r}: {n} queries would exceed its budget of "
                                        f"{now.budget} ({now.used} used)")
            before = {name: {key: rows.shape[0] for key, rows in histories.items()}
                      for name, (_, histories) in self._snapshot(account.name).items()}
            try:
                answers = self.service.finish(account.name, x, outputs, output)
                state = self.service.account(account.name).state
                snapshot = self._snapshot(account.name)
                rows = {(name, key): tensor[before[name].get(key, 0):]
                        for name, (_, histories) in snapshot.items() for key, tensor in histories.items()}
                decisions = {d.name: d.decision(state.get(d.name, {})) for d in self.service.defenses}
                reply = {**encode_array(answers.float()), "output": output}
                # recorded (with the budget checked again, atomically) before the answers leave
                after = self.ledger.record(account.name, n, image_hashes(images), decisions,
                                           states={name: scalars for name, (scalars, _) in snapshot.items()},
                                           rows=rows, idempotent=None if idempotent is None else (*idempotent, reply))
            except QueryBudgetExceeded as err:  # another server process on this ledger spent it first
                self._forget(account.name)
                raise RequestError(402, str(err)) from None
            except BaseException:
                self._forget(account.name)  # nothing was recorded: the ledger's state is the truth
                raise
        return {**reply, "used": after.used, "remaining": after.remaining}


def build_app(gateway: Gateway):
    """The FastAPI app over ``gateway``, its OpenAPI schema written from :mod:`service.contract`
    with this service's limits."""
    from fastapi import FastAPI, Request
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse

    app = FastAPI(title="sslsteal victim service", description=__doc__)
    outputs = list(gateway.service.outputs)

    def guarded(fn, *args):
        try:
            answer = fn(*args)
            if isinstance(answer, Answer):
                return JSONResponse(answer.body, headers=answer.headers)
            return JSONResponse(answer)
        except RequestError as err:
            headers = err.extra.pop("headers", None)
            return JSONResponse({"error": err.message, **err.extra}, status_code=err.status, headers=headers)
        except Exception as err:  # a fault of the service, not of the request: nothing was recorded
            return JSONResponse({"error": scrub(f"internal error ({type(err).__name__}): {err}")[:500]},
                                status_code=500)

    @app.get("/healthz", responses={200: contract.json_body(contract.HEALTH, "the process is up")})
    def healthz():
        return {"ok": True}

    @app.get("/v1/info", responses={200: contract.json_body(contract.INFO, "what the service publishes to this "
                                                                          "account"), **contract.auth_responses()})
    def info(request: Request):
        return guarded(gateway.info, request.headers.get("authorization"))

    @app.get("/v1/usage", responses={200: contract.json_body(contract.USAGE, "the account's queries"),
                                     **contract.auth_responses()})
    def usage(request: Request):
        return guarded(gateway.usage, request.headers.get("authorization"))

    @app.post("/v1/embeddings", responses=contract.embeddings_responses(),
              openapi_extra={"requestBody": contract.embeddings_request(gateway.size, gateway.limits, outputs),
                             "parameters": [contract.IDEMPOTENCY_HEADER]})
    async def embeddings(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > gateway.limits.max_body_bytes:
            return JSONResponse({"error": f"the body is {declared} bytes; the limit is "
                                          f"{gateway.limits.max_body_bytes}"}, status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds a body sent without Content-Length
            size += len(chunk)
            if size > gateway.limits.max_body_bytes:
                return JSONResponse({"error": f"the body is over the limit of {gateway.limits.max_body_bytes} "
                                              f"bytes"}, status_code=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(guarded, gateway.embeddings, request.headers.get("authorization"), body,
                                       request.headers.get("idempotency-key"))

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = contract.add_security(get_openapi(
                title=app.title, version="1", description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi
    return app
