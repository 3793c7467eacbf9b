"""The service against hostile input (issue 26): every bad request a 4xx and one sentence that
charges nothing, revoked keys, the admin commands, an unwritable ledger, and idempotent billing
across a lost reply and a server SIGKILL. The server runs for real, in its own process."""
import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time
import zlib

import pytest
import torch
from serving_helpers import free_port, post, start_server, tiny_server
from unwritable import read_only_dir

import serve
from attacks.client import HTTPConnection
from service.ledger import Ledger
from utils import UserError

ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("hostile"), {
            "mallory": ["--budget", "100"], "spare": ["--budget", "5"], "gone": [], "retry": [], "proxy": []}) as s:
        yield s


def images(n, seed=0, size=8):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def uint8_body(x, **extra) -> dict:
    return {"format": "uint8", "shape": list(x.shape), "data": base64.b64encode(x.numpy().tobytes()).decode(),
            **extra}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, rows: bytes = b"") -> bytes:
    """A PNG by hand: its header claims ``width x height`` whatever the pixel data holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_accounts_list_shows_accounts_without_a_rate_limit(tmp_path, capsys):
    """The README's own sequence: `accounts create alice --budget 1000`, then `accounts list`
    (a TypeError before: the rate limit was formatted even when there was none)."""
    ledger = str(tmp_path / "l.db")
    serve.main(["accounts", "create", "alice", "--budget", "1000", "--ledger", ledger])
    serve.main(["accounts", "create", "bob", "--rate-limit", "2.5", "--head-access", "--ledger", ledger])
    capsys.readouterr()
    rows = serve.main(["accounts", "list", "--ledger", ledger])
    out = capsys.readouterr().out.splitlines()
    assert [r["account"] for r in rows] == ["alice", "bob"]
    assert out == ["alice: used 0 of 1000 in 0 requests",
                   "bob: used 0 of unlimited in 0 requests (head access, 2.5 requests/s)"]


GOOD = uint8_body(images(1))
HALF_PNG = png_file(8, 8, b"".join(b"\x00" + bytes(range(24)) for _ in range(8)))
DEEP = 100_000
HOSTILE = {  # name: (body, status, words the one sentence must hold)
    # a decompression bomb: the header claims 20000 x 20000 (PIL's own check fired first: a 500)
    "png-bomb-header": ({"format": "png", "images": [b64(png_file(20000, 20000))]}, 422, "20000x20000"),
    # a PNG of the right size cut in half ("image file is truncated": a 500)
    "png-cut-in-half": ({"format": "png", "images": [b64(HALF_PNG[:len(HALF_PNG) // 2])]}, 400, "damaged PNG"),
    # the PNG signature, then garbage (PIL's message quoted a memory address)
    "png-signature-then-garbage": ({"format": "png", "images": [b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)]}, 400,
                                   "not a base64 PNG"),
    "png-too-few-pixels": ({"format": "png", "images": [b64(png_file(8, 8, b"\x00" * 3))]}, 400, "damaged PNG"),
    # shape values that are not JSON integers were read as 1 and charged
    "shape-float": ({**GOOD, "shape": [1.9, 3, 8, 8]}, 422, "non-negative integers"),
    "shape-true": ({**GOOD, "shape": [True, 3, 8, 8]}, 422, "true"),
    "shape-string": ({**GOOD, "shape": ["1", 3, 8, 8]}, 422, "\"1\""),
    "shape-float-size": ({**GOOD, "shape": [1, 3, 8, 8.0]}, 422, "non-negative integers"),
    "shape-not-a-list": ({**GOOD, "shape": "1x3x8x8"}, 400, "list of non-negative integers"),
    "shape-negative": ({**GOOD, "shape": [-1, 3, 8, 8]}, 422, "non-negative"),
    "shape-huge-empty": ({**GOOD, "shape": [0, 2 ** 40], "data": ""}, 422, "at most"),  # found by the fuzzer
    "data-a-number": ({**GOOD, "data": 12}, 400, "base64 string"),
    "data-not-base64": ({**GOOD, "data": "!!!"}, 400, "not valid base64"),
    "output-a-list": ({**GOOD, "output": ["representation"]}, 400, "name of an output"),
    "output-10k-chars": ({**GOOD, "output": "x" * 10_000}, 422, "does not answer"),
    "proof-nonce-true": ({**GOOD, "proof": {"challenge": "00", "nonce": True}}, 400, "'proof' must be"),
    "proof-nonce-2**64": ({**GOOD, "proof": {"challenge": "00", "nonce": 2 ** 64}}, 400, "'proof' must be"),
    "unknown-field": ({**GOOD, "extra": 1}, 400, "unknown field"),
    "png-item-a-number": ({"format": "png", "images": [7]}, 400, "not a base64 PNG string"),
    "png-with-shape": ({"format": "png", "images": [b64(png_file(8, 8))], "shape": [1, 3, 8, 8]}, 400, "'images' only"),
    "format-a-list": ({"format": ["png"]}, 400, "unknown format"),
    # raw bodies: JSON nested 100,000 deep (a RecursionError: a 500), also inside a field
    "json-nested-100k": (b"[" * DEEP + b"]" * DEEP, 400, "nested too deeply"),
    "json-nested-in-images": (b'{"format": "png", "images": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400,
                              "nested too deeply"),
    "json-nested-in-shape": (b'{"shape": ' + b"[" * DEEP + b"]" * DEEP + b', "data": ""}', 400, "nested too deeply"),
    "json-int-5000-digits": (b'{"shape": [' + b"9" * 5000 + b', 3, 8, 8], "data": ""}', 400, "not valid JSON"),
    "json-nan": (b'{"shape": [NaN, 3, 8, 8], "data": ""}', 422, "non-negative integers"),
    "not-utf8": (b"\xff\xfe{}", 400, "not"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_body_gets_a_4xx_and_one_sentence_and_costs_nothing(server, name):
    body, status, words = HOSTILE[name]
    before = Ledger(server["ledger"]).usage("mallory")
    code, reply = post(server["url"], body if isinstance(body, bytes) else json.dumps(body).encode(),
                       server["keys"]["mallory"])
    assert code == status and words in reply["error"], (code, reply)
    assert not ADDRESS.search(reply["error"]) and len(reply["error"]) < 400 and "\n" not in reply["error"]
    assert Ledger(server["ledger"]).usage("mallory") == before  # nothing was charged


def test_a_png_at_the_right_size_is_still_answered(server):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(images(1)[0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    code, reply = post(server["url"], json.dumps({"format": "png", "images": [b64(buf.getvalue())]}).encode(),
                       server["keys"]["mallory"])
    assert code == 200 and reply["shape"][0] == 1


def test_revoke_takes_effect_at_once_and_keeps_the_rows(server, capsys):
    url, key, ledger = server["url"], server["keys"]["gone"], server["ledger"]
    http = HTTPConnection(url, key)
    http.answer(images(3))
    assert serve.main(["accounts", "revoke", "gone", "--ledger", ledger]) is True
    assert serve.main(["accounts", "revoke", "gone", "--ledger", ledger]) is False  # revoked already
    code, reply = post(url, json.dumps(uint8_body(images(1))).encode(), key)  # the running server, no restart
    assert code == 401 and "revoked" in reply["error"]
    with pytest.raises(UserError, match="revoked"):
        http.usage()
    book = Ledger(ledger)
    assert book.usage("gone")["used"] == 3 and book.total("gone") == 3  # the books keep its rows
    capsys.readouterr()
    serve.main(["accounts", "list", "--ledger", ledger])
    assert "gone: used 3 of unlimited in 1 requests (REVOKED" in capsys.readouterr().out


def test_delete_removes_the_account_and_its_rows(tmp_path, capsys):
    ledger = str(tmp_path / "l.db")
    serve.main(["accounts", "create", "eve", "--ledger", ledger])
    book = Ledger(ledger)
    book.record("eve", 4, ["h"] * 4)
    book.remember("eve", "k1", "r", 402, {"error": "x"})
    removed = serve.main(["accounts", "delete", "eve", "--ledger", ledger])
    assert removed == {"idempotent": 1, "defense_rows": 0, "defense_state": 0, "batches": 1, "accounts": 1}
    assert book.names() == [] and book.total() == 0
    with pytest.raises(UserError, match="no account 'eve'"):
        serve.main(["accounts", "delete", "eve", "--ledger", ledger])


def test_an_unwritable_ledger_is_one_sentence_before_the_victim_loads(tmp_path):
    with read_only_dir(tmp_path / "ro") as ro:
        for argv in (["accounts", "list", "--ledger", str(ro / "ledger.db")],
                     ["--ledger", str(ro / "ledger.db"), "--victim-checkpoint", str(tmp_path / "nowhere.pt")],
                     ["--ledger", str(ro / "sub" / "ledger.db")]):
            with pytest.raises(UserError, match="cannot open the ledger .*writable folder"):
                serve.main(argv)  # the ledger is checked first: the missing checkpoint is never reached
    (tmp_path / "not.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot open the ledger"):
        serve.main(["accounts", "list", "--ledger", str(tmp_path / "not.db")])


def test_an_idempotent_retry_is_answered_again_and_charged_once(server):
    url, key, ledger = server["url"], server["keys"]["spare"], server["ledger"]
    body = json.dumps(uint8_body(images(2, seed=5))).encode()

    def send(b, ikey):
        return post(url, b, key, headers={"Idempotency-Key": ikey})

    code, first = send(body, "batch-1")
    code2, again = send(body, "batch-1")
    assert code == code2 == 200 and again == first  # the same answer, bit for bit, and the same usage
    assert Ledger(ledger).usage("spare")["used"] == 2 and Ledger(ledger).total("spare") == 2
    code, reply = send(json.dumps(uint8_body(images(2, seed=6))).encode(), "batch-1")
    assert code == 422 and "different body" in reply["error"]
    big = json.dumps(uint8_body(images(4, seed=7))).encode()  # 2 + 4 > 5: refused, and the refusal is kept
    assert send(big, "batch-2")[0] == 402 and send(big, "batch-2")[0] == 402
    code, reply = send(body, "bad key with spaces")
    assert code == 400 and "Idempotency-Key" in reply["error"]
    assert Ledger(ledger).usage("spare")["used"] == 2


def _raw_post(port: int, body: bytes, key: str, ikey: str) -> socket.socket:
    """Send a request and never read its reply (as if the connection died on the way back)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nIdempotency-Key: {ikey}\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    return sock


def test_a_retry_after_a_server_sigkill_is_charged_once(server, tmp_path):
    """The batch is recorded, the server is SIGKILLed before its reply is read, a new server starts on
    the same ledger, and the client sends the batch again with the same Idempotency-Key: the same
    answer, charged once."""
    ledger = str(tmp_path / "ledger.db")
    key = serve.main(["accounts", "create", "kill", "--ledger", ledger])
    port = free_port()
    proc, url = start_server(server["victim"], ledger, port=port)
    body = json.dumps(uint8_body(images(3, seed=9))).encode()
    sock = _raw_post(port, body, key, "kill-batch")
    deadline = time.time() + 30
    while Ledger(ledger).total("kill") < 3 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sock.close()
    assert Ledger(ledger).usage("kill")["used"] == 3  # recorded, never delivered
    proc, url = start_server(server["victim"], ledger, port=port)
    try:
        code, reply = post(url, body, key, headers={"Idempotency-Key": "kill-batch"})
        assert code == 200 and reply["used"] == 3 and reply["shape"] == [3, reply["shape"][1]]
        direct = HTTPConnection(url, key).answer(images(3, seed=9))  # a new key: a new, charged batch
        assert torch.equal(torch.frombuffer(bytearray(base64.b64decode(reply["data"])), dtype=torch.float32)
                           .view(3, -1), direct)
        assert Ledger(ledger).usage("kill") == {"account": "kill", "used": 6, "requests": 2, "budget": None,
                                                "remaining": None}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class LossyProxy:
    """A TCP proxy in front of the server that forwards each request, reads the whole reply, and
    throws away the first ``drop`` replies to POSTs (the client sees its connection closed)."""

    def __init__(self, upstream_port: int, drop: int = 1):
        self.upstream, self.drop, self.posts = upstream_port, drop, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = self._read_request(conn)
                with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                    up.sendall(request)
                    reply = b"".join(iter(lambda: up.recv(65536), b""))
                if request.startswith(b"POST"):
                    key = re.search(rb"(?i)idempotency-key: (\S+)", request)
                    self.posts.append(key and key.group(1).decode())
                    if self.drop > 0:
                        self.drop -= 1
                        continue  # the reply is lost: the connection closes without it
                conn.sendall(reply)

    @staticmethod
    def _read_request(conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int((re.search(rb"(?i)content-length: (\d+)", head) or [0, b"0"])[1])
        while len(rest) < length:
            rest += conn.recv(65536)
        head = re.sub(rb"(?i)connection: [^\r]*", b"Connection: close", head)
        return head + b"\r\n\r\n" + rest

    def close(self):
        self.listener.close()


def test_the_client_retries_a_lost_reply_with_the_same_key_and_is_charged_once(server):
    port = int(server["url"].rsplit(":", 1)[1])
    proxy = LossyProxy(port, drop=1)
    try:
        http = HTTPConnection(f"http://127.0.0.1:{proxy.port}", server["keys"]["proxy"], backoff=0.05, timeout=20)
        x = images(4, seed=11)
        got = http.answer(x)
        assert len(proxy.posts) == 2 and proxy.posts[0] == proxy.posts[1]  # one key, sent twice
        assert Ledger(server["ledger"]).usage("proxy")["used"] == 4  # answered twice, charged once
        http.answer(x)  # a new batch of the same images: a new key, charged
        assert len(set(proxy.posts)) == 2 and Ledger(server["ledger"]).usage("proxy")["used"] == 8
        assert torch.equal(got, HTTPConnection(server["url"], server["keys"]["proxy"]).answer(x))
    finally:
        proxy.close()


def test_the_openapi_schema_states_the_wire_contract(server):
    import urllib.request

    with urllib.request.urlopen(server["url"] + "/openapi.json", timeout=30) as r:
        schema = json.loads(r.read())
    op = schema["paths"]["/v1/embeddings"]["post"]
    uint8, png = op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert uint8["properties"]["shape"]["prefixItems"][0]["maximum"] == 64  # this server's --max-batch
    assert [item["enum"] for item in uint8["properties"]["shape"]["prefixItems"][1:]] == [[3], [8], [8]]
    assert png["properties"]["images"]["maxItems"] == 64 and not uint8["additionalProperties"]
    assert {"200", "400", "401", "402", "403", "413", "422", "428", "429"} <= set(op["responses"])
    assert "8 big-endian bytes" in uint8["properties"]["proof"]["description"]
    assert op["security"] == [{"bearerAuth": []}] and "Idempotency-Key" in [p["name"] for p in op["parameters"]]


def test_an_independent_verifier_can_check_the_documented_puzzle_bytes(server, tmp_path):
    """Solve a proof of work from the contract's words alone (no project code): SHA-256 of the
    hex-decoded challenge followed by the nonce as 8 big-endian bytes, with `bits` leading zeros."""
    ledger = str(tmp_path / "ledger.db")
    key = serve.main(["accounts", "create", "pow", "--ledger", ledger])
    proc, url = start_server(server["victim"], ledger, extra=["--defenses", "pow", "--pow-bits-min", "6",
                                                              "--pow-bits-max", "6"])
    try:
        body = uint8_body(images(2, seed=3))
        code, reply = post(url, json.dumps(body).encode(), key)
        assert code == 428
        challenge, bits = reply["puzzle"]["challenge"], reply["puzzle"]["bits"]
        nonce = next(n for n in range(1 << 20) if int.from_bytes(hashlib.sha256(
            bytes.fromhex(challenge) + n.to_bytes(8, "big")).digest(), "big") < 1 << (256 - bits))
        code, reply = post(url, json.dumps({**body, "proof": {"challenge": challenge, "nonce": nonce}}).encode(), key)
        assert code == 200 and reply["used"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
