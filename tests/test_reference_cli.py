"""Every command line of the reference (its README, and every flag of every CIFAR-family script at
its default value, docs/reference-behaviour.md section 8) parses with our parsers."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reference-behaviour.md"


def _commands():
    text = DOC.read_text()
    section = text[text.index("## 8. Reference command lines"):]
    lines = []
    for block in re.findall(r"```\n(.*?)```", section, flags=re.S):
        lines += [line for line in block.splitlines() if line.startswith("python ")]
    return lines


COMMANDS = _commands()


def _parse(command: str):
    words = shlex.split(command)
    script = words[1]
    module = importlib.import_module(script[:-3])
    return module.build_parser().parse_args(words[2:])


def test_the_doc_lists_every_reference_script():
    scripts = {shlex.split(c)[1] for c in COMMANDS}
    assert {"run.py", "steal.py", "stealhead.py", "legitimate.py", "linear_eval.py", "linear_eval_sup.py",
            "linear_finetune_simclr.py", "steallabels.py", "extract.py", "stealsimsiam.py", "linsimsiam.py"} <= scripts
    assert len(COMMANDS) >= 14


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(shlex.split(c)[1:3]))
def test_reference_command_line_parses(command):
    _parse(command)


def test_the_readme_commands_mean_what_they_meant():
    run, steal, evaluate = COMMANDS[:3]
    args = _parse(run)
    assert (args.dataset, args.epochs, args.arch) == ("cifar10", 200, "resnet34")
    args = _parse(steal)
    assert (args.dataset, args.datasetsteal, args.losstype, args.num_queries) == ("cifar10", "svhn", "mse", 9000)
    args = _parse(evaluate)
    assert args.modeltype == ["stolen"] and args.dataset_test == "stl10"  # the reference's default modeltype


def test_the_imagenet_readme_commands_mean_what_they_meant():
    steal, probe = [c for c in COMMANDS if "--world-size -1 --rank 0" in c]
    args = _parse(steal)
    assert (args.world_size, args.rank, args.batch_size, args.lr, args.lars, args.losstype, args.datasetsteal,
            args.workers, args.num_queries, args.temperature) == (-1, 0, 512, 0.1, True, "infonce", "imagenet", 8,
                                                                  100000, 0.1)
    assert args.pretrained == "models/checkpoint_0099-batch256.pth.tar"
    args = _parse(probe)
    assert (args.batch_size, args.lars, args.lr, args.datasetsteal, args.num_queries, args.losstype, args.dataset,
            args.workers) == (256, True, 1.0, "imagenet", 250000, "infonce", "cifar10", 8)
    assert args.modeltype == ["stolen"] or args.modeltype == "stolen"


def test_no_effect_and_refused_reference_values():
    steal = importlib.import_module("steal").build_parser()
    args = steal.parse_args(["--entropy", "False", "--losstype", "wassersein", "--momentum", "0.5"])
    assert args.entropy is False and args.losstype == "wasserstein" and args.momentum == 0.5
    with pytest.raises(SystemExit):
        steal.parse_args(["--entropy", "True"])
    legit = importlib.import_module("legitimate").build_parser()
    assert legit.parse_args(["--resume", "True", "--lr", "3e-4"]).resume_unused is True
