"""The service's durable ledger: hashed API keys, exact budgets under concurrency (threads and
processes), nothing written for a refused batch, state that survives a restart and a SIGKILL."""
import multiprocessing as mp
import os
import signal
import sqlite3
import threading
import time

import pytest
import torch

from service.ledger import AuthError, Ledger, hash_key
from service.wire import image_hashes
from utils import QueryBudgetExceeded, UserError


def test_keys_are_stored_hashed_and_authenticate(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    key = ledger.create_account("alice", budget=10, head_access=True)
    other = ledger.create_account("bob")
    assert key.startswith("sk-") and key != other and len(key) > 40
    assert ledger.authenticate(key).name == "alice" and ledger.authenticate(key).head_access
    assert ledger.authenticate(other).budget is None
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert key.encode() not in raw and hash_key(key).encode() in raw  # only the hash is on disk
    for bad in (None, "", "sk-wrong"):
        with pytest.raises(AuthError):
            ledger.authenticate(bad)
    expiring = ledger.create_account("carol", expires=time.time() + 60)
    assert ledger.authenticate(expiring).name == "carol"
    with pytest.raises(AuthError, match="expired"):
        ledger.authenticate(expiring, now=time.time() + 120)
    with pytest.raises(UserError, match="exists already"):
        ledger.create_account("alice")
    with pytest.raises(UserError, match="non-negative"):
        ledger.create_account("dave", budget=-1)


def test_budget_is_exhausted_exactly_and_a_refused_batch_writes_nothing(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.create_account("a", budget=10)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert ledger.record("a", 4, image_hashes(images), {"noise": "applied"}).used == 4
    assert ledger.record("a", 4).remaining == 2
    with pytest.raises(QueryBudgetExceeded, match="budget of 10"):
        ledger.record("a", 3)
    assert ledger.usage("a") == {"account": "a", "used": 8, "requests": 2, "budget": 10, "remaining": 2}
    assert len(ledger.batches("a")) == 2  # the refused batch left no row
    assert ledger.record("a", 2).remaining == 0
    with pytest.raises(QueryBudgetExceeded):
        ledger.record("a", 1)
    rows = ledger.batches("a")
    assert [r["count"] for r in rows] == [4, 4, 2] and ledger.total("a") == 10
    assert rows[0]["input_hashes"] == image_hashes(images) and rows[0]["decisions"] == {"noise": "applied"}
    assert image_hashes(images[:1]) != image_hashes(images[1:2])


def _spend(path, name, requests, seed) -> int:
    """A client with its own connection: ``requests`` batches of 1-3 queries; the queries granted."""
    ledger = Ledger(path)
    gen = torch.Generator().manual_seed(seed)
    granted = 0
    for _ in range(requests):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        try:
            ledger.record(name, n)
            granted += n
        except QueryBudgetExceeded:
            pass
    return granted


def _hammer(path, name, requests, seed, out):
    """A client process: puts the queries it was granted."""
    out.put(_spend(path, name, requests, seed))


def test_concurrent_threads_never_pass_the_budget(ledger_url):
    path = ledger_url
    ledger = Ledger(path)
    ledger.create_account("a", budget=500)
    ledger.create_account("free")
    granted = []
    lock = threading.Lock()

    def client(seed, name):
        total = _spend(path, name, 200, seed)
        with lock:
            granted.append((name, total))

    threads = [threading.Thread(target=client, args=(s, "a" if s < 8 else "free")) for s in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a = sum(n for name, n in granted if name == "a")
    assert a == ledger.usage("a")["used"] == ledger.total("a")
    assert 497 < a <= 500  # 8 x 200 requests ask for ~3,200: the budget is used up, never passed
    free = sum(n for name, n in granted if name == "free")
    assert free == ledger.total("free") and ledger.usage("free")["requests"] == 400


def test_concurrent_processes_never_pass_the_budget(tmp_path):
    path = str(tmp_path / "l.db")
    Ledger(path).create_account("a", budget=300)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, "a", 100, s, out)) for s in range(4)]
    for p in procs:
        p.start()
    granted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    ledger = Ledger(path)
    assert granted == ledger.usage("a")["used"] == ledger.total("a") and 297 < granted <= 300


def _record_forever(path):
    ledger = Ledger(path)
    while True:
        ledger.record("a", 3, decisions={"x": 1})


def test_sigkill_mid_load_leaves_a_consistent_ledger_that_reopens(tmp_path):
    path = str(tmp_path / "l.db")
    ledger = Ledger(path)
    ledger.create_account("a")
    ledger.save_state("a", "pow", {"difficulty": 12, "seen": [1, 2]})
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_record_forever, args=(path,))
    p.start()
    deadline = time.time() + 60
    while ledger.total("a") < 60 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    reopened = Ledger(path)
    used = reopened.usage("a")
    assert used["used"] >= 60 and used["used"] == reopened.total("a") == 3 * used["requests"]  # no half batch
    assert len(reopened.batches("a")) == used["requests"]
    assert reopened.load_state("a", "pow") == {"difficulty": 12, "seen": [1, 2]}  # defense state survives
    assert reopened.load_state("a", "detector") == {}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_urls_and_memory(tmp_path):
    assert Ledger(f"sqlite:///{tmp_path / 'x.db'}").path == str(tmp_path / "x.db")
    memory = Ledger("sqlite:///:memory:")
    memory.create_account("m", budget=2)
    memory.record("m", 2)
    assert memory.usage("m")["remaining"] == 0
    with pytest.raises(UserError, match="cannot open the PostgreSQL ledger at localhost:1/db"):
        Ledger("postgresql://u:secret@localhost:1/db")  # nothing listens there; the password is not echoed
    import importlib.util

    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
        with pytest.raises(UserError, match=r"pip install 'psycopg\[binary\]'"):
            Ledger("postgresql://u:p@localhost/db")
    with pytest.raises(UserError, match="unknown ledger URL"):
        Ledger("mysql://x")


def test_defense_state_and_history_rows_are_written_with_their_batch(ledger_url):
    """A batch's defense state and the history rows it added go in the batch's own transaction:
    read back in order after a reopen, and never written for a refused batch."""
    ledger = Ledger(ledger_url)
    ledger.create_account("a", budget=5)
    first, second = torch.arange(6.0).view(2, 3), torch.arange(6.0, 9.0).view(1, 3)
    ledger.record("a", 2, states={"detect": {"checked": 2, "flagged": 0}}, rows={("detect", "history"): first})
    ledger.record("a", 1, states={"detect": {"checked": 3, "flagged": 1}},
                  rows={("detect", "history"): second, ("pow", "history"): torch.empty(0, 3)})
    with pytest.raises(QueryBudgetExceeded):
        ledger.record("a", 3, states={"detect": {"checked": 99}}, rows={("detect", "history"): first})
    reopened = Ledger(ledger_url)
    assert reopened.load_state("a", "detect") == {"checked": 3, "flagged": 1}  # not the refused batch's
    rows = reopened.load_rows("a", "detect")
    assert list(rows) == ["history"] and torch.equal(rows["history"], torch.arange(9.0).view(3, 3))
    assert reopened.load_rows("a", "pow") == {}  # an empty slice writes no row
