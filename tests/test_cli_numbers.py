"""Every numeric flag of every script refuses values that make no sense, at parse time, with
one sentence naming the flag and what it accepts (issue: nonsense numbers ended in tracebacks
or in untrained checkpoints reported as results)."""
import importlib
import sys
from pathlib import Path

import pytest

from utils import Numeric

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

# script -> (module, parser factory, arguments the parser requires)
SCRIPTS = {
    "run": ("run", None, []),
    "steal": ("steal", None, []),
    "stealhead": ("stealhead", None, []),
    "legitimate": ("legitimate", None, []),
    "linear_eval": ("linear_eval", None, []),
    "linear_eval_sup": ("linear_eval_sup", None, []),
    "linear_finetune_simclr": ("linear_finetune_simclr", None, []),
    "knockoff": ("knockoff", None, []),
    "steallabels": ("steallabels", None, []),
    "extract": ("extract", None, []),
    "simclrsup": ("simclrsup", None, []),
    "measure_defenses": ("measure_defenses", None, ["detection", "--victim-checkpoint", "x", "--results", "r"]),
    "tables": ("tables", None, ["table2"]),
    "watermark": ("watermark", None, []),
    "stealsimsiam": ("stealsimsiam", None, []),
    "linsimsiam": ("linsimsiam", None, []),
    "sslextract": ("sslextract", None, []),
    "serve": ("serve", None, []),
}

# what 0 and -1 must give, written by hand from each flag's meaning (True = accepted); nan and a
# non-number are refused by every numeric flag
EXPECTED = {
    **dict.fromkeys(["batch_size", "batch", "draws", "epochs", "epochs_head", "epochstrain", "image_size",
                     "log_every_n_steps", "n", "n_views", "num_queries", "out_dim", "queries", "width",
                     "widthstolen", "holdout", "lr", "lrhead", "temperature", "temperaturesn", "crop_min_scale",
                     "num_labeled", "probe_epochs", "probe_lr", "num_queries_unused", "tempsn", "lr_unused",
                     "num_labeled_unused", "out_dim_unused", "temperature_unused", "watermark_hidden", "alpha",
                     "print_freq", "epochssteal", "nproc", "pretrain_epochs", "pretrain_batch_size", "moco_dim",
                     "moco_k", "pool_epochs", "max_epochs", "pretrain_lr", "moco_t", "lr_head", "distill_temperature",
                     "distill_crop_min_scale", "query_fraction", "port", "max_batch", "max_body_mb", "accounts",
                     "idempotency_hours"],
                   (False, False)),
    **dict.fromkeys(["gpu_index", "seed", "seeds", "workers", "pow_bits_min", "pow_bits_max", "weight_decay",
                     "sigma", "poison_strength", "warmup_epochs", "fgsm_eps", "hflip_p", "momentum", "probe_wd",
                     "sigma_unused", "watermark_weight", "start_epoch", "gpu", "pretrain_wd", "lr_encoder", "moco_m",
                     "batch_wait_ms"],
                   (True, False)),
    **dict.fromkeys(["world_size", "rank"], (True, True)),
    **dict.fromkeys(["mu", "detect_mu", "detect_threshold", "pow_threshold", "mu_unused"], (True, True)),
}


def _parser(name):
    module, args, _ = SCRIPTS[name]
    mod = importlib.import_module(module)
    return mod.build_parser(*args) if args else mod.build_parser()


def _numeric_actions(parser):
    return [a for a in parser._actions if isinstance(a.type, Numeric) or a.type in (int, float)]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_numeric_flag_is_checked_and_refuses_nonsense(name, capsys):
    parser = _parser(name)
    required = SCRIPTS[name][2]
    actions = _numeric_actions(parser)
    assert actions
    for action in actions:
        assert isinstance(action.type, Numeric), f"{name} {action.option_strings} is not checked"
        flag = action.option_strings[-1]
        zero_ok, negative_ok = EXPECTED[action.dest]
        for value, ok in (("0", zero_ok), ("-1", negative_ok), ("nan", False), ("abc", False)):
            argv = required + [flag, value]
            if ok:
                parser.parse_args(argv)
                continue
            with pytest.raises(SystemExit) as stop:
                parser.parse_args(argv)
            assert stop.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert flag in err and "expects" in err and repr(value) in err, (name, flag, value, err)


def test_the_reported_crashes_are_now_one_sentence(script):
    for args, flag in ((["steal.py", "--lr", "-1"], "--lr"), (["steal.py", "-b", "0"], "--batch-size"),
                       (["run.py", "-b", "0"], "--batch-size"), (["run.py", "--epochs", "0"], "--epochs"),
                       (["steal.py", "--epochs", "-1"], "--epochs"),
                       (["steal.py", "--losstype", "infonce", "--temperature", "0"], "--temperature")):
        res = script(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, args
        assert flag in res.stderr.splitlines()[-1] and "expects a positive" in res.stderr, res.stderr


def test_numeric_type_by_hand():
    prob = Numeric(float, 0, 1, low_open=True)
    assert prob("1") == 1.0 and prob("0.5") == 0.5
    with pytest.raises(Exception, match=r"expects a number in \(0, 1\], got '0'"):
        prob("0")
    assert Numeric(int, 1)("3") == 3
    with pytest.raises(Exception, match="expects a positive integer"):
        Numeric(int, 1)("1.5")


@pytest.mark.parametrize("name", ["steal", "stealhead", "legitimate"])
def test_the_references_wassersein_spelling_is_accepted(name):
    assert _parser(name).parse_args(["--losstype", "wassersein"]).losstype == "wasserstein"
