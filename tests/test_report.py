"""Reproduction scripts (plans, skipping finished work), the results file, and the report."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import report
import utils
from data_aug import get_dataset
from linear_eval import augmented_probe
from models import build_encoder, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tables  # noqa: E402


def _record(table, row, column, seed, top1):
    return {"table": table, "scale": "cpu", "row": row, "column": column, "seed": str(seed),
            "metrics": {"top1": top1, "top5": 99.0}}


@pytest.fixture
def results_dir(tmp_path):
    recs = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        for row, acc in {"victim": 63.0, "random": 45.0, "mse": 62.0, "infonce": 61.0, "softnn": 60.0,
                         "barlow": 44.0}.items():
            recs.append(_record("table2", row, "digitsm", seed, acc + shift))
            recs.append(_record("table2", row, "digits", seed, acc - 10 + shift))
    recs += [_record("table1", "victim", "digitsm", 0, 63.0), _record("table1", "direct", "digitsm", 0, 60.0),
             _record("table1", "recreate_head", "digitsm", 0, 54.0)]
    for loss, accs in {"mse": (50.0, 55.0), "infonce": (45.0, 58.0)}.items():
        for n, acc in zip((100, 2000), accs):
            recs.append(_record("table7", f"{loss}_{n}", "digitsm", 0, acc))
    recs += [_record("table7", "victim", "digitsm", 0, 63.0), _record("table7", "random", "digitsm", 0, 45.0)]
    for r in recs:
        utils.append_jsonl(tmp_path / "fixture.jsonl", r)
    return tmp_path


def test_report_tables_claims_and_plots(results_dir):
    out = report.write_report(results_dir, results_dir / "REPORT.md")
    text = out.read_text()
    # mean +- std over the two seeds, with the paper's value beside it
    assert "| MSE | 63.0 ± 1.4 | 53.0 ± 1.4 | 75.5 / 64.8 / 58.8 |" in text
    # every claim is stated with its verdict and evidence
    claims = [line for line in text.splitlines() if line.startswith("| ") and ("holds" in line)]
    assert len(claims) == 4 and all("**holds**" in c for c in claims), claims
    assert "100 queries: MSE 50.0 vs InfoNCE 45.0" in text
    for png in ("table2_cpu_losses.png", "table7_cpu_queries.png"):
        assert (results_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text


def test_report_says_does_not_hold(results_dir):
    utils.append_jsonl(results_dir / "fixture.jsonl", _record("table1", "recreate_head", "digitsm", 1, 80.0))
    text = report.write_report(results_dir, results_dir / "R.md").read_text()
    line = next(l for l in text.splitlines() if l.startswith("| Direct extraction"))
    assert "**does not hold**" in line


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(utils.UserError, match="no results files"):
        report.write_report(tmp_path, tmp_path / "R.md")


def test_append_is_atomic_and_corrupt_lines_are_reported(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    utils.append_jsonl(path, {"a": 1})
    utils.append_jsonl(path, {"a": 2})
    assert [r["a"] for r in utils.read_jsonl(path)] == [1, 2]

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        utils.append_jsonl(path, {"a": 3})
    monkeypatch.undo()
    assert [r["a"] for r in utils.read_jsonl(path)] == [1, 2]  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]  # no temporary file left
    path.write_text(path.read_text() + '{"a": \n')
    with pytest.raises(utils.UserError, match="line 3"):
        utils.read_jsonl(path)


def test_tables_skip_finished_probes_and_dry_run_matches_the_paper(tmp_path, capsys):
    steps = tables.plan("table2", "cpu", [0], None, str(tmp_path / "r.jsonl"))
    probes = [s for s in steps if s.script == "linear_eval"]
    assert len(probes) == 8 * 2  # victim, random, 6 losses x digitsm, digits
    records = [{**probes[0].tags}]
    assert tables.is_done(probes[0], records) and not tables.is_done(probes[1], records)
    # a stealing step is done only when its checkpoint finished all its epochs
    ckpt = tmp_path / "steal" / "checkpoint.pt"
    steal_step = tables.Step("steal", [], done_when=str(ckpt))  # absolute: independent of the checkout's runs/
    assert not tables.is_done(steal_step, [])
    enc = build_encoder("resnet18", width=4)
    save_checkpoint(ckpt, encoder=enc, epoch=1, config={"epochs": 2})
    assert not tables.is_done(steal_step, [])
    save_checkpoint(ckpt, encoder=enc, epoch=2, config={"epochs": 2})
    assert tables.is_done(steal_step, [])

    tables.main(["table2", "--scale", "paper", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "python run.py --dataset cifar10 --seed 0 --resume --scale paper"
    steals = [line for line in out if line.startswith("python steal.py")]
    assert len(steals) == 6 and all("--num_queries 9000" in line for line in steals)
    assert any("--dataset-test stl10" in line for line in out)
    tables.main(["table7", "--scale", "paper", "--dry-run"])
    out = capsys.readouterr().out
    assert "--num_queries 50000 --datasetsteal svhn" in out and "--losstype softnn" in out


def test_augmented_probe_checks_the_backbone_stays_frozen():
    train = get_dataset("digits", "train", image_size=8).subset(range(128))
    test = get_dataset("digits", "test", image_size=8).subset(range(64))
    torch.manual_seed(0)
    enc = build_encoder("resnet18", width=4)
    m = augmented_probe(enc, train, test, device=torch.device("cpu"), epochs=2, batch_size=64)
    assert 0 <= m["top1"] <= 100 and m["augment"]
    with pytest.raises(AssertionError, match="changed"):
        augmented_probe(enc, train, test, device=torch.device("cpu"), epochs=1, batch_size=64,
                        freeze_backbone=False)


def test_results_record_tags_roundtrip(tmp_path):
    rec = _record("table2", "mse", "digitsm", 0, 61.0)
    utils.append_jsonl(tmp_path / "x.jsonl", rec)
    assert json.loads((tmp_path / "x.jsonl").read_text()) == rec
