"""HashCash proof of work: the core of a calibrated proof-of-work defense.

Scheme (Dziedzic et al., ICLR 2022, "Increasing the cost of model extraction with
calibrated proof of work"): before the victim answers a query, the client must solve a
puzzle. The victim issues a :class:`Puzzle` -- a random ``challenge`` and a difficulty of
``bits`` -- and the client searches for a ``nonce`` (an unsigned 64-bit integer) such that

    sha256(bytes.fromhex(challenge) + nonce.to_bytes(8, "big"))

starts with at least ``bits`` zero bits. Checking an answer costs the victim one hash
(:func:`verify`); finding one costs the client a brute-force search (:func:`solve`). The
defense is *calibrated* because ``bits`` is chosen per query from how far the client's
queries deviate from those of a legitimate user (:func:`difficulty` maps a deviation score
in [0, 1] linearly onto ``[k_min, k_max]`` bits): honest users pay little, extraction
attacks pay a lot.

Cost model: each hash independently succeeds with probability ``p = 2**-bits``, so the
number of hashes a solver tries is geometric with mean ``1/p = 2**bits``
(:func:`expected_hashes`) and standard deviation ``sqrt(1 - p)/p``, about as large as the
mean. At a hash rate of ``R`` hashes per second a puzzle takes ``2**bits / R`` seconds on
average: every extra bit doubles the client's expected work while the victim's check stays
at one hash.

Only the standard library is used, so this module can run on either side of an HTTP wire;
:meth:`Puzzle.to_dict` / :meth:`Puzzle.from_dict` give its JSON form.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

NONCE_BYTES = 8
NONCE_LIMIT = 1 << (8 * NONCE_BYTES)  # nonces are 0 <= nonce < 2**64
DIGEST_BITS = 256
MAX_DIFFICULTY_BITS = 32  # the largest k_max :func:`difficulty` accepts
CHALLENGE_BYTES = 32


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Puzzle:
    """A proof-of-work puzzle: find a nonce whose digest with ``challenge`` has ``bits`` leading zero bits.

    ``challenge`` is a hex string (by default 32 random bytes, see :func:`new_puzzle`);
    ``bits`` is an integer in [0, 256].
    """

    challenge: str
    bits: int

    def __post_init__(self):
        if not isinstance(self.challenge, str):
            raise ValueError(f"the puzzle challenge must be a hex string, got {type(self.challenge).__name__}")
        try:
            bytes.fromhex(self.challenge)
        except ValueError:
            raise ValueError(f"the puzzle challenge must be a hex string, got {self.challenge!r}") from None
        if not _is_int(self.bits) or not 0 <= self.bits <= DIGEST_BITS:
            raise ValueError(f"the puzzle difficulty must be an integer number of bits in [0, {DIGEST_BITS}], "
                             f"got {self.bits!r}")

    def to_dict(self) -> dict:
        """The puzzle as a JSON-ready dict ``{"challenge": hex, "bits": int}``."""
        return {"challenge": self.challenge, "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> "Puzzle":
        """The puzzle :meth:`to_dict` gave; raises ValueError for a malformed dict."""
        if not isinstance(d, dict) or "challenge" not in d or "bits" not in d:
            raise ValueError(f"a puzzle must be a dict with keys 'challenge' and 'bits', got {d!r}")
        return cls(challenge=d["challenge"], bits=d["bits"])


def digest(challenge_hex: str, nonce: int) -> bytes:
    """sha256 of the challenge bytes followed by the nonce as 8 big-endian bytes."""
    if not _is_int(nonce) or not 0 <= nonce < NONCE_LIMIT:
        raise ValueError(f"the nonce must be an integer with 0 <= nonce < 2**64, got {nonce!r}")
    return hashlib.sha256(bytes.fromhex(challenge_hex) + nonce.to_bytes(NONCE_BYTES, "big")).digest()


def leading_zero_bits(d: bytes) -> int:
    """Number of leading zero bits of ``d`` (``8 * len(d)`` when it is all zeros)."""
    n = 8 * len(d)
    return n - int.from_bytes(d, "big").bit_length()


def verify(puzzle: Puzzle, nonce) -> bool:
    """True iff ``nonce`` solves ``puzzle``; False (never an exception) for a nonce that is not
    an int in [0, 2**64) -- bools, floats and strings included."""
    if not _is_int(nonce) or not 0 <= nonce < NONCE_LIMIT:
        return False
    return leading_zero_bits(digest(puzzle.challenge, nonce)) >= puzzle.bits


def solve(puzzle: Puzzle, start: int = 0) -> tuple[int, int]:
    """Brute-force the smallest nonce >= ``start`` that solves ``puzzle``.

    Returns ``(nonce, hashes tried)``. The hash state of the challenge is computed once and
    copied per nonce, and each digest is compared as a 256-bit big-endian integer against
    ``2**(256 - bits)`` (at least ``bits`` leading zeros iff the digest is below it). Raises
    ValueError if ``start`` is not a valid nonce or the search runs past 2**64 - 1.
    """
    if not _is_int(start) or not 0 <= start < NONCE_LIMIT:
        raise ValueError(f"the start nonce must be an integer with 0 <= start < 2**64, got {start!r}")
    if puzzle.bits == 0:
        return start, 1
    # Both sides are 32-byte big-endian, so comparing the bytes compares the integers (and
    # skips an int.from_bytes per hash, ~20% faster).
    threshold = (1 << (DIGEST_BITS - puzzle.bits)).to_bytes(DIGEST_BITS // 8, "big")
    copy = hashlib.sha256(bytes.fromhex(puzzle.challenge)).copy
    nonce = start
    while nonce < NONCE_LIMIT:
        h = copy()
        h.update(nonce.to_bytes(NONCE_BYTES, "big"))
        if h.digest() < threshold:
            return nonce, nonce - start + 1
        nonce += 1
    raise ValueError(f"no nonce in [{start}, 2**64) solves the puzzle at {puzzle.bits} bits")


def expected_hashes(bits: int) -> float:
    """Mean number of hashes to solve a ``bits`` puzzle: ``2**bits``, the mean of a geometric
    distribution with success probability ``2**-bits``."""
    return float(2 ** bits)


def difficulty(score: float, k_min: int, k_max: int) -> int:
    """Puzzle bits for a deviation score: ``k_min + round((k_max - k_min) * score)``.

    ``score`` is clamped to [0, 1] and NaN counts as 1 (most suspicious), so the result is
    monotone non-decreasing in the score, ``k_min`` at 0 and ``k_max`` at 1. Python's
    ``round`` sends exact halves to the even integer. Raises ValueError unless
    ``0 <= k_min <= k_max <= 32``.
    """
    if not (_is_int(k_min) and _is_int(k_max) and 0 <= k_min <= k_max <= MAX_DIFFICULTY_BITS):
        raise ValueError(f"difficulty needs integers with 0 <= k_min <= k_max <= {MAX_DIFFICULTY_BITS}, "
                         f"got k_min={k_min!r}, k_max={k_max!r}")
    score = float(score)
    if math.isnan(score):
        score = 1.0
    score = min(1.0, max(0.0, score))
    return k_min + round((k_max - k_min) * score)


def new_puzzle(bits: int, challenge: bytes | None = None) -> Puzzle:
    """A puzzle of ``bits`` bits on ``challenge`` (default: 32 bytes from ``os.urandom``)."""
    if challenge is None:
        challenge = os.urandom(CHALLENGE_BYTES)
    if not isinstance(challenge, (bytes, bytearray)):
        raise ValueError(f"the challenge must be bytes, got {type(challenge).__name__}")
    return Puzzle(challenge=bytes(challenge).hex(), bits=bits)


class ProofPayer:
    """The customer's side of the proof-of-work defense, shared by every connection (in-process
    and HTTP): ``pay(puzzle)`` solves a puzzle and counts what it cost (puzzles, hashes,
    seconds); ``costs()`` reports it for the query log."""

    def __init__(self):
        self.puzzles, self.pow_hashes, self.pow_seconds = 0, 0, 0.0

    def pay(self, puzzle: Puzzle) -> int:
        import time

        t0 = time.perf_counter()
        nonce, hashes = solve(puzzle)
        self.pow_seconds += time.perf_counter() - t0
        self.pow_hashes += hashes
        self.puzzles += 1
        return nonce

    def costs(self) -> dict:
        return {"pow_puzzles": self.puzzles, "pow_hashes": self.pow_hashes, "pow_seconds": round(self.pow_seconds, 4)}
