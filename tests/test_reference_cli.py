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
IMAGENET = ("stealsimsiam.py", "linsimsiam.py")


def _parse(command: str):
    words = shlex.split(command)
    script = words[1]
    if script in IMAGENET and not (ROOT / script).is_file():
        pytest.skip(f"{script} comes with its own issue (ImageNet)")
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


def test_no_effect_and_refused_reference_values():
    steal = importlib.import_module("steal").build_parser()
    args = steal.parse_args(["--entropy", "False", "--losstype", "wassersein", "--momentum", "0.5"])
    assert args.entropy is False and args.losstype == "wasserstein" and args.momentum == 0.5
    with pytest.raises(SystemExit):
        steal.parse_args(["--entropy", "True"])
    legit = importlib.import_module("legitimate").build_parser()
    assert legit.parse_args(["--resume", "True", "--lr", "3e-4"]).resume_unused is True
