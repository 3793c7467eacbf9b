"""Hostile input to the commands (issue 26): one sentence, no traceback, no code run from data files,
nothing computed or queried before a check that could have refused the run.

* CIFAR pickles are read by a restricted unpickler (arrays, lists, strings), md5 check on or off;
* corrupt, truncated and oversized images in an image folder name the file (run.py, linear_eval.py);
* output paths on a read-only file system are refused before any compute (linear_eval.py, legitimate.py,
  sslextract.py and the shared ``utils.check_writable``);
* serve_bench.py's refused checkpoint, a plain-pickle checkpoint that would run code;
* checks an attack can make before its first query are made before it (zero queries spent);
* ``--dataset imagenet --scale cpu`` is ResNet18 at the CPU stand-in's size, as --help and the docs say;
* API keys from ``--api-key-file`` or ``SSLSTEAL_API_KEY``, never written to config.yaml.
"""
from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import tests.fixtures_real as fx
from data_aug.real import load_real
from tests.conftest import ROOT, run_script
from tests.unwritable import immutable, read_only_dir
from utils import UserError, check_writable, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def _one_sentence(text: str) -> str:
    """The text of one error line: no traceback, one line, no object address."""
    text = text.strip()
    assert "Traceback" not in text, text
    assert "\n" not in text, text
    assert " at 0x" not in text, text
    return text


def _cli_error(main, argv, capsys) -> str:
    """Run a command's ``main`` as its ``__main__`` does (``utils.run_cli``): exit status 2 and one
    error line (argparse's own errors come after its usage line, as for every flag of the project)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error: " in line]
    assert len(lines) == 1, err
    return _one_sentence(lines[0])


class _Evil:
    """Unpickling this creates ``marker`` (``builtins.open(marker, "w")``): code run from a data file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _Counter:
    """How many images an in-process victim service answered (every answer goes through ``answer``)."""

    def __init__(self, monkeypatch):
        from service.victim import VictimService

        self.images = 0
        real = VictimService.answer
        counter = self

        def answer(service, account, images, *args, **kwargs):
            counter.images += int(images.shape[0])
            return real(service, account, images, *args, **kwargs)

        monkeypatch.setattr(VictimService, "answer", answer)


TINY = ["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    import run

    return run.main([*TINY, "--epochs", "1", "--logdir", str(tmp_path_factory.mktemp("victim"))])


@pytest.fixture(scope="module")
def tiny_supervised(tmp_path_factory):
    import simclrsup

    return simclrsup.main([*TINY, "--epochs", "1", "--logdir", str(tmp_path_factory.mktemp("supervised"))])


# ------------------------------------------------------------------ 1. CIFAR pickles run no code

CIFAR_FILES = [("cifar10", "cifar-10-batches-py", "data_batch_1", "train"),
               ("cifar10", "cifar-10-batches-py", "test_batch", "test"),
               ("cifar10", "cifar-10-batches-py", "batches.meta", "test"),
               ("cifar100", "cifar-100-python", "meta", "train")]


@pytest.mark.parametrize("verify", [True, False], ids=["md5-on", "md5-off"])
@pytest.mark.parametrize("name,folder,fname,split", CIFAR_FILES, ids=[f[2] for f in CIFAR_FILES])
def test_a_cifar_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, name, folder, fname, split, verify):
    fx.WRITERS[name](tmp_path)
    marker = tmp_path / "MARKER"
    path = tmp_path / folder / fname
    evil = _Evil(marker)
    payload = ({"label_names": evil} if fname == "batches.meta" else {"fine_label_names": evil} if fname == "meta"
               else {"batch_label": "x", "labels": [0, 1, 2], "data": evil, "filenames": ["a", "b", "c"]})
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(UserError) as err:
        load_real(name, tmp_path, split, 32, verify=verify)
    message = _one_sentence(str(err.value))
    assert not marker.exists(), "a CIFAR data file ran code"
    if verify:
        assert "md5 checksum" in message and fname in message
    else:
        assert str(path) in message and "could run code" in message and "Python objects other than arrays" in message
        assert "builtins.open" in message or "io.open" in message


def test_the_restricted_cifar_reader_loads_format_exact_files(tmp_path):
    expected = {**{("cifar10", s): v for s, v in fx.write_cifar10(tmp_path).items()},
                **{("cifar100", s): v for s, v in fx.write_cifar100(tmp_path).items()}}
    for (name, split), (images, labels) in expected.items():
        ds = load_real(name, tmp_path, split, 32, verify=False)
        assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)


def test_the_restricted_cifar_reader_reads_python2_era_globals(tmp_path):
    """The official files were pickled by Python 2 with numpy 1: ``numpy.core.multiarray._reconstruct``."""
    expected = fx.write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns when numpy.core is imported: it is not
        ds = load_real("cifar10", tmp_path, "test", 32, verify=False)
    assert torch.equal(ds.images, expected["test"][0])


def test_no_plain_unpickling_of_cifar_files_on_our_path():
    """torchvision's CIFAR classes unpickle with plain pickle.load: the loader must not construct them."""
    source = (ROOT / "data_aug" / "real.py").read_text()
    assert "pickle.load(" not in source
    assert "tvd.CIFAR10(" not in source and "tvd.CIFAR100(" not in source


# ------------------------------------------------------------- 2. corrupt images in an image folder


def _corrupt_imagenet(root: Path, how: str) -> Path:
    """A tiny ImageNet folder (3 classes x 3 train, 2 val images) with one broken train image."""
    from PIL import Image

    fx.write_imagenet(root, per_class={"train": 3, "val": 3}, size=16)
    victim = sorted((root / "imagenet" / "train" / fx.IMAGENET_CLASSES[1]).iterdir())[0]
    if how == "garbage":
        victim.write_bytes(b"this is not an image at all" * 10)
    elif how == "truncated":
        victim.unlink()
        victim = victim.with_suffix(".jpg")  # noise: the header is a small part of the file, cut in its pixels
        noise = torch.randint(0, 256, (128, 128, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        Image.fromarray(noise.numpy()).save(victim, quality=95)
        data = victim.read_bytes()
        victim.write_bytes(data[:len(data) // 2])
    elif how == "bomb":  # a valid PNG header declaring 20000 x 20000 pixels (PIL refuses it at open)
        import struct
        import zlib

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return victim


@pytest.mark.parametrize("how,phrase", [("garbage", "not an image"), ("truncated", "truncated"),
                                        ("bomb", "too large")])
@pytest.mark.parametrize("workers", ["0", "1"])
def test_run_py_names_a_broken_image_in_one_sentence(tmp_path, capsys, how, phrase, workers):
    import run

    bad = _corrupt_imagenet(tmp_path / "data", how)
    message = _cli_error(run.main, ["--dataset", "imagenet", "-data", str(tmp_path / "data"), "--scale", "cpu",
                                    "--width", "2", "--image-size", "16", "--epochs", "1", "-b", "9", "-j", workers,
                                    "--device", "cpu", "--logdir", str(tmp_path / "run")], capsys)
    assert str(bad) in message and phrase in message
    assert "remove it or replace it" in message


@pytest.mark.parametrize("how,phrase", [("garbage", "not an image"), ("truncated", "truncated"),
                                        ("bomb", "too large")])
def test_linear_eval_names_a_broken_image_in_one_sentence(tmp_path, capsys, how, phrase):
    import linear_eval

    bad = _corrupt_imagenet(tmp_path / "data", how)
    message = _cli_error(linear_eval.main, ["--modeltype", "pixels", "--dataset-test", "imagenet", "-data",
                                            str(tmp_path / "data"), "--image-size", "16", "--scale", "cpu",
                                            "--results", str(tmp_path / "r.jsonl"), "--device", "cpu"], capsys)
    assert str(bad) in message and phrase in message
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------ 3. unwritable outputs, before compute


def test_check_writable_refuses_a_read_only_folder_a_file_as_folder_and_an_immutable_file(tmp_path):
    with read_only_dir(tmp_path / "ro") as ro:
        with pytest.raises(UserError) as err:
            check_writable(ro / "sub" / "r.jsonl", what="the results file", fix="pass another --results")
        message = _one_sentence(str(err.value))
        assert "cannot write the results file" in message and "Read-only file system" in message
        assert message.endswith("pass another --results")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "r.jsonl")
    with pytest.raises(UserError, match="is a folder, not a file"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "deeper" / "r.jsonl") == tmp_path / "new" / "deeper" / "r.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]  # nothing created, no probe left
    with immutable(tmp_path / "file"):  # an existing results file that cannot be replaced
        with pytest.raises(UserError, match=r"cannot write the output file .*file \(the file is read-only\)"):
            check_writable(tmp_path / "file")


@pytest.fixture
def no_probe(monkeypatch):
    """Fail the test if linear_eval.py fits a probe (the compute an early check must prevent)."""
    import evaluation.cli

    def refuse(*args, **kwargs):
        raise AssertionError("a probe was fitted before the output paths were checked")

    monkeypatch.setattr(evaluation.cli, "fit_downstream", refuse)


def test_linear_eval_refuses_a_read_only_results_file_before_any_compute(tmp_path, tiny_victim, capsys, no_probe):
    import linear_eval

    with read_only_dir(tmp_path / "ro") as ro:
        message = _cli_error(linear_eval.main, ["--checkpoint", str(tiny_victim), "--modeltype", "victim",
                                                "--results", str(ro / "r.jsonl")], capsys)
    assert f"cannot write the results file {ro / 'r.jsonl'} (Read-only file system)" in message
    assert "--results" in message


def test_linear_eval_refuses_an_unwritable_probe_folder_before_any_compute(tmp_path, tiny_victim, capsys, no_probe):
    import linear_eval

    folder = tmp_path / "ckpt"
    folder.mkdir()
    ckpt = shutil.copy(tiny_victim, folder / "checkpoint.pt")
    with immutable(folder):
        message = _cli_error(linear_eval.main, ["--checkpoint", str(ckpt), "--modeltype", "victim", "--save", "True",
                                                "--results", str(tmp_path / "r.jsonl")], capsys)
    assert f"cannot write the probe file {folder / 'probe_victim_digits.pt'}" in message
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("command,flags", [
    ("sybil", ["--run", "{tmp}/no-run", "--results", "{ro}/r.jsonl"]),
    ("report", ["--results-dir", "{tmp}", "--out", "{ro}/REPORT.md"]),
    ("measure_defenses", ["detection", "--victim-checkpoint", "{tmp}/missing.pt", "--results", "{ro}/r.jsonl"]),
    ("watermark", ["--victim-checkpoint", "{tmp}/missing.pt", "--results", "{ro}/r.jsonl"]),
    ("linsimsiam", ["--modeltype", "random", "--dataset", "digits", "--results", "{ro}/r.jsonl", "--device", "cpu"]),
])
def test_every_results_writer_checks_its_output_first(tmp_path, capsys, command, flags):
    """Each would otherwise fail later (no run, a missing victim) or only after its work: the output
    path is the first thing refused."""
    module = __import__(command)
    with read_only_dir(tmp_path / "ro") as ro:
        argv = [f.format(tmp=tmp_path, ro=ro) for f in flags]
        message = _cli_error(module.main, argv, capsys)
    assert f"cannot write the {'report' if command == 'report' else 'results file'} {ro}" in message
    assert "(Read-only file system)" in message


def test_legitimate_refuses_a_read_only_results_file_before_any_query(tmp_path, tiny_victim, capsys, monkeypatch):
    import legitimate

    count = _Counter(monkeypatch)
    with read_only_dir(tmp_path / "ro") as ro:
        message = _cli_error(legitimate.main, ["--victim-checkpoint", str(tiny_victim), "--num_queries", "64",
                                               "--epochs", "1", "--logdir", str(tmp_path / "run"),
                                               "--results", str(ro / "r.jsonl"), "--device", "cpu"], capsys)
    assert "cannot write the results file" in message and count.images == 0


def test_sslextract_refuses_a_read_only_results_file_before_any_query(tmp_path, tiny_supervised, capsys,
                                                                      monkeypatch):
    import sslextract

    count = _Counter(monkeypatch)
    with read_only_dir(tmp_path / "ro") as ro:
        message = _cli_error(sslextract.main, [*TINY, "--victim-checkpoint", str(tiny_supervised), "--pretrain",
                                               "none", "--query-fraction", "0.05", "--max-epochs", "1",
                                               "--pool-epochs", "1", "--logdir", str(tmp_path / "run"),
                                               "--results", str(ro / "r.jsonl")], capsys)
    assert "cannot write the results file" in message and count.images == 0


def test_sslextract_refuses_a_schedule_cap_below_its_floor_in_one_sentence(tmp_path, tiny_supervised, capsys,
                                                                            monkeypatch):
    import sslextract

    count = _Counter(monkeypatch)
    message = _cli_error(sslextract.main, [*TINY, "--victim-checkpoint", str(tiny_supervised), "--pretrain", "none",
                                           "--query-fraction", "0.05", "--max-epochs", "1",
                                           "--logdir", str(tmp_path / "run")], capsys)
    assert "--pool-epochs 20 is more than --max-epochs 1" in message and count.images == 0


# ------------------------------------------------------------------ 4. serve_bench's checkpoint


def test_serve_bench_refuses_a_plain_pickle_checkpoint_in_one_sentence(tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "plain.pt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f)
    done = run_script(ROOT / "bench" / "serve_bench.py", "--victim-checkpoint", ckpt, timeout=120)
    assert done.returncode == 2, done.stderr
    message = _one_sentence(done.stderr)
    assert message.startswith("error: refused to load") and "could run code" in message
    assert not marker.exists()


# ------------------------------------------------------------------ 5. plain-pickle checkpoints


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_a_plain_pickle_checkpoint_that_would_run_code_is_refused_as_such(tmp_path, capfd, protocol):
    from models import load_checkpoint

    marker = tmp_path / "MARKER"
    path = tmp_path / "plain.pt"
    with open(path, "wb") as f:
        pickle.dump({"encoder": _Evil(marker)}, f, protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError) as err:
            load_checkpoint(path)
    message = _one_sentence(str(err.value))
    assert f"refused to load {path}" in message and "could run code" in message
    assert "corrupt" not in message
    assert not caught and not capfd.readouterr().err  # no torch warning on top of the sentence
    assert not marker.exists()


def test_a_torch_checkpoint_that_would_run_code_and_random_bytes_say_different_things(tmp_path):
    from models import load_checkpoint

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"encoder": _Evil(marker)}, evil)
    with pytest.raises(UserError) as err:
        load_checkpoint(evil)
    assert "could run code" in _one_sentence(str(err.value)) and not marker.exists()
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError) as err:
        load_checkpoint(noise)
    message = _one_sentence(str(err.value))
    assert "corrupt or not a PyTorch checkpoint" in message and "could run code" not in message


def test_the_probe_loader_refuses_a_plain_pickle_that_would_run_code(tmp_path):
    from evaluation.probe import load_probe

    marker = tmp_path / "MARKER"
    path = tmp_path / "probe.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f)
    with pytest.raises(UserError) as err:
        load_probe(path)
    assert "could run code" in _one_sentence(str(err.value)) and not marker.exists()


def test_every_torch_load_goes_through_the_safe_loader():
    """Only models/checkpoint.py calls torch.load, and nothing calls pickle.load (tests aside)."""
    import ast

    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests") or rel == Path("models/checkpoint.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if (isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load"
                    and isinstance(func.value, ast.Name) and func.value.id in ("torch", "pickle")):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------ 6. checks before the first query


@pytest.fixture(scope="module")
def simsiam_world(tmp_path_factory):
    """A tiny ImageFolder and a width-4 ResNet18 victim (32-d answers) in SimSiam format."""
    from data_aug import get_dataset, write_image_folder
    from models import build_encoder, save_simsiam

    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(get_dataset("digits", "train").subset(range(40)), root, "train")
    torch.manual_seed(0)
    victim = build_encoder("resnet18", stem="cifar", width=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return root, save_simsiam(root / "victim.pth.tar", victim)


def test_stealsimsiam_refuses_a_stolen_encoder_of_another_size_before_any_query(simsiam_world, tmp_path, capsys,
                                                                                  monkeypatch):
    import stealsimsiam

    count = _Counter(monkeypatch)
    root, victim = simsiam_world
    message = _cli_error(stealsimsiam.main, ["--pretrained", str(victim), "--data", str(root), "--datasetsteal",
                                             "imagenet", "--image-size", "16", "--num_queries", "32", "-b", "16",
                                             "--epochs", "1", "-a", "resnet50", "--losstype", "mse",
                                             "--logdir", str(tmp_path / "run")], capsys)
    assert "outputs 128-d representations but the victim answers 32-d" in message
    assert count.images == 0 and not (tmp_path / "run" / "answers.pt").exists()


def test_stealsimsiam_refuses_a_resume_of_another_encoder_before_any_query(simsiam_world, tmp_path, capsys,
                                                                           monkeypatch):
    """A checkpoint whose weights do not fit the flags' encoder, with no answers.pt to reuse."""
    import stealsimsiam
    from models import build_encoder, save_checkpoint

    root, victim = simsiam_world
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / "checkpoint.pt", encoder=build_encoder("resnet34", width=4), epoch=1,
                    config={"losstype": "mse"})
    count = _Counter(monkeypatch)
    message = _cli_error(stealsimsiam.main, ["--pretrained", str(victim), "--data", str(root), "--datasetsteal",
                                             "imagenet", "--image-size", "16", "--num_queries", "32", "-b", "16",
                                             "--epochs", "2", "--losstype", "mse", "--logdir", str(run_dir),
                                             "--resume"], capsys)
    assert "stolen encoder of the checkpoint" in message and count.images == 0


@pytest.mark.parametrize("command", ["knockoff", "steallabels", "extract"])
def test_classifier_extraction_refuses_an_unknown_architecture_before_any_query(tiny_supervised, tmp_path, capsys,
                                                                                monkeypatch, command):
    module = __import__(command)
    count = _Counter(monkeypatch)
    message = _cli_error(module.main, ["--victim-checkpoint", str(tiny_supervised), "--victimtype", "supervised",
                                       "--num_queries", "64", "--epochs", "1", "-a", "vit_b16", "--device", "cpu",
                                       "--logdir", str(tmp_path / "run")], capsys)
    assert "vit_b16" in message and "resnet18" in message
    assert count.images == 0 and not (tmp_path / "run").exists()


def test_extraction_checks_the_served_architecture_before_any_query(tiny_supervised, tmp_path, monkeypatch):
    """The victim's card names an architecture this project cannot build: refused before the first query."""
    from attacks import extraction
    from attacks.connect import OpenVictim

    count = _Counter(monkeypatch)
    config = extraction.resolve(dict(vars(extraction.build_parser("standard", "labels", "").parse_args(
        ["--victim-checkpoint", str(tiny_supervised), "--victimtype", "supervised", "--num_queries", "64",
         "--epochs", "1", "--device", "cpu", "--logdir", str(tmp_path / "run")]))))
    victim = extraction.open_classifier(config, torch.device("cpu"))
    card = {**victim.card, "arch": "vit_b16"}
    served = OpenVictim(victim.accounts, victim.record, service=victim.service, model=victim.model)
    monkeypatch.setattr(OpenVictim, "card", property(lambda self: card))
    with pytest.raises(UserError) as err:
        extraction.run(config, served, torch.device("cpu"))
    assert "vit_b16" in _one_sentence(str(err.value)) and count.images == 0


def test_stealhead_refuses_an_unknown_architecture_before_any_query(tiny_victim, tmp_path, capsys, monkeypatch):
    import stealhead

    count = _Counter(monkeypatch)
    message = _cli_error(stealhead.main, ["--victim-checkpoint", str(tiny_victim), "--num_queries", "64",
                                          "--epochs", "1", "-a", "vit_b16", "--device", "cpu",
                                          "--logdir", str(tmp_path / "run")], capsys)
    assert "vit_b16" in message and count.images == 0


def test_steal_refuses_an_unknown_stolen_architecture_in_one_sentence(tiny_victim, tmp_path, capsys, monkeypatch):
    import steal

    count = _Counter(monkeypatch)
    message = _cli_error(steal.main, ["--victim-checkpoint", str(tiny_victim), "--num_queries", "64", "--epochs", "1",
                                      "--archstolen", "vit_b16", "--device", "cpu", "--logdir", str(tmp_path / "run")],
                         capsys)
    assert "vit_b16" in message and count.images == 0


# --------------------------------------------------------- 7. imagenet's architecture at cpu scale


def test_imagenet_at_cpu_scale_is_the_documented_resnet18_stand_in():
    import run
    from engine.presets import preset_for, resolve_scale

    assert preset_for("imagenet", "cpu") == {"arch": "resnet18", "width": 8, "image_size": 28}
    assert preset_for("imagenet", "paper") == {"arch": "resnet50", "width": 64, "image_size": 224}
    assert preset_for("imagenet") == preset_for("imagenet", "paper")  # a real dataset: paper scale by default
    cpu = resolve_scale(run.build_parser().parse_args(["--dataset", "imagenet", "--scale", "cpu"]), {})
    assert (cpu["arch"], cpu["width"], cpu["image_size"], cpu["stem"]) == ("resnet18", 8, 28, "cifar")
    paper = resolve_scale(run.build_parser().parse_args(["--dataset", "imagenet"]), {})
    assert (paper["arch"], paper["image_size"], paper["stem"]) == ("resnet50", 224, "imagenet")
    text = " ".join(run.build_parser().format_help().split())
    assert "by scale: cpu resnet18, paper resnet34 (resnet50 for imagenet)" in text
    assert "28 for imagenet" in text and "224 for imagenet" in text


# -------------------------------------------------------------------------- 8. API keys


def _key_config(**flags):
    import steal

    argv = ["--victim-url", "http://127.0.0.1:9"]
    for flag, values in flags.items():
        for value in values:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return dict(vars(steal.build_parser().parse_args(argv)))


def test_api_keys_come_from_the_flag_then_key_files_then_the_environment(tmp_path, monkeypatch):
    from attacks.connect import API_KEY_ENV, api_keys

    assert API_KEY_ENV == "SSLSTEAL_API_KEY"
    one = tmp_path / "one.txt"
    one.write_text("# the attacker's accounts\n\n  sk-file-1  \nsk-file-2\n   # another comment\n")
    two = tmp_path / "two.txt"
    two.write_text("sk-file-3")
    monkeypatch.setenv(API_KEY_ENV, "sk-env-1, sk-env-2\tsk-env-3")
    assert api_keys(_key_config(api_key=["sk-flag"], api_key_file=[one])) == ["sk-flag"]
    assert api_keys(_key_config(api_key_file=[one, two])) == ["sk-file-1", "sk-file-2", "sk-file-3"]
    assert api_keys(_key_config()) == ["sk-env-1", "sk-env-2", "sk-env-3"]
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(UserError) as err:
        api_keys(_key_config())
    message = _one_sentence(str(err.value))
    assert "--api-key KEY" in message and "--api-key-file PATH" in message and "SSLSTEAL_API_KEY" in message


def test_an_empty_or_missing_key_file_is_one_sentence(tmp_path):
    from attacks.connect import api_keys

    empty = tmp_path / "keys.txt"
    empty.write_text("# nothing but a comment\n\n")
    with pytest.raises(UserError) as err:
        api_keys(_key_config(api_key_file=[empty]))
    assert f"--api-key-file {empty} holds no key" in _one_sentence(str(err.value))
    with pytest.raises(UserError) as err:
        api_keys(_key_config(api_key_file=[tmp_path / "nope.txt"]))
    assert f"--api-key-file {tmp_path / 'nope.txt'} cannot be read" in _one_sentence(str(err.value))


def test_every_http_attack_offers_the_key_file_flag():
    import knockoff
    import legitimate
    import sslextract
    import steal
    import stealhead
    import stealsimsiam

    for module in (steal, stealhead, stealsimsiam, knockoff, legitimate, sslextract):
        text = " ".join(module.build_parser().format_help().split())
        assert "--api-key-file PATH" in text and "SSLSTEAL_API_KEY" in text, module.__name__


def test_a_run_against_a_served_victim_writes_no_key_to_its_config(tmp_path, monkeypatch):
    import steal
    from tests.serving_helpers import start_server, tiny_victim_and_accounts

    victim, ledger, keys = tiny_victim_and_accounts(tmp_path, {"a": ["--budget", "1000"], "b": ["--budget", "1000"]})
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"{keys['a']}\n")
    proc, url = start_server(victim, ledger)
    try:
        for how, extra in (("file", ["--api-key-file", str(key_file)]), ("env", [])):
            if how == "env":
                monkeypatch.setenv("SSLSTEAL_API_KEY", keys["b"])
            run_dir = tmp_path / how
            steal.main(["--victim-url", url, *extra, "--num_queries", "64", "--epochs", "1", "-b", "32",
                        "--losstype", "mse", "--device", "cpu", "--logdir", str(run_dir)])
            text = (run_dir / "config.yaml").read_text()
            config = yaml.safe_load(text)
            used = keys["a"] if how == "file" else keys["b"]
            assert used not in text and keys["a"] not in text and keys["b"] not in text
            assert config["api_key"] == [f"...{used[-4:]}"]
            for name in os.listdir(run_dir):
                if (run_dir / name).is_file():
                    assert used.encode() not in (run_dir / name).read_bytes(), name
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_write_config_never_writes_a_raw_key(tmp_path):
    from utils import write_config

    write_config(tmp_path, {"api_key": ["sk-secret-abcd"], "victim_url": "http://x"})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["api_key"] == ["...abcd"]

