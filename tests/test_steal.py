"""steal.py end to end on tiny settings, query accounting, and its errors."""
import json

import pytest

import run
import steal
from models import load_checkpoint
from utils import UserError


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victim")
    return run.main(["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "1",
                     "--device", "cpu", "--logdir", str(logdir)])


@pytest.mark.parametrize("n_views", [1, 2])
def test_steal_counts_every_view_and_queries_each_once(tiny_victim, tmp_path, n_views):
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "mse", "--num_queries", "128",
                       "--n-views", str(n_views), "-b", "32", "--epochs", "3", "--device", "cpu",
                       "--logdir", str(tmp_path / "s")])
    meta = load_checkpoint(ckpt)
    assert meta["kind"] == "stolen" and meta["queries_used"] == 128 and meta["epoch"] == 3
    log = [json.loads(l) for l in (tmp_path / "s" / "queries.jsonl").read_text().splitlines()]
    # 128 queries = 128 / n_views images x n_views views; all asked in epoch 1, none again
    assert [r["new_queries"] for r in log] == [128, 0, 0]
    assert [r["cache_hits"] for r in log] == [0, 128, 128]
    assert {tuple(k)[1] for k in log[0]["new_keys"]} == set(range(n_views))
    assert max(tuple(k)[0] for k in log[0]["new_keys"]) == 128 // n_views - 1


def test_steal_errors(tiny_victim, tmp_path):
    base = ["--victim-checkpoint", str(tiny_victim), "--device", "cpu", "--epochs", "1"]
    # digits test split: 500 images, the last 100 held out -> 400 available
    with pytest.raises(UserError, match="more than the query set offers"):
        steal.main(base + ["--num_queries", "401", "--logdir", str(tmp_path / "a")])
    with pytest.raises(UserError, match="stolenhead"):
        steal.main(base + ["--num_queries", "64", "--width", "8", "--logdir", str(tmp_path / "b")])
    # a wider stolen model with its own head is fine
    steal.main(base + ["--num_queries", "64", "--width", "8", "--stolenhead", "True", "--logdir", str(tmp_path / "c")])
