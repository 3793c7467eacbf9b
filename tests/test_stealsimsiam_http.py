"""stealsimsiam.py against a SimSiam-format victim served by serve.py for real (its own process, a free
local port): the steal over HTTP equals the in-process one with the same seed, the ledger counts
exactly the queries used (also when two torchrun processes share one key), an account that
cannot pay for the job stops before its first query, and --pretrained with --victim-url is
one error.

The queries are exact on the wire: the ImageFolder is read at --image-size (16 px, the size the
service accepts: `serve.py --input-size 16`), so every query is a uint8 image whose float view
k/255 goes back to k when attacks.client.wire_images rounds it; the stolen encoder's augmentations
(--useaug True here) are made on the attacker's side and never sent. So the in-process run needs
no rounding of its own, and the two checkpoints are compared tensor by tensor."""
import json

import pytest
import torch
from serving_helpers import start_server

import serve
import stealsimsiam
from data_aug import get_dataset, write_image_folder
from models import build_encoder, load_checkpoint, save_simsiam
from service.ledger import Ledger
from tests.test_stealsimsiam import BATCH, EPOCHS, IMAGENET_MEAN, IMAGENET_STD, N_QUERIES, _torchrun
from utils import QueryBudgetExceeded, UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny ImageFolder (digits, 16 px), a width-4 ResNet18 victim in SimSiam format served at 16 px,
    and a ledger with a roomy account, a second one for torchrun and one too poor for the job."""
    root = tmp_path_factory.mktemp("imagenet_http")
    write_image_folder(get_dataset("digits", "train").subset(range(160)), root, "train")
    torch.manual_seed(0)
    victim = save_simsiam(root / "checkpoint_0099.pth.tar",
                          build_encoder("resnet18", stem="cifar", width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    ledger = str(root / "ledger.db")
    keys = {name: serve.main(["accounts", "create", name, "--ledger", ledger, *flags])
            for name, flags in {"thief": [], "ranks": ["--budget", str(N_QUERIES)],
                                "poor": ["--budget", str(N_QUERIES - 1)]}.items()}
    proc, url = start_server(victim, ledger, extra=["--input-size", "16"])
    yield {"root": root, "victim": victim, "ledger": ledger, "keys": keys, "url": url}
    proc.terminate()
    proc.wait(timeout=30)


def _args(served, logdir, *extra):
    return ["--data", str(served["root"]), "--datasetsteal", "imagenet", "--num_queries", str(N_QUERIES),
            "-b", str(BATCH), "--epochs", str(EPOCHS), "--lr", "0.2", "--useaug", "True", "--crop-min-scale", "0.5",
            "--losstype", "mse", "--logdir", str(logdir), "--seed", "3", *extra]


def _http(served, account):
    return ["--victim-url", served["url"], "--api-key", served["keys"][account]]


def test_the_card_carries_what_stealsimsiam_needs(served):
    from attacks.client import HTTPConnection

    card = HTTPConnection(served["url"], served["keys"]["thief"]).info
    assert card["dataset"] == "imagenet" and card["input_size"] == 16 and card["out_dim"] == 32
    assert (card["arch"], card["width"], card["stem"]) == ("resnet18", 4, "cifar") and not card["has_head"]


def test_steal_over_http_equals_in_process_and_the_ledger_counts_it(served, tmp_path):
    ledger = Ledger(served["ledger"])
    over_http = stealsimsiam.main([*_http(served, "thief"), *_args(served, tmp_path / "http")])
    assert ledger.usage("thief")["used"] == N_QUERIES
    in_process = stealsimsiam.main(["--pretrained", str(served["victim"]), "--image-size", "16",
                                    *_args(served, tmp_path / "local")])
    a, b = load_checkpoint(over_http), load_checkpoint(in_process)
    assert a["queries_used"] == b["queries_used"] == N_QUERIES and a["epoch"] == b["epoch"] == EPOCHS
    torch.testing.assert_close(load_checkpoint(tmp_path / "http" / "answers.pt")["answers"],
                               load_checkpoint(tmp_path / "local" / "answers.pt")["answers"], atol=0, rtol=0)
    sa, sb = a["encoder"]["state_dict"], b["encoder"]["state_dict"]
    assert sa.keys() == sb.keys()
    for key, tensor in sa.items():
        assert torch.equal(tensor, sb[key]), key
    q = json.loads((tmp_path / "http" / "queries.json").read_text())
    assert q["queries_used"] == N_QUERIES and q["per_rank"] == [N_QUERIES]
    # the run records the service and its card, never the key itself
    config = a["config"]
    assert config["victim_checkpoint"] == served["url"] and config["victim_card"]["input_size"] == 16
    assert config["api_key"] == ["..." + served["keys"]["thief"][-4:]]
    assert served["keys"]["thief"] not in (tmp_path / "http" / "config.yaml").read_text()
    # a resumed run asks nothing again
    stealsimsiam.main([*_http(served, "thief"), *_args(served, tmp_path / "http"), "--resume"])
    assert ledger.usage("thief")["used"] == N_QUERIES


def test_two_processes_share_one_key_and_the_ledger_counts_the_total(served, tmp_path):
    run = _torchrun([*_http(served, "ranks"), *_args(served, tmp_path / "two", "--epochs", "1")])
    assert run.returncode == 0, run.stderr[-3000:]
    q = json.loads((tmp_path / "two" / "queries.json").read_text())
    assert q["queries_used"] == N_QUERIES and q["per_rank"] == [N_QUERIES // 2] * 2
    assert Ledger(served["ledger"]).usage("ranks")["used"] == N_QUERIES  # the account's whole budget, exactly
    # each rank's share (48) fits the poor account (95 left) but the job's 96 do not: every rank stops
    # before any rank asks a query, with one sentence
    poor = _torchrun([*_http(served, "poor"), *_args(served, tmp_path / "poor", "--epochs", "1")])
    assert poor.returncode != 0 and f"{N_QUERIES - 1} queries left" in poor.stderr, poor.stderr[-3000:]
    assert Ledger(served["ledger"]).usage("poor")["used"] == 0


def test_an_account_that_cannot_pay_stops_before_its_first_query(served, tmp_path):
    with pytest.raises(QueryBudgetExceeded, match=fr"{N_QUERIES - 1} queries left on the account\(s\) of --api-key, "
                                                  fr"fewer than the {N_QUERIES} of --num_queries"):
        stealsimsiam.main([*_http(served, "poor"), *_args(served, tmp_path / "poor")])
    assert Ledger(served["ledger"]).usage("poor")["used"] == 0
    assert not (tmp_path / "poor" / "answers.pt").exists()


def test_owner_flags_and_a_wrong_size_are_one_error(served, tmp_path):
    before = Ledger(served["ledger"]).usage("thief")["used"]
    with pytest.raises(UserError, match="the owner's flags --pretrained do not apply"):
        stealsimsiam.main([*_http(served, "thief"), "--pretrained", str(served["victim"]),
                           *_args(served, tmp_path / "owner")])
    with pytest.raises(UserError, match="--image-size 32 differs from the 16 px images"):
        stealsimsiam.main([*_http(served, "thief"), "--image-size", "32", *_args(served, tmp_path / "size")])
    with pytest.raises(UserError, match="--victim-url needs --api-key"):
        stealsimsiam.main(["--victim-url", served["url"], *_args(served, tmp_path / "nokey")])
    assert Ledger(served["ledger"]).usage("thief")["used"] == before  # nothing spent by these
