"""sslextract.py against a classifier served by serve.py for real (its own process, a free local port):
the run over HTTP equals the in-process one with the same seed (the images travel exactly as uint8);
the distillation and the measurement of the victim are paid for before the first query, so an
account that cannot cover them spends nothing; the owner's flags are refused with one sentence."""
import pytest
import torch
from serving_helpers import start_server

import serve
import simclrsup
import sslextract
from models import load_checkpoint
from service.ledger import Ledger
from utils import QueryBudgetExceeded, UserError, read_jsonl

TINY = ["--dataset", "digits", "--width", "4", "--image-size", "8", "--device", "cpu"]
ATTACK = ["--pretrain-batch-size", "64", "-b", "32", "--max-epochs", "2", "--pool-epochs", "2", "--holdout", "100"]
DIGITS_TRAIN = 1097  # the digits train split (data_aug's offline set)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("sslextract_http")
    victim = simclrsup.main([*TINY, "-b", "64", "--epochs", "2", "--seed", "0", "--logdir", str(root / "victim")])
    ledger = str(root / "ledger.db")
    keys = {name: serve.main(["accounts", "create", name, "--ledger", ledger, *flags])
            for name, flags in {"attacker": [], "tight": ["--budget", "60"]}.items()}
    proc, url = start_server(victim, ledger, extra=["--victimtype", "supervised"])
    yield {"url": url, "keys": keys, "victim": victim, "ledger": ledger}
    proc.terminate()
    proc.wait(timeout=30)


def _http(served, account, tmp_path, *flags):
    return sslextract.main(["--victim-url", served["url"], "--api-key", served["keys"][account],
                            "--logdir", str(tmp_path), *ATTACK, *flags])


def test_over_http_equals_in_process(served, tmp_path):
    flags = ["--pretrain", "rotation", "--pretrain-epochs", "1", "--pretrained", str(tmp_path / "pre" / "c.pt"),
             "--query-fraction", "0.05", "--seed", "3", "--device", "cpu", "--width", "4"]
    ledger = Ledger(served["ledger"])
    over_http = _http(served, "attacker", tmp_path / "http", *flags)
    n = round(0.05 * DIGITS_TRAIN)
    measured = over_http.pop("evaluation_queries")
    assert 90 <= measured <= 100  # each distinct held-out image once
    assert ledger.usage("attacker")["used"] == n + measured
    # the same run with the owner's classifier in this process (the pre-trained encoder is reused)
    in_process = sslextract.main([*TINY, "--victim-checkpoint", str(served["victim"]),
                                  "--logdir", str(tmp_path / "local"), *ATTACK, *flags])
    assert over_http.pop("run_dir") != in_process.pop("run_dir")
    assert over_http == in_process and over_http["queries"] == n
    a, b = load_checkpoint(tmp_path / "http" / "checkpoint.pt"), load_checkpoint(tmp_path / "local" / "checkpoint.pt")
    for name in ("encoder", "head"):
        sa, sb = a[name]["state_dict"], b[name]["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(t, sb[k]) for k, t in sa.items()), name
    assert a["queries_used"] == b["queries_used"] == n
    ledger_lines = read_jsonl(tmp_path / "http" / "queries.jsonl")
    assert ledger_lines[0]["new_queries"] == n and all(line["new_queries"] == 0 for line in ledger_lines[1:])
    config = (tmp_path / "http" / "config.yaml").read_text()
    assert served["keys"]["attacker"] not in config and served["url"] in config  # the key never lands on disk


def test_a_budget_too_small_for_the_run_spends_nothing(served, tmp_path):
    # 55 distillation queries fit in the 60 left, but not with the ~100 held-out images to measure
    with pytest.raises(QueryBudgetExceeded, match=r"60 queries left .* fewer than the \d+ this run needs "
                                                  r"\(55 for the distillation.* to measure the victim on the 100 "
                                                  r"held-out images"):
        _http(served, "tight", tmp_path / "run", "--pretrain", "none", "--query-fraction", "0.05", "--device", "cpu")
    usage = Ledger(served["ledger"]).usage("tight")
    assert usage["used"] == 0 and usage["requests"] == 0
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_owner_flags_and_a_contradicted_card_are_one_sentence(served, tmp_path, script):
    for flags, error in ((["--victim-checkpoint", str(served["victim"])], "owner's flags --victim-checkpoint"),
                         (["--victimtype", "supervised"], "owner's flags --victimtype"),
                         (["--dataset", "digitsm"], "--dataset digitsm differs from the task .* \\(digits\\)"),
                         (["--image-size", "16"], "--image-size 16 differs from the input size")):
        with pytest.raises(UserError, match=error):
            _http(served, "attacker", tmp_path / "x", "--pretrain", "none", "--device", "cpu", *flags)
    r = script("sslextract.py", "--victim-url", served["url"], "--api-key", served["keys"]["attacker"],
               "--victim-checkpoint", str(served["victim"]), "--pretrain", "none", "--device", "cpu")
    assert r.returncode == 2 and "owner's flags --victim-checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()  # refused before the run directory is made
