"""linear_finetune_simclr.py: accuracy and fidelity of downstream classifiers on the victim and on
a stolen encoder, optionally with the stolen encoder fine-tuned."""
import json

import pytest
import torch

import linear_eval
import linear_finetune_simclr as lfs
from data_aug import get_dataset, split_holdout
from evaluation.probe import finetune, snapshot
from models import build_encoder, load_encoder, save_checkpoint
from models.probe import Probe, fidelity
from utils import UserError

CPU = torch.device("cpu")
FAST = ["--device", "cpu", "-n", "300"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_checkpoint(path, seed):
    torch.manual_seed(seed)
    return save_checkpoint(path, encoder=build_encoder("resnet18", width=4),
                           config={"dataset": "digits", "image_size": 8})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfs")
    return tiny_checkpoint(root / "victim" / "checkpoint.pt", 0), tiny_checkpoint(root / "other" / "checkpoint.pt", 1)


def test_fidelity_counts_agreeing_argmax():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [3.0, 1.0], [1.0, 0.0], [0.0, 5.0]])
    assert fidelity(a, a) == 100.0 and fidelity(a, b) == 75.0


@pytest.mark.parametrize("probe", [["--probe", "lbfgs"], ["--probe", "reference", "--probe-epochs", "2",
                                                           "--probe-lr", "1e-3"]])
def test_the_victim_against_itself_has_fidelity_100(ckpts, tmp_path, probe):
    victim, _ = ckpts
    r = lfs.main(["--victim-checkpoint", str(victim), "--checkpoint", str(victim), "--logdir", str(tmp_path)]
                 + probe + FAST)
    assert r["fidelity"] == 100.0 and r["stolen"]["top1"] == r["victim"]["top1"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["fidelity"] == 100.0 and saved["finetuned"] is None
    assert (tmp_path / "config.yaml").is_file()


def test_a_random_encoder_has_lower_fidelity_and_both_accuracies_are_reported(ckpts, tmp_path, capsys):
    victim, other = ckpts
    r = lfs.main(["--victim-checkpoint", str(victim), "--checkpoint", str(other), "--logdir", str(tmp_path),
                  "--probe", "lbfgs"] + FAST)
    assert r["fidelity"] < 100.0 and r["victim"]["fidelity"] == 100.0
    for role in ("victim", "stolen"):
        assert 0 < r[role]["top1"] <= r[role]["top5"] <= 100 and r[role]["probe"]["kind"] == "lbfgs"
    out = capsys.readouterr().out
    assert "| victim |" in out and "| stolen |" in out
    # a second run into the same directory needs --clear
    with pytest.raises(UserError, match="--clear"):
        lfs.main(["--victim-checkpoint", str(victim), "--checkpoint", str(other), "--logdir", str(tmp_path)] + FAST)


@pytest.mark.parametrize("tune", [False, True])
def test_finetune_changes_only_the_fine_tuned_copy(ckpts, tmp_path, tune):
    victim, other = ckpts
    r = lfs.main(["--victim-checkpoint", str(victim), "--checkpoint", str(other), "--logdir", str(tmp_path),
                  "--probe", "lbfgs", "--finetune", str(tune), "--epochs", "2", "--lr", "1e-2", "--save", "True"]
                 + FAST)
    start = load_encoder(other)[0].state_dict()
    assert (tmp_path / "stolen_probe.pt").is_file() and (tmp_path / "victim_probe.pt").is_file()
    if not tune:
        assert r["finetuned"] is None and not (tmp_path / "finetuned.pt").exists()
        return
    tuned = load_encoder(tmp_path / "finetuned.pt")[0].state_dict()
    changed = [k for k, v in tuned.items() if "weight" in k and not torch.equal(v, start[k])]
    assert changed and r["finetuned"]["max_weight_change"] > 0
    assert 0 <= r["finetuned"]["fidelity"] <= 100 and r["finetuned"]["epochs"] == 2


def test_finetune_leaves_its_arguments_alone():
    train = get_dataset("digits", "train", image_size=8).subset(range(64))
    enc = build_encoder("resnet18", width=4)
    probe = Probe(torch.zeros(32), torch.ones(32), torch.nn.Linear(32, 10))
    before, probe_before = snapshot(enc), snapshot(probe)
    tuned, tuned_probe = finetune(enc, probe, train, device=CPU, lr=1e-2, epochs=1, batch_size=32)
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    assert all(torch.equal(v, probe_before[k]) for k, v in probe.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    assert not torch.equal(tuned_probe.linear.weight, probe.linear.weight)


def test_saved_probes_from_linear_eval_are_reused(ckpts, tmp_path):
    victim, other = ckpts
    records = {}
    for role, ckpt in (("victim", victim), ("stolen", other)):
        (records[role],) = linear_eval.main(["--checkpoint", str(ckpt), "--modeltype", role, "--probe", "reference",
                                             "--probe-epochs", "2", "--save", "True",
                                             "--results", str(tmp_path / "r.jsonl")] + FAST)
    # the probe files alone name the encoders, the task and how the logits were computed
    r = lfs.main(["--victim-probe", records["victim"]["probe_file"], "--stolen-probe", records["stolen"]["probe_file"],
                  "--logdir", str(tmp_path / "lfs"), "--device", "cpu"])
    for role in ("victim", "stolen"):
        assert r[role]["top1"] == records[role]["metrics"]["top1"], role
        assert r[role]["probe"]["file"] == records[role]["probe_file"]
    assert r["fidelity"] < 100.0
    # a probe of another task is refused
    test = split_holdout(get_dataset("digits", "test", image_size=8))[1]
    assert r["n_test"] == len(test)
    with pytest.raises(UserError, match="trained on digits"):
        lfs.main(["--victim-probe", records["victim"]["probe_file"], "--stolen-probe", records["stolen"]["probe_file"],
                  "--dataset-test", "digitsm", "--logdir", str(tmp_path / "lfs2"), "--device", "cpu"])


def test_the_references_flags_parse():
    args = lfs.build_parser().parse_args(
        ["-folder-name", "x", "--dataset", "cifar10", "--dataset-test", "cifar10", "-a", "resnet18", "-n", "50000",
         "--epochstrain", "200", "--epochs", "100", "--num_queries", "9000", "--lr", "1e-4", "--modeltype", "stolen",
         "--save", "False", "--losstype", "infonce", "--head", "False", "--defence", "False", "--sigma", "0.5",
         "--mu", "5", "--clear", "False", "-b", "256"])
    assert args.finetune is False and args.probe == "auto" and args.lr == 1e-4


def test_defence_without_checkpoint_is_one_clear_error(ckpts, tmp_path):
    victim, _ = ckpts
    with pytest.raises(UserError, match="--defence True.*--checkpoint"):
        lfs.main(["--victim-checkpoint", str(victim), "--defence", "True", "--logdir", str(tmp_path)] + FAST)
