"""defenses.pow: HashCash puzzles -- digests, verification, the solver, the cost model, difficulty."""
import hashlib
import json
import math

import pytest

from defenses.pow import Puzzle, difficulty, digest, expected_hashes, leading_zero_bits, new_puzzle, solve, verify


def test_leading_zero_bits_on_hand_built_digests():
    assert leading_zero_bits(b"\x00\x00\x80" + bytes(29)) == 16
    assert leading_zero_bits(b"\x01" + b"\xff" * 31) == 7
    assert leading_zero_bits(bytes(32)) == 256
    assert leading_zero_bits(b"\xff" * 32) == 0
    assert leading_zero_bits(b"\x00\x0f" + bytes(30)) == 12


def test_digest_is_sha256_of_challenge_and_big_endian_nonce():
    challenge = bytes(range(32))
    assert digest(challenge.hex(), 258) == hashlib.sha256(challenge + b"\x00" * 6 + b"\x01\x02").digest()
    for bad in (-1, 2 ** 64, 1.0, "1", True):
        with pytest.raises(ValueError, match="nonce"):
            digest(challenge.hex(), bad)


def test_solved_nonce_verifies_and_a_failing_nonce_is_rejected():
    puzzle = new_puzzle(10, challenge=b"\x07" * 32)
    nonce, tried = solve(puzzle)
    assert verify(puzzle, nonce)
    assert leading_zero_bits(digest(puzzle.challenge, nonce)) >= 10
    assert tried == nonce + 1
    bad = next(n for n in range(nonce + 1, nonce + 1000) if leading_zero_bits(digest(puzzle.challenge, n)) < 10)
    assert not verify(puzzle, bad)


def test_solve_from_start_counts_hashes_from_start():
    puzzle = new_puzzle(6, challenge=b"\x01" * 32)
    first, _ = solve(puzzle)
    nonce, tried = solve(puzzle, start=first + 1)
    assert nonce > first and verify(puzzle, nonce) and tried == nonce - first
    with pytest.raises(ValueError, match="start"):
        solve(puzzle, start=-1)


@pytest.mark.parametrize("bad", [-1, 2 ** 64, "3", 3.0, True, False, None, b"\x00"])
def test_verify_rejects_non_nonces_without_raising(bad):
    assert verify(new_puzzle(0, challenge=bytes(32)), bad) is False


def test_zero_bits_is_free_and_any_nonce_verifies():
    puzzle = new_puzzle(0, challenge=bytes(32))
    assert solve(puzzle) == (0, 1)
    assert solve(puzzle, start=12345) == (12345, 1)
    assert verify(puzzle, 0) and verify(puzzle, 2 ** 64 - 1)


def test_solver_returns_the_smallest_verifying_nonce():
    puzzle = new_puzzle(8, challenge=bytes(32))
    nonce, tried = solve(puzzle)
    assert verify(puzzle, nonce) and tried == nonce + 1
    assert not any(verify(puzzle, n) for n in range(nonce))


def test_mean_hashes_matches_the_geometric_mean():
    bits = 6
    counts = [solve(new_puzzle(bits, challenge=i.to_bytes(32, "big")))[1] for i in range(200)]
    mean = sum(counts) / len(counts)
    assert 0.6 * expected_hashes(bits) <= mean <= 1.5 * expected_hashes(bits)
    assert expected_hashes(bits) == 64.0 and expected_hashes(0) == 1.0


def test_difficulty_is_monotone_with_fixed_ends():
    k_min, k_max = 4, 20
    ks = [difficulty(i / 100, k_min, k_max) for i in range(101)]
    assert all(a <= b for a, b in zip(ks, ks[1:]))
    assert ks[0] == k_min and ks[-1] == k_max
    assert set(ks) == set(range(k_min, k_max + 1))
    assert all(isinstance(k, int) for k in ks)
    assert difficulty(0.5, 0, 10) == 5


def test_difficulty_clamps_and_nan_is_most_suspicious():
    assert difficulty(-3.0, 2, 9) == 2 and difficulty(-math.inf, 2, 9) == 2
    assert difficulty(7.5, 2, 9) == 9 and difficulty(math.inf, 2, 9) == 9
    assert difficulty(math.nan, 2, 9) == 9
    assert difficulty(0.7, 5, 5) == 5


@pytest.mark.parametrize("k_min,k_max", [(-1, 4), (5, 4), (0, 33), (1.0, 4), (0, True)])
def test_difficulty_rejects_bad_ranges(k_min, k_max):
    with pytest.raises(ValueError, match="k_min <= k_max"):
        difficulty(0.5, k_min, k_max)


def test_puzzle_round_trips_through_json_and_validates():
    puzzle = new_puzzle(12)
    assert len(bytes.fromhex(puzzle.challenge)) == 32
    assert new_puzzle(12).challenge != puzzle.challenge
    back = Puzzle.from_dict(json.loads(json.dumps(puzzle.to_dict())))
    assert back == puzzle
    for bad in ({"challenge": "zz", "bits": 3}, {"challenge": "00", "bits": -1}, {"challenge": "00", "bits": 257},
                {"challenge": "00", "bits": "3"}, {"challenge": 0, "bits": 3}, {"bits": 3}, ["00", 3]):
        with pytest.raises(ValueError):
            Puzzle.from_dict(bad)
