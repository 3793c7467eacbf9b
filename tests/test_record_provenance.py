"""Evaluation records carry what was run (issue 27): the evaluated model's training config, read from
its run directory's config.yaml (API keys redacted), and the probe's own flags; a random baseline names
only the checkpoint whose architecture it borrows."""
import pytest
import torch

import linear_eval
from models import build_encoder, save_checkpoint
from utils import read_jsonl, write_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TRAINING = {"dataset": "digits", "image_size": 8, "arch": "resnet18", "width": 4, "losstype": "infonce",
            "num_queries": 50, "epochs": 3, "lr": 0.1, "batch_size": 16, "n_views": 2, "query_aug": "standard",
            "defenses": ["noise"], "sigma": 0.5, "mu": 0.0, "victim_checkpoint": "runs/victim_digits/checkpoint.pt",
            "api_key": "sk-secret-value-1234"}


def test_linear_eval_records_the_model_and_probe_configs(tmp_path):
    run = tmp_path / "steal_infonce_q50_e3"
    torch.manual_seed(0)
    ckpt = save_checkpoint(run / "checkpoint.pt", encoder=build_encoder("resnet18", width=4),
                           config={"dataset": "digits", "image_size": 8})
    write_config(run, TRAINING)
    results = tmp_path / "r.jsonl"
    records = linear_eval.main(["--checkpoint", str(ckpt), "--modeltype", "stolen", "random", "--dataset-test",
                                "digits", "--device", "cpu", "-n", "300", "--results", str(results),
                                "--tag", "table=t"])
    stolen, random = records
    assert read_jsonl(results)[0]["model_config"] == stolen["model_config"]
    cfg = stolen["model_config"]
    for key in ("epochs", "lr", "batch_size", "losstype", "num_queries", "n_views", "query_aug", "defenses",
                "sigma", "mu", "victim_checkpoint"):
        assert cfg[key] == TRAINING[key], key  # from config.yaml, not the checkpoint's shorter copy
    assert cfg["api_key"] == "...1234" and "sk-secret" not in str(read_jsonl(results))
    assert random["model_config"] == {"init": "random", "architecture_from": str(ckpt)}
    probe = stolen["probe_config"]
    assert probe["dataset_test"] == "digits" and probe["num_labeled"] == 300 and "tag" not in probe


def test_without_config_yaml_the_checkpoint_config_is_recorded(tmp_path):
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", encoder=build_encoder("resnet18", width=4),
                           config={"dataset": "digits", "image_size": 8, "epochs": 7})
    (record,) = linear_eval.main(["--checkpoint", str(ckpt), "--modeltype", "victim", "--dataset-test", "digits",
                                  "--device", "cpu", "-n", "300", "--results", str(tmp_path / "r.jsonl")])
    assert record["model_config"]["epochs"] == 7 and record["model_config"]["image_size"] == 8
