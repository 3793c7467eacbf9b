"""Serving-side defenses: the registry, each defense's contract, and the service/client split."""
import json

import pytest
import torch

import legitimate
import run
import steal
from attacks import encoder as attack
from data_aug import get_dataset, to_float
from defenses import DEFENSES, build_defenses, defense_names
from defenses.detect import SimilarQueryDetection
from defenses.noise import NoisePerturbation
from defenses.poison import PredictionPoisoning
from defenses.pow import Puzzle, solve, verify
from defenses.pow_gate import ProofOfWork, ProofRejected
from models import build_encoder, build_mlp, load_checkpoint
from service.victim import EncoderBackend, ProofRequired, VictimService, build_service, load_victim
from utils import UserError, get_logger, prepare_run_dir


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victim")
    return run.main(["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "2",
                     "--device", "cpu", "--logdir", str(logdir)])


def _config(**over):
    base = {"defenses": None, "defence": False, "losstype": "mse", "mu": 5.0, "sigma": 0.5, "detect_on": "head",
            "detect_metric": "cosine", "detect_threshold": None, "detect_mu": 1000.0, "pow_bits_min": 0,
            "pow_bits_max": 12, "pow_threshold": None, "poison_strength": 1.0, "seed": 0}
    return {**base, **over}


def _answers(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ registry and flags


def test_registry_names_and_the_reference_switch():
    assert set(DEFENSES) == {"noise", "detect", "pow", "poison"}
    assert defense_names(_config()) == []
    # --defence True: detection against infonce/softnn, noise otherwise (the reference's coupling)
    assert defense_names(_config(defence=True, losstype="infonce")) == ["detect"]
    assert defense_names(_config(defence=True, losstype="softnn")) == ["detect"]
    assert defense_names(_config(defence=True, losstype="mse")) == ["noise"]
    assert defense_names(_config(defence=True, defenses=["pow", "noise"])) == ["pow", "noise"]
    chain = build_defenses(_config(defenses=["noise", "detect", "pow"]), "cpu")
    assert [type(d) for d in chain] == [NoisePerturbation, SimilarQueryDetection, ProofOfWork]
    assert chain[1].threshold == 0.9 and build_defenses(_config(defenses=["detect"]), "paper")[0].threshold == 0.6


@pytest.mark.parametrize("over,match", [
    ({"defenses": ["nope"]}, "unknown defense 'nope'"),
    ({"defenses": ["noise"], "sigma": -1.0}, "--sigma must be a non-negative number"),
    ({"defenses": ["noise"], "sigma": float("nan")}, "--sigma must be a non-negative number"),
    ({"defenses": ["detect"], "detect_threshold": 1.5}, r"outside \[-1, 1\]"),
    ({"defenses": ["detect"], "detect_metric": "l2", "detect_threshold": -2.0}, "positive, finite distance"),
    ({"defenses": ["pow"], "pow_bits_min": 9, "pow_bits_max": 3}, "0 <= min <= max <= 32"),
    ({"defenses": ["poison"], "poison_strength": -0.5}, "--poison-strength must be a non-negative"),
])
def test_bad_defense_settings_get_one_sentence(over, match):
    with pytest.raises(UserError, match=match):
        build_defenses(_config(**over), "cpu")


def test_cli_rejects_bad_defense_flags_with_a_sentence(tiny_victim, tmp_path, script):
    res = script("steal.py", "--victim-checkpoint", tiny_victim, "--defenses", "noise", "--sigma", "-1",
                 "--num_queries", "32", "--epochs", "1", "--logdir", tmp_path / "s")
    assert res.returncode == 2 and "argument --sigma: expects a non-negative number" in res.stderr
    assert "Traceback" not in res.stderr
    res = script("steal.py", "--victim-checkpoint", tiny_victim, "--defenses", "detect", "--detect-threshold", "1.5",
                 "--num_queries", "32", "--epochs", "1", "--logdir", tmp_path / "t")
    assert res.returncode == 2 and "outside [-1, 1]" in res.stderr.splitlines()[-1]
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ each defense


def test_every_defense_is_the_identity_at_zero_strength():
    answers = _answers()
    images = torch.rand(64, 3, 8, 8)
    outputs = {"representation": answers, "head": answers[:, :8]}
    zero = [NoisePerturbation(mu=10.0, sigma=0.0), SimilarQueryDetection("head", "cosine", 0.0, sigma=0.0),
            PredictionPoisoning(strength=0.0)]
    for defense in zero:
        out = defense.apply("a", images, answers, {}, outputs=outputs)
        assert out is answers or (torch.equal(out, answers) and out.dtype == answers.dtype), defense.name
    pow_out = ProofOfWork(0, 0).apply("a", images, answers, {}, outputs=outputs)
    assert torch.equal(pow_out, answers) and pow_out.dtype == answers.dtype


def test_noise_has_the_requested_mean_and_std():
    answers = torch.zeros(2000, 50)
    noisy = NoisePerturbation(mu=10.0, sigma=3.0, seed=0).apply("a", None, answers, {}, outputs={})
    noise = (noisy - answers).flatten()
    # 100,000 draws: the standard error of the mean is 3 / sqrt(1e5) = 0.0095
    assert abs(noise.mean().item() - 10.0) < 5 * 0.0095
    assert abs(noise.std().item() - 3.0) < 0.03
    assert noisy.shape == answers.shape and noisy.dtype == answers.dtype
    # a one-sample t-test cannot reject the requested mean
    from scipy import stats

    assert stats.ttest_1samp(noise.numpy(), 10.0).pvalue > 0.01


def test_detector_flags_duplicates_and_near_copies_not_other_images_per_account():
    service = VictimService(_IdentityBackend(), defenses=[SimilarQueryDetection("rep", "cosine", 0.9, sigma=5.0)])
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    near = torch.tensor([[0.98, 0.1, 0.0]])  # cosine 0.995 with a
    first = service.answer("alice", a)
    assert torch.equal(first, a)                                   # nothing earlier: answered as is
    assert service.answer("alice", b).equal(b)                     # a different image: not flagged
    flagged = service.answer("alice", torch.cat([a, near]))        # an exact duplicate and a near copy
    assert (flagged - 1000).abs().max() < 50                       # both replaced by N(1000, 5^2)
    assert service.answer("bob", a).equal(a)                       # bob's history is his own
    state = service.accounts["alice"].state["detect"]
    assert state["checked"] == 4 and state["flagged"] == 2
    assert service.accounts["bob"].state["detect"]["flagged"] == 0


class _IdentityBackend:
    """A service backend whose representation is the input itself (rows of B x D)."""
    out_dims = {"representation": 3}

    def outputs(self, x):
        return {"representation": x.float()}


def test_pow_rejects_a_wrong_nonce_accepts_the_right_one_and_binds_the_batch():
    gate = ProofOfWork(bits_min=4, bits_max=4, on="rep")
    service = VictimService(_IdentityBackend(), defenses=[gate])
    x = torch.rand(4, 3)
    with pytest.raises(ProofRequired) as asked:
        service.answer("eve", x)
    puzzle = asked.value.puzzle
    assert puzzle.bits == 4 + 2  # k + round(log2(batch of 4))
    nonce, _ = solve(puzzle)
    wrong = next(n for n in range(nonce + 1, nonce + 10_000) if not verify(puzzle, n))
    with pytest.raises(ProofRejected, match="does not solve the puzzle"):
        service.answer("eve", x, proof={"challenge": puzzle.challenge, "nonce": wrong})
    with pytest.raises(ProofRejected, match="another batch"):
        service.answer("eve", x + 1, proof={"challenge": puzzle.challenge, "nonce": nonce})
    assert service.usage("eve")["used"] == 0
    assert torch.equal(service.answer("eve", x, proof={"challenge": puzzle.challenge, "nonce": nonce}), x)
    assert service.usage("eve")["used"] == 4
    # the connection solves puzzles by itself and counts what they cost
    conn = service.connect("frank")
    assert torch.equal(conn.answer(x), x) and conn.puzzles == 1 and conn.pow_hashes >= 1


def test_pow_difficulty_is_monotone_in_the_deviation_score():
    gate = ProofOfWork(bits_min=2, bits_max=20)
    bits = [gate.bits_for({"similar": s, "answered": 100}, 1) for s in range(0, 101, 5)]
    assert bits == sorted(bits) and bits[0] == 2 and bits[-1] == 20
    # an account that repeats itself pays more than one that does not
    service = VictimService(_IdentityBackend(), defenses=[ProofOfWork(0, 16, "rep", 0.9)])
    honest, repeater = service.connect("honest"), service.connect("repeater")
    for i in range(4):
        honest.answer(torch.eye(3)[i % 3:i % 3 + 1] * (i + 1) + torch.tensor([[0.0, 0.0, float(i)]]))
        repeater.answer(torch.eye(3)[:1])
    s_h = ProofOfWork.score(service.accounts["honest"].state["pow"])
    s_r = ProofOfWork.score(service.accounts["repeater"].state["pow"])
    assert s_r == 0.75 and s_h < s_r
    paid = {name: service.accounts[name].state["pow"]["bits_paid"] for name in ("honest", "repeater")}
    assert sum(paid["repeater"]) > sum(paid["honest"])


def test_poisoning_keeps_the_surrogate_classifiers_predictions_and_moves_the_answers(tiny_victim):
    victim = load_victim(tiny_victim)
    poison = PredictionPoisoning(strength=2.0, seed=0)
    service = build_service(victim, defenses=[poison])
    x = to_float(get_dataset("digits", "test", image_size=8).images[:100])
    clean = EncoderBackend(victim.encoder).outputs(x)["representation"]
    poisoned = service.answer("a", x)
    assert poisoned.shape == clean.shape and poisoned.dtype == clean.dtype
    assert (poisoned - clean).norm() > 0.1 * clean.norm()          # the answers moved
    clf = poison.classifier
    assert torch.equal(clf(poisoned).argmax(1), clf(clean).argmax(1))
    assert torch.allclose(clf(poisoned), clf(clean), atol=1e-3)
    # the attacker's MSE residual at the surrogate is reversed outside the classifier's view
    s = poison.surrogate_answers(x, "representation")
    r_clean, r_poisoned = s - clean, s - poisoned
    cos = torch.nn.functional.cosine_similarity(r_clean.flatten(), r_poisoned.flatten(), dim=0)
    assert cos < 0.5


# ------------------------------------------------------------------ the service / client split


def test_an_attack_works_after_the_victim_checkpoint_is_deleted(tiny_victim, tmp_path):
    copy = tmp_path / "victim.pt"
    copy.write_bytes(tiny_victim.read_bytes())
    service = build_service(load_victim(copy))
    copy.unlink()  # the attacker cannot read it: it only has the connection
    config = attack.resolve_defaults({"losstype": "mse", "num_queries": 32, "n_views": None, "epochs": 2,
                                      "batch_size": 16, "lr": None, "optimizer": None, "temperature": None,
                                      "temperaturesn": 100.0, "weight_decay": 1e-4, "local_aug": None,
                                      "crop_min_scale": None, "hflip_p": None, "victimhead": False,
                                      "stolenhead": None, "archstolen": None, "widthstolen": None, "seed": 0,
                                      "datasetsteal": None, "force": False, "holdout": None, "data": None}, "cpu")
    run_dir = prepare_run_dir(tmp_path / "steal")
    result = attack.steal_encoder(config, service.connect("attacker"), run_dir, get_logger(run_dir),
                                  torch.device("cpu"))
    meta = load_checkpoint(result["checkpoint"])
    assert meta["queries_used"] == 32 and result["queries_used"] == 32
    assert service.usage("attacker")["used"] == 32


def test_attack_module_never_opens_a_checkpoint():
    import inspect

    source = inspect.getsource(attack)
    assert "load_encoder" not in source and "load_checkpoint" not in source and "torch.load" not in source


def test_defended_steal_and_legitimate_user_record_their_defenses(tiny_victim, tmp_path):
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "infonce", "--defence", "True",
                       "--num_queries", "32", "-b", "16", "--epochs", "1", "--device", "cpu",
                       "--logdir", str(tmp_path / "s")])
    config = load_checkpoint(ckpt)["config"]
    assert [d["name"] for d in config["defenses"]] == ["detect"] and config["defenses"][0]["threshold"] == 0.9
    results = tmp_path / "legit.jsonl"
    metrics = legitimate.main(["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "--epochs", "2",
                               "--defenses", "noise", "--mu", "10", "--sigma", "1", "--logdir", str(tmp_path / "l"),
                               "--results", str(results), "--tag", "table=table10", "--device", "cpu"])
    record = json.loads(results.read_text())
    assert record["table"] == "table10" and record["role"] == "legitimate"
    assert record["defenses"] == [{"name": "noise", "mu": 10.0, "sigma": 1.0}]
    assert metrics["n_train"] == 64 and metrics["queries_used"] == 64 + metrics["n_test"]


class _PixelBackend:
    """Centred pixels as the representation: distinct random images are nearly orthogonal."""
    out_dims = {"representation": 48}

    def outputs(self, x):
        return {"representation": x.float().flatten(1) - 0.5}


def test_pow_measurement_makes_a_repeating_attacker_pay_more():
    from evaluation.defenses import pow_costs

    pool = torch.randint(0, 256, (128, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def jitter(x, gen):  # a view: the same image, slightly changed
        return (x.float() + torch.randint(-3, 4, x.shape, generator=gen)).clamp(0, 255).to(torch.uint8)

    rows = pow_costs(_PixelBackend(), pool, augment=jitter, queries=128, batch=32, bits_min=0, bits_max=10,
                     threshold=0.9, on="rep")
    by = {r["role"]: r for r in rows}
    assert by["legitimate"]["deviation_score"] == by["attacker_1view"]["deviation_score"] == 0.0
    # half of the two-view attacker's queries repeat an image: its score is 0.5 and it pays more
    assert by["attacker_2views"]["deviation_score"] == 0.5
    assert by["legitimate"]["cost_ratio_vs_legitimate"] == 1.0 == by["attacker_1view"]["cost_ratio_vs_legitimate"]
    assert by["attacker_2views"]["expected_hashes"] > 4 * by["legitimate"]["expected_hashes"]


def test_puzzle_roundtrip_through_json():
    p = Puzzle("ab" * 32, 5)
    assert Puzzle.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_defense_that_needs_the_head_says_so_for_a_headless_victim():
    enc = build_encoder("resnet18", width=4)
    with pytest.raises(UserError, match="--detect-on rep"):
        VictimService(EncoderBackend(enc), defenses=[SimilarQueryDetection("head", "cosine", 0.9)])
    assert build_mlp([4, 4]) is not None


def test_stealhead_steals_through_a_defended_victim(tiny_victim, tmp_path):
    """The reference's stealhead defence branch crashed; here it runs, with its noise mean 0."""
    import stealhead

    ckpt = stealhead.main(["--victim-checkpoint", str(tiny_victim), "--num_queries", "32", "-b", "16",
                           "--epochs", "1", "--defence", "True", "--losstype", "mse", "--sigma", "1",
                           "--device", "cpu", "--logdir", str(tmp_path / "h")])
    config = load_checkpoint(ckpt)["config"]
    assert config["defenses"] == [{"name": "noise", "mu": 0.0, "sigma": 1.0}]
    assert load_checkpoint(ckpt)["queries_used"] == 32
