"""steal.py / stealhead.py end to end on tiny settings, query accounting, and their errors."""
import json

import pytest
import torch

import run
import steal
import stealhead
from attacks import encoder as attack
from models import load_checkpoint, load_encoder
from utils import UserError


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victim")
    return run.main(["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "1",
                     "--device", "cpu", "--logdir", str(logdir)])


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "queries.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n_views", [1, 2])
def test_steal_counts_every_view_and_queries_each_once(tiny_victim, tmp_path, n_views):
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "mse", "--num_queries", "128",
                       "--n-views", str(n_views), "-b", str(64 // n_views), "--epochs", "3", "--device", "cpu",
                       "--logdir", str(tmp_path / "s")])
    meta = load_checkpoint(ckpt)
    assert meta["kind"] == "stolen" and meta["queries_used"] == 128 and meta["epoch"] == 3
    log = _log(tmp_path / "s")
    # 128 queries = 128 / n_views images x n_views views; all asked in epoch 1, none again
    assert [r["new_queries"] for r in log] == [128, 0, 0]
    assert [r["cache_hits"] for r in log] == [0, 128, 128]
    assert {tuple(k)[1] for k in log[0]["new_keys"]} == set(range(n_views))
    assert max(tuple(k)[0] for k in log[0]["new_keys"]) == 128 // n_views - 1
    # the victim's forward pass ran once per batch of the first epoch only, whatever the epochs
    assert meta["victim_forward_calls"] == 2


@pytest.fixture
def stolen_inputs(monkeypatch):
    """Capture what steal.py builds: the stolen encoder's initial weights and every batch it sees."""
    seen = {"init": None, "inputs": []}
    build = attack.build_encoder

    def capture(*args, **kwargs):
        encoder = build(*args, **kwargs)
        seen["init"] = {k: v.clone() for k, v in encoder.state_dict().items()}
        encoder.register_forward_pre_hook(lambda module, inp: seen["inputs"].append(inp[0].detach().clone()))
        return encoder

    monkeypatch.setattr(attack, "build_encoder", capture)
    return seen


def test_stealing_trains_the_stolen_model_and_leaves_the_victim_untouched(tiny_victim, tmp_path, stolen_inputs):
    before = {k: v.clone() for k, v in load_encoder(tiny_victim)[0].state_dict().items()}
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "mse", "--num_queries", "64",
                       "-b", "32", "--epochs", "2", "--device", "cpu", "--logdir", str(tmp_path / "s")])
    victim_after = load_encoder(tiny_victim)[0].state_dict()
    assert all(torch.equal(before[k], victim_after[k]) for k in before)
    # every layer of the stolen encoder moved away from its own initialisation
    stolen, init = load_encoder(ckpt)[0].state_dict(), stolen_inputs["init"]
    weights = [k for k in stolen if k.endswith("weight")]
    assert weights and all(not torch.equal(stolen[k], init[k]) for k in weights)
    metrics = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.mark.parametrize("local_aug", ["none", "crop", "simclr"])
def test_local_augmentation_costs_no_query_and_never_reaches_the_victim(tiny_victim, tmp_path, stolen_inputs,
                                                                        local_aug):
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "mse", "--num_queries", "64",
                       "-b", "32", "--epochs", "3", "--local-aug", local_aug, "--device", "cpu",
                       "--logdir", str(tmp_path / "s")])
    meta = load_checkpoint(ckpt)
    # the same accounting with or without it: 64 queries, asked once, answered by 2 forward passes
    assert meta["queries_used"] == 64 and meta["victim_forward_calls"] == 2
    assert [r["new_queries"] for r in _log(tmp_path / "s")] == [64, 0, 0]
    assert meta["config"]["local_aug"] == local_aug
    # the queried images are digits' first 64 test images; the stolen encoder sees them only without it
    from data_aug import get_dataset, to_float

    queried = {bytes(x.numpy()) for x in to_float(get_dataset("digits", "test", image_size=8).images[:64])}
    rows = [x for batch in stolen_inputs["inputs"] if batch.shape[0] == 32 for x in batch]
    assert len(rows) == 3 * 64
    plain = sum(bytes(x.numpy()) in queried for x in rows)
    if local_aug == "none":
        assert plain == len(rows)
    else:  # at 8 px a crop of at least 80% of the area can round to the whole image: measured 33 of 192
        assert plain < len(rows) // 4


# every flag combination of the paper's Tables 1, 2 and 5 (plus softce, bce, noise defence and an
# out-of-distribution query set), one epoch on tiny data
COMBOS = {
    "table1-direct-softnn": ["--losstype", "softnn"],
    "table1-access-head": ["--losstype", "infonce", "--victimhead", "True", "--stolenhead", "True"],
    "table2-mse": ["--losstype", "mse"],
    "table2-infonce": ["--losstype", "infonce"],
    "table2-wasserstein": ["--losstype", "wasserstein"],
    "table2-supcon": ["--losstype", "supcon"],
    "table2-barlow": ["--losstype", "barlow"],
    "table5-symmetrized": ["--losstype", "symmetrized"],
    "softce": ["--losstype", "softce"],
    "bce": ["--losstype", "bce"],
    "stolen-own-head": ["--losstype", "mse", "--stolenhead", "True"],
    "noise-defence": ["--losstype", "mse", "--defence", "True", "--sigma", "1", "--mu", "0"],
    "patches-queries": ["--losstype", "infonce", "--datasetsteal", "patches"],
}


@pytest.mark.parametrize("name", sorted(COMBOS))
def test_paper_flag_combinations_run(tiny_victim, tmp_path, name):
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "-b", "16", "--epochs", "1",
                       "--device", "cpu", "--logdir", str(tmp_path / name)] + COMBOS[name])
    meta = load_checkpoint(ckpt)
    assert meta["queries_used"] == 64
    metrics = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    config = meta["config"]
    if config["losstype"] in ("supcon", "barlow", "symmetrized"):
        assert config["n_views"] == 2 and "n_views" in config["defaults_filled"]


def test_table1_recreate_head(tiny_victim, tmp_path):
    ckpt = stealhead.main(["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "-b", "16",
                           "--epochs", "1", "--device", "cpu", "--logdir", str(tmp_path / "h")])
    meta = load_checkpoint(ckpt)
    assert meta["attack"] == "recreate-head" and meta["queries_used"] == 64
    assert meta["config"]["epochs_head"] == 2
    # the head phase bought every answer; the stealing phase reused them
    assert [r["new_queries"] for r in _log(tmp_path / "h")] == [64, 0, 0]
    encoder, head, _ = load_encoder(ckpt, with_head=True)
    assert head(encoder(torch.rand(2, 3, 8, 8))).shape == (2, 128)


def test_recreate_head_with_true_head_outputs_counts_one_query_per_view(tiny_victim, tmp_path):
    ckpt = stealhead.main(["--victim-checkpoint", str(tiny_victim), "--num_queries", "32", "-b", "16",
                           "--epochs", "1", "--losshead", "msewithhead", "--device", "cpu",
                           "--logdir", str(tmp_path / "h")])
    assert load_checkpoint(ckpt)["queries_used"] == 32


def test_steal_errors(tiny_victim, tmp_path):
    base = ["--victim-checkpoint", str(tiny_victim), "--device", "cpu", "--epochs", "1", "--losstype", "mse"]
    # digits test split: 700 images, the last 200 held out -> 500 available
    with pytest.raises(UserError, match="more than the query set offers"):
        steal.main(base + ["--num_queries", "501", "--logdir", str(tmp_path / "a")])
    with pytest.raises(UserError, match="stolenhead"):
        steal.main(base + ["--num_queries", "64", "--widthstolen", "8", "--logdir", str(tmp_path / "b")])
    # a wider stolen model with its own head is fine
    steal.main(base + ["--num_queries", "64", "--widthstolen", "8", "--stolenhead", "True",
                       "--logdir", str(tmp_path / "c")])
    with pytest.raises(UserError, match="--n-views 2"):
        steal.main(base[:-1] + ["supcon", "--n-views", "1", "--num_queries", "64", "--logdir", str(tmp_path / "d")])
    with pytest.raises(UserError, match="unlabeled"):
        steal.main(base[:-1] + ["supcon", "--datasetsteal", "patches", "--num_queries", "64",
                                "--logdir", str(tmp_path / "e")])
    with pytest.raises(UserError, match="resnet34"):
        steal.main(base + ["--arch", "resnet34", "--num_queries", "64", "--logdir", str(tmp_path / "f")])
    with pytest.raises(UserError, match="trained on digits"):
        steal.main(base + ["--dataset", "digitsm", "--num_queries", "64", "--logdir", str(tmp_path / "g")])
    with pytest.raises(UserError, match="has no watermark predictor"):
        steal.main(base + ["--watermark", "True", "--num_queries", "64", "--logdir", str(tmp_path / "h")])
    with pytest.raises(UserError, match="already holds"):
        steal.main(base + ["--num_queries", "64", "--widthstolen", "8", "--stolenhead", "True",
                           "--logdir", str(tmp_path / "c")])


def test_unknown_loss_is_one_clear_line(tiny_victim, capsys):
    with pytest.raises(SystemExit) as exit_info:
        steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'nope'" in err and "mse" in err


def test_missing_default_victim_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="python run.py --dataset digitsm"):
        steal.main(["--dataset", "digitsm", "--losstype", "mse"])


def test_per_loss_defaults_are_visible_and_typed_values_win(tiny_victim, tmp_path):
    help_text = " ".join(steal.build_parser().format_help().split())
    assert "symmetrized: batch_size 256, lr 0.05, optimizer sgd" in help_text
    assert "n_views: 2 for supcon, barlow, symmetrized" in help_text
    ckpt = steal.main(["--victim-checkpoint", str(tiny_victim), "--losstype", "symmetrized", "--lr", "0.01",
                       "--scale", "paper", "--num_queries", "32", "--epochs", "1", "--device", "cpu",
                       "--logdir", str(tmp_path / "s")])
    config = load_checkpoint(ckpt)["config"]
    assert config["lr"] == 0.01 and config["optimizer"] == "sgd" and config["n_views"] == 2
    assert config["batch_size"] == 256 and "batch_size" in config["defaults_filled"]
    assert "lr" not in config["defaults_filled"] and "optimizer" in config["defaults_filled"]
    assert (tmp_path / "s" / "config.yaml").read_text().count("optimizer: sgd") == 1


def test_local_augmentation_default_follows_the_scale_and_the_views():
    base = {"dataset": "mnistm5k", "victimhead": False, "stolenhead": None}
    for scale, views, losstype, typed, expected in (("cpu", None, "mse", None, "simclr"),
                                                    ("cpu", None, "barlow", None, "none"),  # 2 augmented views
                                                    ("cpu", 2, "mse", None, "none"),
                                                    ("cpu", 2, "mse", "crop", "crop"),  # typed: kept
                                                    ("paper", None, "mse", None, "none")):  # the reference
        config = attack.resolve_defaults({**base, "n_views": views, "losstype": losstype, "local_aug": typed}, scale)
        assert config["local_aug"] == expected, (scale, views, losstype, typed)


def test_fgsm_step_is_eps_sign_of_the_gradient_and_raises_the_loss():
    from attacks import extraction as knockoff

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(8, 3, 2, 2) * 0.5 + 0.25, torch.randint(0, 3, (8,))
    adv = knockoff.fgsm(model, x, y, eps=0.1)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.1), atol=1e-6)  # no clipping in [0.25, 0.75]
    ce = torch.nn.functional.cross_entropy
    assert ce(model(adv), y) > ce(model(x), y)
    # made on the victim itself, transfer equals the white-box rate; eps 0 fools nobody
    rows = knockoff.transfer_rates(model, model, x, y, [0.0, 0.2])
    assert rows[0]["victim_fooled_%"] == 0 and rows[1]["victim_fooled_%"] == rows[1]["stolen_fooled_%"] > 0


@pytest.mark.parametrize("script,extra", [("steallabels", []), ("knockoff", ["--modeloutput", "logits"]),
                                          ("knockoff", ["--modeloutput", "labels"])])
def test_label_and_logit_stealing_run(tiny_victim, tmp_path, script, extra):
    import importlib

    results = importlib.import_module(script).main(
        ["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "-b", "32", "--epochs", "1",
         "--fgsm-eps", "0.03", "--device", "cpu", "--logdir", str(tmp_path / "k")] + extra)
    assert results["queries"] == 64 and results["mode"] == ("standard" if script == "steallabels" else "knockoff")
    assert 0 <= results["fidelity"] <= 100 and len(results["fgsm_transfer"]) == 1
    assert json.loads((tmp_path / "k" / "results.json").read_text()) == results
    assert load_checkpoint(tmp_path / "k" / "checkpoint.pt")["kind"] == "stolen-classifier"


def test_the_victim_stem_flag_is_checked_against_the_checkpoint(tiny_victim, tmp_path):
    with pytest.raises(UserError, match="stem='cifar', but stem='imagenet' was asked for"):
        steal.main(["--victim-checkpoint", str(tiny_victim), "--stem", "imagenet", "--losstype", "mse",
                    "--num_queries", "64", "--device", "cpu", "--logdir", str(tmp_path / "s")])
