"""stealsimsiam.py: the ImageNet attack on a tiny ImageFolder and a tiny SimSiam-format victim,
in one process and in two (torchrun, gloo on CPU): exact global query budget, one checkpoint,
resume after a kill, and the same loss curve as one process with the same global batch."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import stealsimsiam
from data_aug import get_dataset, write_image_folder
from models import build_encoder, load_checkpoint, load_encoder, save_simsiam
from tests.conftest import ROOT
from utils import UserError, read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_QUERIES, BATCH, EPOCHS = 96, 16, 2
# one process vs two with the same global batch differ only in BatchNorm's batch statistics (per
# process) and float summation order: measured on 2-core CPUs, the per-epoch mean losses of the two
# agree within 2.5% (relative, 3 seeds); 10% leaves room for other CPUs
CURVE_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny ImageFolder (digits, 16 px) and a width-4 ResNet18 victim in SimSiam format."""
    root = tmp_path_factory.mktemp("imagenet")
    digits = get_dataset("digits", "train")
    write_image_folder(digits.subset(range(160)), root, "train")
    write_image_folder(get_dataset("digits", "test").subset(range(40)), root, "val")
    torch.manual_seed(0)
    victim = build_encoder("resnet18", stem="cifar", width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = save_simsiam(root / "checkpoint_0099.pth.tar", victim)
    return root, path


def _args(world, logdir, *extra):
    root, victim = world
    return ["--pretrained", str(victim), "--data", str(root), "--datasetsteal", "imagenet", "--image-size", "16",
            "--num_queries", str(N_QUERIES), "-b", str(BATCH), "--epochs", str(EPOCHS), "--lr", "0.2",
            "--useaug", "False", "--losstype", "mse", "--logdir", str(logdir), "--seed", "3", *extra]


def _torchrun(args, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "stealsimsiam.py"), *args]
    full = {**{k: v for k, v in os.environ.items() if k != "SSLSTEAL_KILL_AT_STEP"}, "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=180)


def _losses(logdir):
    return [r["loss"] for r in read_jsonl(logdir / "metrics.jsonl")]


def test_one_process_asks_each_query_once_and_writes_one_checkpoint(world, tmp_path):
    logdir = tmp_path / "one"
    stealsimsiam.main(_args(world, logdir))
    q = json.loads((logdir / "queries.json").read_text())
    assert q == {"queries_used": N_QUERIES, "budget": N_QUERIES, "per_rank": [N_QUERIES], "processes": 1}
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["epoch"] == EPOCHS and ckpt["queries_used"] == N_QUERIES and ckpt["kind"] == "stolen"
    answers = load_checkpoint(logdir / "answers.pt")
    assert answers["answers"].shape == (N_QUERIES, 32) and len(set(answers["indices"].tolist())) == N_QUERIES
    # the answers are the victim's representations of the plain queried images
    victim, _, _ = load_encoder(world[1])
    pool = get_dataset("imagenet", "train", root=world[0], image_size=16)
    idx = answers["indices"][:5]
    with torch.no_grad():
        expected = victim.eval()(pool.images[idx].float() / 255)
    torch.testing.assert_close(answers["answers"][:5], expected, atol=1e-5, rtol=1e-5)
    # the stolen encoder is closer to the victim's answers than its own initial weights were
    stolen, _, _ = load_encoder(logdir / "checkpoint.pt")
    torch.manual_seed(3)
    fresh = build_encoder("resnet18", stem="cifar", width=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    images = pool.images[answers["indices"]].float() / 255
    with torch.no_grad():
        trained_mse = (stolen.eval()(images) - answers["answers"]).pow(2).mean()
        initial_mse = (fresh.eval()(images) - answers["answers"]).pow(2).mean()
    assert trained_mse < 0.8 * initial_mse
    losses = _losses(logdir)
    assert len(losses) == EPOCHS and losses[-1] < losses[0]
    # a second run in the same directory is refused; --resume with nothing left to do asks nothing
    with pytest.raises(UserError, match="already holds a stolen checkpoint"):
        stealsimsiam.main(_args(world, logdir))
    stealsimsiam.main(_args(world, logdir, "--resume"))
    assert load_checkpoint(logdir / "checkpoint.pt")["epoch"] == EPOCHS


def test_two_processes_share_the_budget_resume_after_a_kill_and_match_one_process(world, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    stealsimsiam.main(_args(world, one))
    run = _torchrun(_args(world, two))
    assert run.returncode == 0, run.stderr[-3000:]
    q = json.loads((two / "queries.json").read_text())
    assert q["queries_used"] == N_QUERIES and q["per_rank"] == [N_QUERIES // 2] * 2 and q["processes"] == 2
    assert load_checkpoint(two / "checkpoint.pt")["epoch"] == EPOCHS
    # the loss curve of 2 processes x 8 images follows that of 1 process x 16 images
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == EPOCHS
    for x, y in zip(a, b):
        assert abs(x - y) <= CURVE_TOLERANCE * x, (a, b)
    # killed after the first step of epoch 2 (every rank), then resumed: no query asked again, and
    # the same weights as the uninterrupted 2-process run
    steps = N_QUERIES // BATCH
    dead = _torchrun(_args(world, killed), env={"SSLSTEAL_KILL_AT_STEP": str(steps + 1)})
    assert dead.returncode != 0
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1
    answers_before = (killed / "answers.pt").stat().st_mtime_ns
    back = _torchrun(_args(world, killed, "--resume"))
    assert back.returncode == 0, back.stderr[-3000:]
    assert (killed / "answers.pt").stat().st_mtime_ns == answers_before
    assert json.loads((killed / "queries.json").read_text())["queries_used"] == N_QUERIES
    done, reference = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    assert done["epoch"] == EPOCHS
    for key, value in reference["encoder"]["state_dict"].items():
        torch.testing.assert_close(done["encoder"]["state_dict"][key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert "terminate called" not in run.stderr + back.stderr


def test_clear_errors(world, tmp_path):
    run = _torchrun(_args(world, tmp_path / "b", "-b", "15"))
    assert run.returncode != 0 and "must divide evenly among them" in run.stderr  # torchrun exits 1
    with pytest.raises(UserError, match="more than the 160 images"):
        stealsimsiam.main(_args(world, tmp_path / "c", "--num_queries", "500"))
    with pytest.raises(UserError, match="--pretrained"):
        stealsimsiam.main(["--datasetsteal", "digits", "--logdir", str(tmp_path / "d")])
    with pytest.raises(UserError, match="larger than the 96 query images"):
        stealsimsiam.main(_args(world, tmp_path / "e", "-b", "128"))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_reference_world_size_and_rank_flags_start_the_same_job(world, tmp_path):
    """The reference's multi-machine flags (--world-size 2 --rank R --dist-url tcp://...) without torchrun:
    two processes meet at the URL and run one job (here both on this machine, gloo)."""
    from engine.distributed import _free_port

    url = f"tcp://127.0.0.1:{_free_port()}"
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "stealsimsiam.py"),
                               *_args(world, tmp_path / "ref", "--epochs", "1"), "--world-size", "2", "--rank", str(r),
                               "--dist-url", url, "--dist-backend", "gloo", "--device", "cpu"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    q = json.loads((tmp_path / "ref" / "queries.json").read_text())
    assert q["processes"] == 2 and q["queries_used"] == N_QUERIES and q["per_rank"] == [N_QUERIES // 2] * 2
    # one process logs for the job
    assert "queries used in total" in outs[0][0] and "queries used in total" not in outs[1][0]


def test_multiprocessing_distributed_without_a_gpu_is_one_sentence(world, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the flag would start one process per GPU")
    with pytest.raises(UserError, match="no CUDA GPU is visible; on CPU use `torchrun --nproc_per_node N`"):
        stealsimsiam.main(_args(world, tmp_path / "mp", "--multiprocessing-distributed"))
