"""The reference's flags with their reference meaning in steal.py / stealhead.py / legitimate.py,
and the paper-scale defaults that follow the reference (issue: reference parity)."""
import pytest
import torch

import run
import steal
import stealhead
from attacks import encoder as attack
from data_aug import dataset_info
from models import load_checkpoint
from utils import UserError


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victim")
    return run.main(["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "1",
                     "--device", "cpu", "--logdir", str(logdir)])


def _steal(victim, tmp_path, *extra, name="s"):
    return steal.main(["--victim-checkpoint", str(victim), "--num_queries", "64", "--epochs", "1", "-b", "32",
                       "--device", "cpu", "--logdir", str(tmp_path / name), *extra])


def test_momentum_reaches_the_sgd_optimizer(tiny_victim, tmp_path, monkeypatch):
    made = []
    real = attack.make_optimizer
    monkeypatch.setattr(attack, "make_optimizer", lambda config, params: made.append(real(config, params)) or made[-1])
    _steal(tiny_victim, tmp_path, "--losstype", "mse", "--optimizer", "sgd", "--momentum", "0.5")
    assert isinstance(made[0], torch.optim.SGD) and made[0].param_groups[0]["momentum"] == 0.5
    assert load_checkpoint(tmp_path / "s" / "checkpoint.pt")["config"]["momentum"] == 0.5


def test_out_dim_must_match_the_answers(tiny_victim, tmp_path):
    with pytest.raises(UserError, match="--out_dim 128 differs from the victim's 32-d answers"):
        _steal(tiny_victim, tmp_path, "--losstype", "mse", "--out_dim", "128")
    _steal(tiny_victim, tmp_path, "--losstype", "mse", "--out_dim", "32", name="ok")  # the right size is accepted


@pytest.mark.parametrize("heads, projector_linears, hidden", [("reference", 3, 32), ("small", 2, 8)])
def test_simsiam_heads(heads, projector_linears, hidden):
    model = attack.SimSiamStealer(torch.nn.Identity(), 32, heads)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == projector_linears and all(m.out_features == 32 for m in linears)
    assert model.predictor[0].out_features == hidden and model.predictor[-1].out_features == 32


def test_paper_scale_defaults_follow_the_reference():
    paper, cpu = attack.loss_defaults("paper", "mse"), attack.loss_defaults("cpu", "mse")
    assert (paper["num_queries"], paper["simsiam_heads"]) == (9000, "reference")
    assert (cpu["num_queries"], cpu["simsiam_heads"]) == (500, "small")
    assert steal.build_parser().parse_args([]).num_queries is None  # filled by scale, recorded in config.yaml
    # STL10: victims train, and out-of-distribution queries come, from the 100k unlabeled split
    assert dataset_info("stl10").query_split == "unlabeled" and dataset_info("cifar10").query_split == "train"


def test_stealhead_resume_and_victimhead(tiny_victim, tmp_path):
    base = ["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "--epochs", "1", "-b", "16",
            "--device", "cpu", "--logdir", str(tmp_path / "h")]
    with pytest.raises(UserError, match="only --losshead msewithhead"):
        stealhead.main(base + ["--victimhead", "True"])
    with pytest.raises(UserError, match="head.pt, which does not exist"):
        stealhead.main(base + ["--resume", "True"])
    stealhead.main(base + ["--losshead", "msewithhead", "--victimhead", "True"])
    saved = load_checkpoint(tmp_path / "h" / "head" / "head.pt")
    first = load_checkpoint(tmp_path / "h" / "checkpoint.pt")["recreated_head"]["state_dict"]
    assert all(torch.equal(first[k], saved["state_dict"][k]) for k in first)
    # --resume True: g' is the saved one, not retrained (mark the saved weights to tell them apart)
    saved["state_dict"] = {k: v + 1.0 for k, v in saved["state_dict"].items()}
    torch.save(saved, tmp_path / "h" / "head" / "head.pt")
    stealhead.main(base + ["--losshead", "msewithhead", "--resume", "True", "--epochs-head", "3"])
    again = load_checkpoint(tmp_path / "h" / "checkpoint.pt")["recreated_head"]["state_dict"]
    assert all(torch.equal(again[k], first[k] + 1.0) for k in first)


def test_reference_pairing_runs_through_steal(tiny_victim, tmp_path):
    _steal(tiny_victim, tmp_path, "--losstype", "infonce", "--n-views", "2", "--pairing", "reference")
    assert load_checkpoint(tmp_path / "s" / "checkpoint.pt")["config"]["pairing"] == "reference"
