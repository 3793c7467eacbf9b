"""The attacks over HTTP against serve.py for real (its own process, a free local port): stealhead.py
with head access, knockoff.py against a served classifier and legitimate.py give what they give
in-process with the same seed; head outputs go only to head-access accounts; the budget comes
from /v1/usage, and a run the account cannot pay for stops before its first query."""
import json

import pytest
import torch
from serving_helpers import TINY, start_server, tiny_victim_and_accounts

import knockoff
import legitimate
import serve
import steal
import stealhead
from attacks.client import HTTPConnection, QueryClient
from models import load_checkpoint
from service.ledger import Ledger
from utils import QueryBudgetExceeded, UserError

ROOMY = ["--max-batch", "256", "--max-body-mb", "4"]  # legitimate.py sends 256 images per call


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    victim, ledger, keys = tiny_victim_and_accounts(tmp_path_factory.mktemp("serve_attacks"), {
        "headed": ["--head-access"], "plain": [], "poor": ["--budget", "10"]})
    encoder, encoder_url = start_server(victim, ledger, extra=ROOMY)
    classifier, classifier_url = start_server(victim, ledger, extra=[*ROOMY, "--outputs", "logits", "probabilities"])
    yield {"encoder": encoder_url, "classifier": classifier_url, "keys": keys, "victim": victim, "ledger": ledger}
    for proc in (encoder, classifier):
        proc.terminate()
        proc.wait(timeout=30)


def _same_tensors(a: dict, b: dict, *names):
    for name in names:
        sa, sb = a[name]["state_dict"], b[name]["state_dict"]
        assert sa.keys() == sb.keys()
        for key, tensor in sa.items():
            assert torch.equal(tensor, sb[key]), (name, key)


def test_outputs_follow_head_access(servers):
    headed = HTTPConnection(servers["encoder"], servers["keys"]["headed"], output="representation+head")
    assert set(headed.info["outputs"]) == {"representation", "head", "representation+head"}
    assert headed.info["parts"]["representation"] + headed.info["parts"]["head"] == headed.out_dim
    plain = HTTPConnection(servers["encoder"], servers["keys"]["plain"])
    assert set(plain.info["outputs"]) == {"representation"}
    with pytest.raises(UserError, match="--head-access"):
        HTTPConnection(servers["encoder"], servers["keys"]["plain"], output="head")
    clf = HTTPConnection(servers["classifier"], servers["keys"]["plain"])
    assert clf.info["answers"] == "logits" and set(clf.info["outputs"]) == {"logits", "probabilities"}
    assert clf.info["task"] == "digits" and clf.out_dim == clf.info["classes"] == 10
    with pytest.raises(UserError, match="does not answer 'top5'"):
        HTTPConnection(servers["classifier"], servers["keys"]["plain"], output="top5")


def test_stealhead_with_head_access_over_http_equals_in_process(servers, tmp_path, monkeypatch):
    """Its augmented views travel as uint8 (client.wire_images), so the in-process run here sends
    the same rounded views: the service then answers the same images either way."""
    from attacks.client import wire_images
    from service import victim

    answer = victim.Connection.answer
    monkeypatch.setattr(victim.Connection, "answer", lambda self, images: answer(self, wire_images(images)))
    flags = ["--num_queries", "32", "-b", "16", "--epochs", "1", "--losshead", "msewithhead", "--device", "cpu",
             "--seed", "2"]
    ledger = Ledger(servers["ledger"])
    over_http = stealhead.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["headed"],
                                "--logdir", str(tmp_path / "http"), *flags])
    assert ledger.usage("headed")["used"] == 32
    in_process = stealhead.main(["--victim-checkpoint", str(servers["victim"]), "--logdir", str(tmp_path / "local"),
                                 *flags])
    a, b = load_checkpoint(over_http), load_checkpoint(in_process)
    _same_tensors(a, b, "encoder", "head", "recreated_head")
    assert a["queries_used"] == b["queries_used"] == 32
    # an account without head access is refused before it spends anything
    with pytest.raises(UserError, match="does not answer 'representation\\+head'.*--head-access"):
        stealhead.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["plain"],
                        "--logdir", str(tmp_path / "plain"), *flags])
    assert ledger.usage("plain")["used"] == 0
    with pytest.raises(UserError, match="owner's flags --victim-checkpoint"):
        stealhead.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["headed"],
                        "--victim-checkpoint", str(servers["victim"]), "--logdir", str(tmp_path / "x"), *flags])


@pytest.fixture
def one_thread(monkeypatch):
    """The owner's linear probe (L-BFGS) moves in its last bits with the thread count; the served
    one is fitted on one thread (serving_helpers), so the in-process owner fits on one too."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_knockoff_over_http_equals_in_process(servers, tmp_path, one_thread):
    # FGSM steps of whole uint8 levels: the adversarial images travel exactly
    flags = ["--num_queries", "64", "-b", "32", "--epochs", "1", "--fgsm-eps", str(8 / 255), "--device", "cpu",
             "--modeloutput", "logits", "--seed", "0"]  # the server's probe is fitted with its --seed, 0
    before = Ledger(servers["ledger"]).usage("headed")["used"]
    over_http = knockoff.main(["--victim-url", servers["classifier"], "--api-key", servers["keys"]["headed"],
                               "--logdir", str(tmp_path / "http"), *flags])
    in_process = knockoff.main(["--victim-checkpoint", str(servers["victim"]), "--logdir", str(tmp_path / "local"),
                                *flags])
    _same_tensors(load_checkpoint(tmp_path / "http" / "checkpoint.pt"),
                  load_checkpoint(tmp_path / "local" / "checkpoint.pt"), "encoder", "head")
    measured = over_http.pop("evaluation_queries")
    assert over_http == in_process
    # the victim measured through the service: 200 evaluation images, an FGSM and a noise copy of each
    # it got right
    assert 200 < measured <= 200 * 3
    assert Ledger(servers["ledger"]).usage("headed")["used"] == before + 64 + measured


def test_legitimate_over_http_equals_in_process(servers, tmp_path):
    flags = ["--num_queries", "100", "--epochs", "2", "--device", "cpu", "--seed", "4"]
    before = Ledger(servers["ledger"]).usage("plain")["used"]
    over_http = legitimate.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["plain"],
                                 "--logdir", str(tmp_path / "http"), *flags])
    in_process = legitimate.main(["--victim-checkpoint", str(servers["victim"]), "--logdir",
                                  str(tmp_path / "local"), *flags])
    assert over_http == in_process
    assert Ledger(servers["ledger"]).usage("plain")["used"] == before + 100 + 200
    config = (tmp_path / "http" / "config.yaml").read_text()
    assert servers["keys"]["plain"] not in config  # the key never lands in the run directory


def test_the_budget_comes_from_v1_usage_and_a_poor_account_spends_nothing(servers, tmp_path):
    poor = HTTPConnection(servers["encoder"], servers["keys"]["poor"])
    assert QueryClient(poor).budget == 10 and QueryClient(poor, budget=4).budget == 4
    with pytest.raises(QueryBudgetExceeded, match="10 queries left .* fewer than the 64 this run will spend"):
        steal.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["poor"], "--losstype", "mse",
                    "--num_queries", "64", "--epochs", "1", "--device", "cpu", "--logdir", str(tmp_path / "s")])
    assert not (tmp_path / "s" / "checkpoint.pt").exists()
    with pytest.raises(QueryBudgetExceeded, match="10 queries left"):
        legitimate.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["poor"],
                         "--num_queries", "5", "--epochs", "1", "--device", "cpu", "--logdir", str(tmp_path / "l")])
    with pytest.raises(QueryBudgetExceeded, match=r"10 queries left .*1864 this run needs \(64 for the attack"):
        knockoff.main(["--victim-url", servers["classifier"], "--api-key", servers["keys"]["poor"],
                       "--num_queries", "64", "--epochs", "1", "--device", "cpu", "--logdir", str(tmp_path / "k")])
    usage = Ledger(servers["ledger"]).usage("poor")
    assert usage["used"] == 0 and usage["requests"] == 0
    # several accounts: their total is the budget (an unlimited one makes it unlimited)
    from attacks.client import SybilConnection

    both = SybilConnection([poor, HTTPConnection(servers["encoder"], servers["keys"]["poor"])])
    assert both.remaining() == 20
    assert SybilConnection([poor, HTTPConnection(servers["encoder"], servers["keys"]["plain"])]).remaining() is None
    assert json.loads(json.dumps(poor.usage()))["remaining"] == 10


def test_access_head_over_http_equals_in_process(servers, tmp_path):
    flags = ["--losstype", "mse", "--num_queries", "32", "--epochs", "1", "-b", "16", "--device", "cpu",
             "--victimhead", "True", "--stolenhead", "True", "--seed", "5"]
    over_http = steal.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["headed"],
                            "--logdir", str(tmp_path / "http"), *flags])
    in_process = steal.main(["--victim-checkpoint", str(servers["victim"]), "--logdir", str(tmp_path / "local"),
                             *flags])
    _same_tensors(load_checkpoint(over_http), load_checkpoint(in_process), "encoder", "head")
    with pytest.raises(UserError, match="does not answer 'head'"):
        steal.main(["--victim-url", servers["encoder"], "--api-key", servers["keys"]["plain"],
                    "--logdir", str(tmp_path / "plain"), *flags])


def test_serve_builds_a_supervised_victim_as_its_classifier(tmp_path):
    import simclrsup
    from service.victim import load_victim

    ckpt = simclrsup.main([*TINY, "--epochs", "1", "--logdir", str(tmp_path / "sup")])
    args = serve.build_parser().parse_args(["--victim-checkpoint", str(ckpt), "--victimtype", "supervised"])
    service, _ = serve.build_victim_service(args, "cpu")
    assert service.outputs == ["probabilities", "logits", "top5", "labels"] and service.answers == "probabilities"
    assert service.info()["task"] == "digits" and service.info()["outputs"]["logits"] == 10
    loaded = load_victim(str(ckpt))
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        expected = loaded.head.eval()(loaded.encoder.eval()(x)).softmax(1)
    assert torch.allclose(service.answer("a", x), expected, atol=1e-6)
    for flags, error in ((["--victimtype", "simclr"], "--victimtype simclr does not match"),
                         (["--victimtype", "supervised", "--outputs", "logits", "representation"], "mixes"),
                         (["--victimtype", "supervised", "--outputs", "representation", "--dataset-test", "digits"],
                          "--dataset-test names a served classifier")):
        with pytest.raises(UserError, match=error):
            serve.build_victim_service(serve.build_parser().parse_args(["--victim-checkpoint", str(ckpt), *flags]),
                                       "cpu")
