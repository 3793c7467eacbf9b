"""serve.py for real: the server runs in its own process on a free local port (no mock of the HTTP
layer); answers equal the in-process service's bit for bit, budgets end exactly, bad keys and
bad input are refused with the right status and count nothing, and concurrent clients never
take an account past its budget."""
import base64
import io
import json
import os
import threading
import time

import pytest
import torch
from serving_helpers import post, start_server, tiny_server

import serve
from attacks.client import HTTPConnection, QueryClient
from service.ledger import Ledger
from service.victim import build_service, load_victim
from utils import QueryBudgetExceeded, UserError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("serve"), {
            "alice": ["--budget", "50"], "bob": [], "crowd": ["--budget", "1000"]}) as served:
        yield served


def images(n, seed=0, size=8):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_answers_over_http_equal_the_in_process_service(server):
    http = HTTPConnection(server["url"], server["keys"]["bob"])
    local = build_service(load_victim(str(server["victim"]))).connect("x")
    assert http.out_dim == local.out_dim and http.info["input_size"] == 8
    x = images(20)
    assert torch.equal(http.answer(x), local.answer(x))  # bit for bit
    assert torch.equal(http.answer(x.float() / 255), local.answer(x))  # floats travel as their uint8 values
    # through the attacker's query client: counted and cached the same way
    client = QueryClient(http, budget=30)
    client.query(x, keys=list(range(20)))
    client.query(x, keys=list(range(20)))
    assert client.queries_used == 20 and http.requests == 1 + 2 + 1  # info, two answers, one client call


def test_budget_ends_exactly_and_refusals_count_nothing(server):
    key = server["keys"]["alice"]
    http = HTTPConnection(server["url"], key)
    assert http.usage()["remaining"] == 50
    http.answer(images(30))
    http.answer(images(20, seed=1))
    assert http.usage() == {"account": "alice", "used": 50, "requests": 2, "budget": 50, "remaining": 0}
    with pytest.raises(QueryBudgetExceeded, match="budget of 50"):
        http.answer(images(1))
    ledger = Ledger(server["ledger"])
    assert ledger.total("alice") == 50 and len(ledger.batches("alice")) == 2


def _png(img: torch.Tensor) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_keys_and_bad_input_get_a_status_and_one_sentence(server):
    url, key = server["url"], server["keys"]["bob"]
    before = Ledger(server["ledger"]).usage("bob")["used"]
    good = {"format": "uint8", "shape": [2, 3, 8, 8], "data": base64.b64encode(images(2).numpy().tobytes()).decode()}
    cases = [
        (json.dumps(good).encode(), None, 401, "API key"),
        (json.dumps(good).encode(), "sk-not-a-key", 401, "unknown API key"),
        (b"{not json", key, 400, "not JSON"),
        (json.dumps({**good, "shape": [2, 3, 16, 16]}).encode(), key, 422, "B x 3 x 8 x 8"),
        (json.dumps({**good, "shape": [4, 3, 8, 8]}).encode(), key, 422, "needs 768"),
        (json.dumps({**good, "shape": [4, 3, 8, 4]}).encode(), key, 422, "B x 3 x 8 x 8"),
        (json.dumps({**good, "dtype": "float32"}).encode(), key, 422, "uint8"),
        (json.dumps({**good, "shape": [65, 3, 8, 8]}).encode(), key, 413, "at most 64"),
        (json.dumps({"format": "png", "images": [_png(images(1, size=9)[0])]}).encode(), key, 422, "9x9"),
        (json.dumps({"format": "png", "images": ["bm90IGEgcG5n"]}).encode(), key, 400, "not a base64 PNG"),
        (json.dumps({"format": "gif"}).encode(), key, 400, "unknown format"),
    ]
    for body, k, status, words in cases:
        code, reply = post(url, body, k)
        assert code == status and words in reply["error"], (status, reply)
    # a body over the limit (0.5 MiB here) is refused from its declared length, before it is read
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("POST", "/v1/embeddings")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Length", str(600 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    assert Ledger(server["ledger"]).usage("bob")["used"] == before  # nothing counted
    code, reply = post(url, json.dumps({"format": "png", "images": [_png(i) for i in images(3)]}).encode(), key)
    assert code == 200 and reply["shape"][0] == 3  # PNGs of the right size are answered
    with pytest.raises(UserError, match="cannot reach"):
        HTTPConnection("http://127.0.0.1:9", key, retries=0)


def test_concurrent_clients_never_pass_the_budget(server):
    """8 clients x 200 requests of 1-3 images on one account with a budget of 1,000."""
    key, granted, lock = server["keys"]["crowd"], [], threading.Lock()

    def client(seed):
        http = HTTPConnection(server["url"], key, retries=3, backoff=0.05)
        gen = torch.Generator().manual_seed(seed)
        got = 0
        for _ in range(200):
            n = int(torch.randint(1, 4, (1,), generator=gen))
            try:
                got += http.answer(images(n, seed=seed)).shape[0]
            except QueryBudgetExceeded:
                pass
        with lock:
            granted.append(got)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = Ledger(server["ledger"])
    assert sum(granted) == ledger.total("crowd") == ledger.usage("crowd")["used"] and 997 < sum(granted) <= 1000


def test_a_copy_stolen_over_http_equals_one_stolen_in_process(server, tmp_path):
    import steal
    from models import load_checkpoint

    flags = ["--losstype", "mse", "--num_queries", "64", "--epochs", "2", "-b", "32", "--device", "cpu",
             "--seed", "3"]
    before = Ledger(server["ledger"]).usage("bob")["used"]
    over_http = steal.main(["--victim-url", server["url"], "--api-key", server["keys"]["bob"],
                            "--logdir", str(tmp_path / "http"), *flags])
    assert Ledger(server["ledger"]).usage("bob")["used"] == before + 64  # each query paid once over 2 epochs
    in_process = steal.main(["--victim-checkpoint", str(server["victim"]), "--logdir", str(tmp_path / "local"),
                             *flags])
    a, b = load_checkpoint(over_http), load_checkpoint(in_process)
    assert a["encoder"]["state_dict"].keys() == b["encoder"]["state_dict"].keys()
    for name, tensor in a["encoder"]["state_dict"].items():
        assert torch.equal(tensor, b["encoder"]["state_dict"][name]), name
    with pytest.raises(UserError, match="needs --api-key"):
        steal.main(["--victim-url", server["url"], "--logdir", str(tmp_path / "x"), *flags])


def test_sigkill_mid_load_then_restart_loses_no_answered_query(server, tmp_path):
    """8 clients load a fresh server; it is SIGKILLed mid-load and restarted on the same ledger:
    every answer a client received is in the ledger, no batch is counted twice, and the server
    carries on from the ledger's counts."""
    import signal

    ledger = str(tmp_path / "ledger.db")
    key = serve.main(["accounts", "create", "load", "--ledger", ledger])
    proc, url = start_server(server["victim"], ledger)
    received, stop, lock = [], threading.Event(), threading.Lock()

    def client(seed):
        http = HTTPConnection(url, key, retries=0)
        got = 0
        while not stop.is_set():
            try:
                got += http.answer(images(2, seed=seed)).shape[0]
            except UserError:  # the server is gone
                break
        with lock:
            received.append(got)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while Ledger(ledger).total("load") < 200 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    book = Ledger(ledger)
    total, usage = book.total("load"), book.usage("load")
    assert sum(received) <= total <= sum(received) + 8 * 2  # at most one unanswered batch per client in flight
    assert total == usage["used"] == 2 * usage["requests"] == 2 * len(book.batches("load"))
    proc, url = start_server(server["victim"], ledger)
    try:
        http = HTTPConnection(url, key)
        http.answer(images(2))
        assert http.usage()["used"] == total + 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_batcher_gathers_concurrent_requests_into_one_forward_pass(server):
    from service.http import Batcher

    backend = build_service(load_victim(str(server["victim"]))).backend
    batcher = Batcher(backend, max_wait=0.2, max_images=64)  # a long window, so all 8 meet
    xs = [images(n, seed=s).float() / 255 for s, n in enumerate((1, 2, 3, 1, 2, 3, 1, 2))]
    results = [None] * len(xs)

    def ask(i):
        results[i] = batcher.submit(xs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batcher.forward_passes < len(xs)  # gathered (8 requests inside the 0.2 s window)
    for x, out in zip(xs, results):  # each request gets its own rows
        alone = backend.outputs(x)["representation"]
        assert out["representation"].shape == alone.shape
        assert torch.allclose(out["representation"], alone, atol=1e-5)
    direct = Batcher(backend, enabled=False)
    assert torch.equal(direct.submit(xs[0])["representation"], backend.outputs(xs[0])["representation"])
    assert direct.forward_passes == 1


def test_proof_of_work_crosses_the_wire(server, tmp_path):
    """With the pow defense on, every batch is answered only after the client solved its puzzle; a
    wrong nonce is refused (403) and counts nothing."""
    ledger = str(tmp_path / "ledger.db")
    key = serve.main(["accounts", "create", "p", "--ledger", ledger])
    proc, url = start_server(server["victim"], ledger, extra=["--defenses", "pow", "--pow-bits-min", "2",
                                                              "--pow-bits-max", "4"])
    try:
        http = HTTPConnection(url, key)
        local = build_service(load_victim(str(server["victim"]))).connect("x")
        for seed in range(3):
            x = images(4, seed=seed)
            assert torch.equal(http.answer(x), local.answer(x))
        assert http.puzzles == 3 and http.pow_hashes >= 3 and http.costs()["pow_puzzles"] == 3
        x = images(2, seed=9)
        body = {"format": "uint8", "shape": [2, 3, 8, 8], "data": base64.b64encode(x.numpy().tobytes()).decode()}
        code, reply = post(url, json.dumps(body).encode(), key)
        assert code == 428 and set(reply["puzzle"]) == {"challenge", "bits"}
        from defenses.pow import Puzzle, verify

        puzzle = Puzzle(reply["puzzle"]["challenge"], reply["puzzle"]["bits"])
        wrong = next(n for n in range(1000) if not verify(puzzle, n))
        code, reply = post(url, json.dumps({**body, "proof": {"challenge": puzzle.challenge, "nonce": wrong}}).encode(),
                           key)
        assert code == 403 and "does not solve" in reply["error"]
        assert Ledger(ledger).usage("p")["used"] == 12  # the refused batch counted nothing
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_several_accounts_share_one_attack(server, tmp_path):
    import steal

    ledger = Ledger(server["ledger"])
    keys = [serve.main(["accounts", "create", f"sybil{i}", "--ledger", server["ledger"]]) for i in range(3)]
    flags = ["--losstype", "mse", "--num_queries", "60", "--epochs", "1", "-b", "30", "--device", "cpu"]
    steal.main(["--victim-url", server["url"], *[a for k in keys for a in ("--api-key", k)],
                "--logdir", str(tmp_path / "s"), *flags])
    used = [ledger.usage(f"sybil{i}")["used"] for i in range(3)]
    assert used == [20, 20, 20]  # each account saw a third of every batch


def test_rate_limits_refuse_with_429_and_the_client_waits(server):
    key = serve.main(["accounts", "create", "slow", "--ledger", server["ledger"], "--rate-limit", "4"])
    x = images(1)
    body = json.dumps({"format": "uint8", "shape": [1, 3, 8, 8],
                       "data": base64.b64encode(x.numpy().tobytes()).decode()}).encode()
    codes = [post(server["url"], body, key)[0] for _ in range(10)]
    assert codes[:4] == [200] * 4 and 429 in codes[4:]  # a bucket of 4, then refusals
    used = Ledger(server["ledger"]).usage("slow")["used"]
    assert used == codes.count(200)  # refusals count nothing
    code, reply = post(server["url"], body, key)
    assert code == 429 and reply["retry_after"] > 0 and "4 requests per second" in reply["error"]
    http = HTTPConnection(server["url"], key, retries=8, backoff=0.05)
    t0 = time.time()
    for _ in range(8):  # the client backs off as told and gets every answer
        http.answer(x)
    # at most a full bucket (4) goes at once; the other 4 wait a quarter second each at least
    assert Ledger(server["ledger"]).usage("slow")["used"] == used + 8 and time.time() - t0 > 0.9


def _body(x, **extra) -> bytes:
    return json.dumps({"format": "uint8", "shape": list(x.shape),
                       "data": base64.b64encode(x.numpy().tobytes()).decode(), **extra}).encode()


def test_defense_state_survives_sigkill_and_restart(server, tmp_path):
    """Similar-query detection's history, the proof of work's deviation score and a puzzle waiting for
    its proof are read back from the ledger after a SIGKILL: a repeat of a query answered before the
    kill is still flagged, the repeater's next puzzle is as hard as its whole history says, and the
    puzzle issued before the kill is still the one to solve. (A server that forgot would flag
    nothing, ask 0 bits and issue a new puzzle.)"""
    import signal

    from defenses.pow import Puzzle, difficulty, solve

    ledger = str(tmp_path / "ledger.db")
    key = serve.main(["accounts", "create", "rep", "--ledger", ledger])
    extra = ["--defenses", "detect", "pow", "--sigma", "0", "--pow-bits-min", "0", "--pow-bits-max", "9"]
    proc, url = start_server(server["victim"], ledger, extra=extra)
    a = images(1, seed=1)
    try:
        http = HTTPConnection(url, key)
        for _ in range(3):  # the same image three times: the 2nd and 3rd are repeats
            http.answer(a)
        code, reply = post(url, _body(a), key)
        assert code == 428 and reply["puzzle"]["bits"] == difficulty(2 / 3, 0, 9) == 6
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    book = Ledger(ledger)
    assert [b["decisions"]["detect"]["flagged"] for b in book.batches("rep")] == [0, 1, 1]
    assert [b["decisions"]["pow"]["bits"] for b in book.batches("rep")] == [0, 0, difficulty(1 / 2, 0, 9)]
    proc, url = start_server(server["victim"], ledger, extra=extra)
    try:
        puzzle = Puzzle(reply["puzzle"]["challenge"], reply["puzzle"]["bits"])
        code, answered = post(url, _body(a, proof={"challenge": puzzle.challenge, "nonce": solve(puzzle)[0]}), key)
        assert code == 200 and answered["used"] == 4  # the pre-kill puzzle, solved after the restart
        assert book.batches("rep")[-1]["decisions"]["detect"]["flagged"] == 1  # still a repeat
        code, reply = post(url, _body(a), key)
        assert code == 428 and reply["puzzle"]["bits"] == difficulty(3 / 4, 0, 9) == 7
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_service_on_a_postgresql_ledger(server, postgres_server):
    """The same server on a PostgreSQL ledger: 6 concurrent clients spend one account's budget
    exactly, the detector's history survives a restart, and the counts agree."""
    from conftest import new_postgres_database

    url = new_postgres_database(postgres_server, "serve")
    key = serve.main(["accounts", "create", "pg", "--budget", "90", "--ledger", url])
    extra = ["--defenses", "detect", "--sigma", "0"]
    proc, address = start_server(server["victim"], url, extra=extra)
    received, lock = [], threading.Lock()

    def client(seed):
        http, got = HTTPConnection(address, key), 0
        for i in range(10):
            try:
                got += http.answer(images(2, seed=100 * seed + i)).shape[0]
            except QueryBudgetExceeded:
                pass
        with lock:
            received.append(got)

    try:
        threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    book = Ledger(url)
    assert sum(received) == book.usage("pg")["used"] == book.total("pg") == 90  # 120 asked, 90 sold
    proc, address = start_server(server["victim"], url, extra=extra)
    try:
        key2 = serve.main(["accounts", "create", "pg2", "--ledger", url])
        http = HTTPConnection(address, key2)
        http.answer(images(1, seed=5))
        proc.terminate()
        proc.wait(timeout=30)
        proc, address = start_server(server["victim"], url, extra=extra)
        HTTPConnection(address, key2).answer(images(1, seed=5))  # a repeat, after a restart
        assert [b["decisions"]["detect"]["flagged"] for b in book.batches("pg2")] == [0, 1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_expired_key_is_refused_and_counts_nothing(server):
    book = Ledger(server["ledger"])
    old = book.create_account("old", budget=10, expires=time.time() - 1)
    code, reply = post(server["url"], _body(images(1)), old)
    assert code == 401 and "expired" in reply["error"] and book.usage("old")["used"] == 0
    fresh = serve.main(["accounts", "create", "week", "--expires-days", "7", "--ledger", server["ledger"]])
    assert abs(book.account("week").expires - (time.time() + 7 * 86400)) < 60
    assert post(server["url"], _body(images(1)), fresh)[0] == 200
