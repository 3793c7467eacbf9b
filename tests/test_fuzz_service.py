"""Fuzzing that keeps the service honest (issue 26).

* A schema fuzzer: schemathesis reads the running ``serve.py``'s own ``/openapi.json`` and
  generates requests for every operation, valid by the schema (positive) and not (negative),
  through two accounts (one unlimited, one with a budget of 5); plus bodies built to be
  answerable (right shape and length, random pixels or real PNGs). For every request: no 5xx,
  the response matches the schema (status, content type, body), and ``/v1/usage`` moves by
  exactly the batch size on a 200 and not at all on a refusal. Bounded: about 400 requests.
* Property tests (hypothesis) of the decoders: any JSON value as a body, any bytes as a PNG,
  any shape and data give a batch of the right shape or a 4xx :class:`RequestError`, never
  another exception; a batch round-trips exactly.
* Property tests of the ledger's budget arithmetic: any sequence of batches, some repeated under
  the same ``Idempotency-Key``, charges exactly the accepted ones, never past the budget.
"""
import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import tiny_server

from service.ledger import Ledger, Replay
from service.wire import Limits, RequestError, decode_array, decode_images, decode_png, parse_json
from utils import QueryBudgetExceeded

schemathesis = pytest.importorskip("schemathesis")

SIZE, MAX_BATCH = 8, 64  # the test server's input size and --max-batch (serving_helpers.start_server)
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)


def fuzz(examples: int) -> settings:
    """Bounded and repeatable: ``examples`` cases drawn from a fixed seed, nothing saved between runs."""
    return settings(FUZZ, max_examples=examples)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("fuzz"), {
            "rich": [], "poor": ["--budget", "5"], "head": ["--head-access"]}) as s:
        yield {**s, "schema": schemathesis.openapi.from_url(s["url"] + "/openapi.json")}


def _usage(served, account):
    return Ledger(served["ledger"]).usage(account)


def _check(served, case, account):
    """Send ``case`` as ``account``; no 5xx, the schema holds, and the bill moves only on a 200."""
    before = _usage(served, account)
    response = case.call(headers={"Authorization": f"Bearer {served['keys'][account]}"})
    assert response.status_code < 500, (response.status_code, response.text[:300])
    case.validate_response(response, excluded_checks=[schemathesis.checks.positive_data_acceptance])
    after = _usage(served, account)
    if case.operation.path == "/v1/embeddings" and response.status_code == 200:
        n = response.json()["shape"][0]
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        assert after["used"] == before["used"] + (0 if replayed else n)
    else:
        assert after == before, (response.status_code, response.text[:200])
    return response.status_code


@pytest.mark.parametrize("path, method, mode", [  # /healthz takes no input: nothing to make invalid
    ("/healthz", "GET", "positive"), *((path, method, mode) for path, method in [
        ("/v1/info", "GET"), ("/v1/usage", "GET"), ("/v1/embeddings", "POST")] for mode in ("positive", "negative"))])
def test_the_schema_fuzzer_finds_no_5xx_no_schema_break_and_no_charge_on_refusal(served, path, method, mode):
    operation = served["schema"][path][method]
    seen = []
    examples = 60 if path == "/v1/embeddings" else 15

    @fuzz(examples)
    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)),
           account=st.sampled_from(["rich", "poor"]))
    def run(case, account):
        seen.append(_check(served, case, account))

    run()
    print(f"{mode} {method} {path}: statuses {sorted(seen)}")
    assert seen  # an operation without inputs has few distinct cases: hypothesis stops early
    if path == "/v1/embeddings":
        assert len(seen) >= examples // 2 and any(s >= 400 for s in seen)


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@st.composite
def answerable_bodies(draw):
    """Bodies of the right shape and length (so the service answers them, budget allowing),
    with random pixels, an output, and sometimes a key; or the same batch as PNG files."""
    n = draw(st.integers(1, 6))  # the poor account (budget 5) cannot pay for 6
    pixels = draw(st.binary(min_size=n * 3 * SIZE * SIZE, max_size=n * 3 * SIZE * SIZE))
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(n, 3, SIZE, SIZE)
    if draw(st.booleans()):
        body = {"format": "uint8", "shape": [n, 3, SIZE, SIZE], "data": base64.b64encode(pixels).decode()}
    else:
        body = {"format": "png", "images": [_png(img.transpose(1, 2, 0)) for img in x]}
    output = draw(st.sampled_from([None, "representation", "head", "representation+head"]))
    if output is not None:
        body["output"] = output
    return body


def test_answerable_bodies_are_billed_exactly_and_replayed_for_free(served):
    operation = served["schema"]["/v1/embeddings"]["POST"]
    seen = []

    @fuzz(60)
    @given(body=answerable_bodies(), account=st.sampled_from(["rich", "poor", "head"]),
           key=st.sampled_from([None, "k1", "k2", "k3"]))
    def run(body, account, key):
        headers = {"Idempotency-Key": f"{account}-{key}"} if key else {}
        case = operation.Case(body=body, headers=headers, media_type="application/json")
        seen.append(_check(served, case, account))

    run()
    # answered, refused for the budget, refused a head output, and a key reused for another body
    assert {200, 402, 403, 422} <= set(seen), sorted(set(seen))


# ---------------------------------------------------------------------------- the decoders

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=5), max_leaves=20)
FIELDS = st.sampled_from(["format", "shape", "dtype", "data", "images", "output", "proof", "other"])
VALUES = JSON | st.sampled_from(["uint8", "png", "float32"]) | st.lists(st.integers(-2, 70), max_size=5) \
    | st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())


def _is_batch(x) -> bool:
    return (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4
            and 1 <= x.shape[0] <= MAX_BATCH and tuple(x.shape[1:]) == (3, SIZE, SIZE))


@fuzz(400)
@given(body=st.dictionaries(FIELDS, VALUES, max_size=5))
def test_any_json_body_is_a_batch_or_a_4xx(body):
    try:
        assert _is_batch(decode_images(body, SIZE, Limits(max_batch=MAX_BATCH)))
    except RequestError as err:
        assert 400 <= err.status < 500 and err.message and " at 0x" not in err.message


@fuzz(300)
@given(shape=st.lists(st.integers(-5, 10 ** 30) | st.sampled_from([3, SIZE]), max_size=5),
       data=st.binary(max_size=800))
def test_any_shape_and_data_decode_exactly_or_get_a_4xx(shape, data):
    payload = {"shape": shape, "data": base64.b64encode(data).decode()}
    try:
        x = decode_array(payload, "uint8")
    except RequestError as err:
        assert 400 <= err.status < 500
        return
    assert list(x.shape) == shape and x.numpy().tobytes() == data  # decoded exactly when accepted


@fuzz(300)
@given(raw=st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
def test_any_bytes_as_a_png_are_an_image_or_a_4xx(raw):
    try:
        x = decode_png(base64.b64encode(raw).decode(), 0, SIZE)
    except RequestError as err:
        assert 400 <= err.status < 500 and " at 0x" not in err.message
        return
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.uint8


@fuzz(300)
@given(body=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_as_a_body_parse_to_an_object_or_a_400(body):
    try:
        assert isinstance(parse_json(body), dict)
    except RequestError as err:
        assert err.status == 400


@fuzz(50)
@given(n=st.integers(1, 6), seed=st.integers(0, 2 ** 16), fmt=st.sampled_from(["uint8", "png"]))
def test_a_batch_round_trips_exactly(n, seed, fmt):
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    if fmt == "uint8":
        body = {"shape": list(x.shape), "data": base64.b64encode(x.numpy().tobytes()).decode()}
    else:
        body = {"format": "png", "images": [_png(img.permute(1, 2, 0).numpy()) for img in x]}
    assert torch.equal(decode_images(body, SIZE, Limits(max_batch=MAX_BATCH)), x)


# ---------------------------------------------------------------------------- the ledger's arithmetic

@fuzz(100)
@given(budget=st.none() | st.integers(0, 30),
       batches=st.lists(st.tuples(st.integers(1, 9), st.none() | st.sampled_from(["a", "b", "c"])), max_size=12))
def test_the_ledger_charges_exactly_the_accepted_batches(budget, batches):
    ledger = Ledger("sqlite:///:memory:")
    ledger.create_account("x", budget=budget)
    used, answered = 0, {}
    for count, key in batches:
        idempotent = None if key is None else (key, f"request-{count}", {"shape": [count, 1]})
        try:
            after = ledger.record("x", count, ["h"] * count, idempotent=idempotent)
        except QueryBudgetExceeded:
            assert budget is not None and used + count > budget and (key is None or key not in answered)
            continue
        except Replay as replay:  # a key answered before: its answer, nothing charged
            assert key in answered and replay.recorded.response == answered[key]
            continue
        assert key is None or key not in answered
        used += count
        assert after.used == used and (budget is None or used <= budget)
        if key is not None:
            answered[key] = {"shape": [count, 1], "used": used, "remaining": None if budget is None else budget - used}
            assert ledger.recorded("x", key).response == answered[key]
    assert ledger.usage("x")["used"] == ledger.total("x") == used
    assert ledger.usage("x")["requests"] == len(ledger.batches("x"))
