"""The victim service's durable query ledger: accounts, API keys, budgets, answered batches, defense state.

The HTTP service (the next step of the serving work) records every answered batch here
*before* its answers leave, so a query counts exactly once and a crash can lose an answer
but never an entry. One SQL database holds

* ``accounts``: name, the SHA-256 of its API key (the key itself is shown once, at creation,
  and never stored), budget (``NULL`` = unlimited), queries used, requests, head access, rate
  limit (requests per second, ``NULL`` = none), expiry time and revocation time (a revoked key
  is refused at once; its rows stay);
* ``batches``: one row per answered batch: account, time, number of images, the SHA-256 of
  each image's bytes and the defenses' decisions (JSON);
* ``defense_state``: per account and defense, a JSON document of its counters (flagged queries,
  the puzzle difficulty's deviation score, a puzzle waiting for its proof);
* ``defense_rows``: the rows each answered batch added to a defense's history of the account's
  answers (similar-query detection, the proof of work's deviation score), float32 bytes,
  appended, never rewritten: so per-account defenses survive a restart whole, and a write
  costs the batch, not the history;
* ``idempotent``: per account and ``Idempotency-Key`` (a token the client picks per batch), the
  SHA-256 of the request body and the final answer given to it (status and JSON body), written
  in the same transaction as the batch it answered: a retry with the same key, after a lost
  reply or a server SIGKILL, gets the recorded answer and is not charged again. Rows older than
  ``idempotency_ttl`` seconds (default a day) are dropped.

:meth:`Ledger.record` checks the budget, appends the batch and increments the account's
counters in **one transaction** (SQLite ``BEGIN IMMEDIATE``: one writer at a time, others
wait up to ``timeout`` seconds), so concurrent requests of one account, from threads or from
processes, can never take it past its budget, and the ledger's total always equals the sum
of the accounts' ``used``. SQLite runs in WAL mode (readers never block the writer).

URLs: a file path or ``sqlite:///path/to/ledger.db`` (the default), ``sqlite:///:memory:``
for a throwaway one, and ``postgresql://user:pass@host:port/db`` for deployments that outgrow
one file (several server processes, a database on another machine): the same schema and
statements through ``psycopg`` 3 (``pip install 'psycopg[binary]'``). :class:`Dialect` holds
everything that differs: the placeholder (``?`` / ``%s``), three column types (``REAL`` is
a float4 in PostgreSQL, so times are ``DOUBLE PRECISION`` there; ``BLOB`` / ``BYTEA``; the
auto-increment key), and the lock: SQLite's ``BEGIN IMMEDIATE`` takes the database's one
write lock, PostgreSQL's ``SELECT ... FOR UPDATE`` the account's row, so two accounts
never wait on each other there. The tests run every ledger behaviour on both where a
PostgreSQL server can be started (``initdb`` on the PATH).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from utils import QueryBudgetExceeded, UserError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        budget INTEGER,
        used INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        head_access INTEGER NOT NULL DEFAULT 0,
        rate_limit {float},
        created {float} NOT NULL,
        expires {float},
        revoked {float})""",
    """CREATE TABLE IF NOT EXISTS batches (
        id {serial},
        account TEXT NOT NULL REFERENCES accounts(name),
        time {float} NOT NULL,
        count INTEGER NOT NULL,
        input_hashes TEXT NOT NULL,
        decisions TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS batches_account ON batches(account)",
    """CREATE TABLE IF NOT EXISTS defense_state (
        account TEXT NOT NULL REFERENCES accounts(name),
        defense TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (account, defense))""",
    """CREATE TABLE IF NOT EXISTS defense_rows (
        id {serial},
        account TEXT NOT NULL REFERENCES accounts(name),
        defense TEXT NOT NULL,
        name TEXT NOT NULL,
        dim INTEGER NOT NULL,
        rows {blob} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS defense_rows_account ON defense_rows(account, defense)",
    """CREATE TABLE IF NOT EXISTS idempotent (
        account TEXT NOT NULL REFERENCES accounts(name),
        ikey TEXT NOT NULL,
        request TEXT NOT NULL,
        status INTEGER NOT NULL,
        response TEXT NOT NULL,
        time {float} NOT NULL,
        PRIMARY KEY (account, ikey))""",
    "CREATE INDEX IF NOT EXISTS idempotent_time ON idempotent(time)",
)
# columns added after the first release: (table, column, type), added to an older ledger on open
MIGRATIONS = (("accounts", "revoked", "{float}"),)


class AuthError(UserError):
    """A missing, unknown, expired or revoked API key."""


@dataclass(frozen=True)
class Recorded:
    """The answer given to an ``Idempotency-Key`` (see :meth:`Ledger.remember`)."""
    request: str  # SHA-256 of the request body it answered
    status: int
    response: dict


class Replay(Exception):
    """Raised by :meth:`Ledger.record` when the batch's ``Idempotency-Key`` was answered already
    (by a concurrent request or an earlier attempt): nothing was charged; ``recorded`` is that answer."""

    def __init__(self, recorded: Recorded):
        super().__init__("this Idempotency-Key was answered already")
        self.recorded = recorded


@dataclass(frozen=True)
class AccountRecord:
    """One row of ``accounts`` (never the key: only its hash is stored)."""
    name: str
    budget: Optional[int]
    used: int
    requests: int
    head_access: bool
    rate_limit: Optional[float]
    expires: Optional[float]
    revoked: Optional[float] = None

    @property
    def remaining(self) -> Optional[int]:
        return None if self.budget is None else self.budget - self.used


def hash_key(key: str) -> str:
    """The stored form of an API key: SHA-256 hex. The keys are 256-bit random tokens, so a fast
    hash is enough (no password stretching needed) and a leaked database reveals no key."""
    return hashlib.sha256(key.encode()).hexdigest()


class _Translating:
    """A connection whose statements are written with ``?`` placeholders, for a dialect that uses others."""

    def __init__(self, db, dialect: "Dialect"):
        self.db, self.dialect = db, dialect

    def execute(self, statement: str, args=()):
        return self.db.execute(self.dialect.sql(statement), args)

    def close(self) -> None:
        self.db.close()


def sqlite_path(url: str) -> str:
    """The SQLite file of a ledger URL (a plain path, ``sqlite:///path``, or ``sqlite:///:memory:``)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if "://" in url:
        raise UserError(f"unknown ledger URL {url!r}: use a file path, sqlite:///PATH or postgresql://...")
    return url


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL databases a ledger can live in."""
    name: str
    placeholder: str
    types: dict
    begin: str  # starts a write transaction
    lock_row: str  # appended to the SELECT of the account a write checks

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder) if self.placeholder != "?" else statement


SQLITE = Dialect("sqlite", "?", {"float": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
                 "BEGIN IMMEDIATE", "")
POSTGRES = Dialect("postgresql", "%s", {"float": "DOUBLE PRECISION", "blob": "BYTEA",
                                        "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
                   "BEGIN", " FOR UPDATE")


class Ledger:
    """The durable ledger behind the service (see the module docstring). Thread-safe: each
    thread gets its own connection; several processes may open the same file or database."""

    def __init__(self, url: str | Path = "ledger.db", *, timeout: float = 30.0,
                 idempotency_ttl: float = 86400.0):
        url = str(url)
        self.url, self.timeout, self.idempotency_ttl = url, timeout, idempotency_ttl
        self._local = threading.local()
        self._memory = None
        if url.startswith(("postgresql://", "postgres://")):
            if importlib.util.find_spec("psycopg") is None:
                raise UserError("a PostgreSQL ledger needs the psycopg driver on the server: "
                                "pip install 'psycopg[binary]' (or pass a file path or sqlite:///PATH)")
            self.dialect, self.path = POSTGRES, url.split("@")[-1]  # where, without the password
            self._db()
            self._create()
            return
        self.dialect, self.path = SQLITE, sqlite_path(url)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = self._db()
            if self.path != ":memory:":
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise UserError(f"the ledger {self.path} cannot use write-ahead logging (journal mode "
                                    f"{mode}); put it on a local disk")
            self._create()
        except (OSError, sqlite3.Error) as err:  # an unwritable folder, a read-only disk, not a database
            self.close()
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise UserError(f"cannot open the ledger {self.path}: {reason}; pass --ledger a SQLite file in a "
                            f"writable folder (it is created there)") from None

    def _create(self) -> None:
        """The tables (made on first use), and the columns a ledger of an older release lacks."""
        with self._transaction() as c:
            for statement in SCHEMA:
                c.execute(statement.format(**self.dialect.types))
            for table, column, kind in MIGRATIONS:
                kind = kind.format(**self.dialect.types)
                if self.dialect is POSTGRES:  # ALTER locks the table even when the column exists: ask first
                    have = {row[0] for row in c.execute("SELECT column_name FROM information_schema.columns "
                                                        "WHERE table_name = ?", (table,))}
                else:
                    have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # ------------------------------------------------------------------ connections

    def _db(self):
        if self.dialect is POSTGRES:
            db = getattr(self._local, "db", None)
            if db is None:
                import psycopg

                try:
                    db = psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.timeout))
                except psycopg.OperationalError as err:
                    raise UserError(f"cannot open the PostgreSQL ledger at {self.path}: "
                                    f"{str(err).strip().splitlines()[-1]}") from None
                self._local.db = db
            return _Translating(db, self.dialect)
        if self.path == ":memory:":  # one shared connection: a second would open another, empty database
            if self._memory is None:
                self._memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False,
                                               timeout=self.timeout)
                self._memory_lock = threading.Lock()
            return self._memory
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout)
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")  # a committed batch survives a power cut, not only a crash
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, ledger: "Ledger"):
            self.ledger = ledger

        def __enter__(self) -> sqlite3.Connection:
            self.db = self.ledger._db()
            memory = self.ledger.path == ":memory:"
            if memory:
                self.ledger._memory_lock.acquire()
            try:
                self.db.execute(self.ledger.dialect.begin)  # SQLite: take the write lock now
            except BaseException:
                if memory:
                    self.ledger._memory_lock.release()
                raise
            return self.db

        def __exit__(self, kind, value, tb) -> None:
            try:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                if self.ledger.path == ":memory:":
                    self.ledger._memory_lock.release()

    def _transaction(self) -> "Ledger._Tx":
        return Ledger._Tx(self)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------ accounts

    def create_account(self, name: str, *, budget: Optional[int] = None, head_access: bool = False,
                       rate_limit: Optional[float] = None, expires: Optional[float] = None) -> str:
        """Open an account and return its new API key (shown this once; only its hash is stored)."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"an account name is letters, digits, '-' and '_', got {name!r}")
        if budget is not None and budget < 0:
            raise UserError(f"an account budget must be non-negative, got {budget}")
        if rate_limit is not None and rate_limit <= 0:
            raise UserError(f"a rate limit must be positive (requests per second), got {rate_limit}")
        key = "sk-" + secrets.token_urlsafe(32)
        with self._transaction() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                raise UserError(f"account {name!r} exists already; pick another name")
            c.execute("INSERT INTO accounts (name, key_hash, budget, head_access, rate_limit, created, expires) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (name, hash_key(key), budget, int(head_access), rate_limit, time.time(), expires))
        return key

    def _row(self, row) -> AccountRecord:
        name, budget, used, requests, head, rate, expires, revoked = row
        return AccountRecord(name, budget, used, requests, bool(head), rate, expires, revoked)

    _COLUMNS = "name, budget, used, requests, head_access, rate_limit, expires, revoked"

    def account(self, name: str) -> AccountRecord:
        row = self._db().execute(f"SELECT {self._COLUMNS} FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UserError(f"no account {name!r} in the ledger {self.path}")
        return self._row(row)

    def authenticate(self, key: Optional[str], *, now: Optional[float] = None) -> AccountRecord:
        """The account of an API key; :class:`AuthError` for a missing, unknown or expired key."""
        if not key:
            raise AuthError("no API key: send the header 'Authorization: Bearer <key>'")
        row = self._db().execute(f"SELECT {self._COLUMNS} FROM accounts WHERE key_hash = ?",
                                 (hash_key(key),)).fetchone()
        if row is None:
            raise AuthError("unknown API key; ask the service's admin for one")
        record = self._row(row)
        if record.revoked is not None:
            raise AuthError(f"the API key of account {record.name!r} was revoked; ask the service's admin "
                            f"for a new account")
        if record.expires is not None and (now or time.time()) >= record.expires:
            raise AuthError(f"the API key of account {record.name!r} has expired")
        return record

    def revoke(self, name: str) -> bool:
        """Stop ``name``'s key from working, from the next request on (its rows stay, for the
        books); ``False`` when it was revoked already."""
        with self._transaction() as c:
            row = c.execute("SELECT revoked FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UserError(f"no account {name!r} in the ledger {self.path}; `serve.py accounts list` "
                                f"shows the accounts")
            if row[0] is not None:
                return False
            c.execute("UPDATE accounts SET revoked = ? WHERE name = ?", (time.time(), name))
        return True

    def delete(self, name: str) -> dict:
        """Remove ``name`` and everything recorded of it (batches, defense state and rows, recorded
        answers), in one transaction; returns how many rows of each table went."""
        removed = {}
        with self._transaction() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone() is None:
                raise UserError(f"no account {name!r} in the ledger {self.path}; `serve.py accounts list` "
                                f"shows the accounts")
            for table, column in (("idempotent", "account"), ("defense_rows", "account"),
                                  ("defense_state", "account"), ("batches", "account"), ("accounts", "name")):
                removed[table] = c.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,)).rowcount
        return removed

    # ------------------------------------------------------------------ queries

    def record(self, name: str, count: int, input_hashes: Iterable[str] = (),
               decisions: Optional[dict] = None, *, states: Optional[dict] = None,
               rows: Optional[dict] = None, idempotent: Optional[tuple] = None) -> AccountRecord:
        """Count ``count`` queries of ``name`` and append their batch, in one transaction; refuse
        the whole batch (:class:`utils.QueryBudgetExceeded`, nothing written) if it would take the
        account past its budget. Returns the account after the batch.

        ``states`` (defense -> JSON-able dict) and ``rows`` ((defense, name) -> the ``N x D``
        tensor of rows this batch added to that history) are the defenses' state after the
        batch, written in the same transaction: the ledger never holds a batch without the
        state it led to, nor the reverse.

        ``idempotent`` is ``(key, request hash, response)``: the answer is kept under the client's
        ``Idempotency-Key`` in the same transaction (``response`` with the account's ``used`` and
        ``remaining`` after the batch added); when that key was answered already, nothing is
        written and :class:`Replay` carries the earlier answer."""
        if count < 1:
            raise ValueError(f"a batch holds at least one query, got {count}")
        hashes = list(input_hashes)
        if hashes and len(hashes) != count:
            raise ValueError(f"{count} queries but {len(hashes)} input hashes")
        with self._transaction() as c:  # PostgreSQL: lock the account's row until the commit
            row = c.execute(f"SELECT {self._COLUMNS} FROM accounts WHERE name = ?{self.dialect.lock_row}",
                            (name,)).fetchone()
            if row is None:
                raise UserError(f"no account {name!r} in the ledger {self.path}")
            account = self._row(row)
            if idempotent is not None:
                earlier = self._recorded(c, name, idempotent[0])
                if earlier is not None:
                    raise Replay(earlier)
            if account.budget is not None and account.used + count > account.budget:
                raise QueryBudgetExceeded(f"account {name!r}: answering {count} queries would exceed its budget "
                                          f"of {account.budget} ({account.used} used)")
            c.execute("INSERT INTO batches (account, time, count, input_hashes, decisions) VALUES (?, ?, ?, ?, ?)",
                      (name, time.time(), count, json.dumps(hashes), json.dumps(decisions or {})))
            c.execute("UPDATE accounts SET used = used + ?, requests = requests + 1 WHERE name = ?", (count, name))
            for defense, state in (states or {}).items():
                self._put_state(c, name, defense, state)
            for (defense, key), tensor in (rows or {}).items():
                if tensor.shape[0]:
                    data = tensor.detach().float().cpu().contiguous().numpy().tobytes()
                    c.execute("INSERT INTO defense_rows (account, defense, name, dim, rows) VALUES (?, ?, ?, ?, ?)",
                              (name, defense, key, int(tensor.shape[1]), data))
            after = AccountRecord(account.name, account.budget, account.used + count, account.requests + 1,
                                  account.head_access, account.rate_limit, account.expires, account.revoked)
            if idempotent is not None:
                key, request, response = idempotent
                self._remember(c, name, key, request, 200, {**response, "used": after.used,
                                                             "remaining": after.remaining})
        return after

    # ------------------------------------------------------------------ idempotency keys

    def _recorded(self, c, name: str, key: str) -> Optional[Recorded]:
        row = c.execute("SELECT request, status, response FROM idempotent WHERE account = ? AND ikey = ? "
                        "AND time >= ?", (name, key, time.time() - self.idempotency_ttl)).fetchone()
        return None if row is None else Recorded(row[0], int(row[1]), json.loads(row[2]))

    def _remember(self, c, name: str, key: str, request: str, status: int, response: dict) -> None:
        now = time.time()
        c.execute("DELETE FROM idempotent WHERE time < ?", (now - self.idempotency_ttl,))
        c.execute("INSERT INTO idempotent (account, ikey, request, status, response, time) VALUES (?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT (account, ikey) DO NOTHING", (name, key, request, status, json.dumps(response), now))

    def recorded(self, name: str, key: str) -> Optional[Recorded]:
        """The answer given to ``name``'s ``Idempotency-Key`` ``key`` (``None``: none yet, or expired)."""
        return self._recorded(self._db(), name, key)

    def remember(self, name: str, key: str, request: str, status: int, response: dict) -> None:
        """Keep a final refusal (402, 403) under an ``Idempotency-Key``, so its retry gets the same
        answer; a key that holds an answer already keeps it."""
        with self._transaction() as c:
            self._remember(c, name, key, request, status, response)

    def names(self) -> list[str]:
        return [name for (name,) in self._db().execute("SELECT name FROM accounts ORDER BY name")]

    def usage(self, name: str) -> dict:
        a = self.account(name)
        return {"account": a.name, "used": a.used, "requests": a.requests, "budget": a.budget,
                "remaining": a.remaining}

    def total(self, name: Optional[str] = None) -> int:
        """Queries in the batch rows (of one account, or of all)."""
        sql, args = ("SELECT COALESCE(SUM(count), 0) FROM batches", ())
        if name is not None:
            sql, args = sql + " WHERE account = ?", (name,)
        return int(self._db().execute(sql, args).fetchone()[0])

    def batches(self, name: str) -> list[dict]:
        rows = self._db().execute("SELECT id, time, count, input_hashes, decisions FROM batches WHERE account = ? "
                                  "ORDER BY id", (name,)).fetchall()
        return [{"id": i, "time": t, "count": n, "input_hashes": json.loads(h), "decisions": json.loads(d)}
                for i, t, n, h, d in rows]

    # ------------------------------------------------------------------ defense state

    @staticmethod
    def _put_state(c, name: str, defense: str, state: dict) -> None:
        c.execute("INSERT INTO defense_state (account, defense, state) VALUES (?, ?, ?) "
                  "ON CONFLICT (account, defense) DO UPDATE SET state = excluded.state",
                  (name, defense, json.dumps(state)))

    def save_state(self, name: str, defense: str, state: dict) -> None:
        """Keep a defense's per-account counters (JSON-serialisable) across restarts."""
        with self._transaction() as c:
            self._put_state(c, name, defense, state)

    def load_state(self, name: str, defense: str) -> dict:
        row = self._db().execute("SELECT state FROM defense_state WHERE account = ? AND defense = ?",
                                 (name, defense)).fetchone()
        return {} if row is None else json.loads(row[0])

    def load_rows(self, name: str, defense: str) -> dict[str, torch.Tensor]:
        """Each history of a defense for an account, its rows in the order they were answered."""
        parts: dict[str, list] = {}
        for key, dim, data in self._db().execute("SELECT name, dim, rows FROM defense_rows WHERE account = ? AND "
                                                 "defense = ? ORDER BY id", (name, defense)):
            parts.setdefault(key, []).append(torch.frombuffer(bytearray(data), dtype=torch.float32).view(-1, dim))
        return {key: torch.cat(chunks) for key, chunks in parts.items()}
