"""Reproduction scripts (plans, skipping finished work), the results file, and the report."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import utils
from data_aug import get_dataset
from evaluation.probe import augmented_probe
from models import build_encoder, save_checkpoint
from reports import document, paper_tables, stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tables  # noqa: E402


def _record(table, row, column, seed, top1):
    return {"table": table, "scale": "cpu", "row": row, "column": column, "seed": str(seed),
            "victim_train_size": "3000", "metrics": {"top1": top1, "top5": 99.0, "n_test": 1000}}


SHIFTS = (0.0, 0.5, 1.0)  # per seed: mean +0.5, sd 0.5, 95% CI half-width t(0.975, 2) * 0.5 / sqrt(3) = 1.24


@pytest.fixture
def results_dir(tmp_path):
    recs = []
    for seed, shift in enumerate(SHIFTS):
        for row, acc in {"victim": 64.0, "random": 30.0, "pixels": 30.0, "mse": 62.0, "infonce": 61.0,
                         "softnn": 60.0, "barlow": 44.0}.items():
            recs.append(_record("table2", row, "mnistm5k", seed, acc + shift))
            recs.append(_record("table2", row, "mnist5k", seed, acc - 10 + shift))
        recs += [_record("table1", "victim", "mnistm5k", seed, 64.0 + shift),
                 _record("table1", "direct", "mnistm5k", seed, 60.0 + shift),
                 _record("table1", "recreate_head", "mnistm5k", seed, 54.0 + shift)]
        for loss, accs in {"mse": (50.0, 55.0), "infonce": (45.0, 58.0)}.items():
            for n, acc in zip((100, 3000), accs):
                recs.append(_record("table7", f"{loss}_{n}", "mnistm5k", seed, acc + shift))
        recs += [_record("table7", "victim", "mnistm5k", seed, 64.0 + shift),
                 _record("table7", "random", "mnistm5k", seed, 30.0 + shift)]
        for row, acc in {"victim": 64.0, "mse_100": 55.0, "mse_300": 62.0, "softnn_300": 58.0}.items():
            recs.append(_record("efficiency", row, "mnistm5k", seed, acc + shift))
    for r in recs:
        utils.append_jsonl(tmp_path / "fixture.jsonl", r)
    return tmp_path


def test_confidence_interval_and_verdicts_by_hand():
    e = stats.estimate([60.0, 61.0, 62.0])  # mean 61, sd 1, t(0.975, 2) = 4.3027
    assert e.half_width == pytest.approx(4.3027 / 3 ** 0.5, rel=1e-4) and str(e) == "61.0 ± 2.5"
    assert str(stats.estimate([70.0])) == "70.0" and stats.estimate([70.0]).half_width is None
    # the rule (reports.stats): rows sharing their seeds are compared paired by seed
    base, far = {"0": 60.0, "1": 61.0, "2": 62.0}, {"0": 70.0, "1": 71.0, "2": 72.0}
    assert stats.exceeds(stats.difference(far, base)) == "holds"
    assert stats.exceeds(stats.difference(base, far)) == "does not hold"
    # +2 at every seed: the rows' intervals (63 ± 2.5, 61 ± 2.5) overlap, yet paired the gain is shown (the old
    # rule, overlapping intervals, said inconclusive)
    assert stats.exceeds(stats.difference({"0": 62.0, "1": 63.0, "2": 64.0}, base)) == "holds"
    # +2, +2, -1: mean 1, sd sqrt(3), half-width 4.3027 * sqrt(3) / sqrt(3): the interval reaches below 0
    assert stats.exceeds(stats.difference({"0": 62.0, "1": 63.0, "2": 61.0}, base)) == "inconclusive"
    assert stats.exceeds(stats.difference({"0": 70.0}, {"0": 60.0})) == "inconclusive"  # one seed: no interval
    assert stats.exceeds(stats.one_sample({"0": 96.0, "1": 96.5, "2": 97.0}), 95.0) == "holds"
    assert stats.exceeds(stats.one_sample({"0": 94.0, "1": 96.0, "2": 98.0}), 95.0) == "inconclusive"


def test_report_tables_claims_and_plots(results_dir):
    out = document.write_report(results_dir, results_dir / "REPORT.md")
    text = out.read_text()
    # mean +- 95% CI over the three seeds, with the paper's value beside it
    assert "| MSE | 62.5 ± 1.2 | 52.5 ± 1.2 | 75.5 / 64.8 / 58.8 |" in text
    assert "3 seed(s) (0, 1, 2); test set 1,000 images" in text
    claims = [line for line in text.splitlines() if line.startswith("| ") and "**" in line and "|---" not in line]
    verdicts = {c.split(" | ")[0][2:]: c.split(" | ")[1] for c in claims}
    assert len(verdicts) == 8 and set(verdicts.values()) == {"**holds**"}, verdicts
    assert "100 queries: MSE 50.5 ± 1.2 vs InfoNCE 45.5 ± 1.2" in text
    # query efficiency: MSE at 300 queries = 10% of 3,000 gives 62.5 / 64.5 = 96.9% of the victim
    assert "MSE at 10% of the training set gives 96.9 ± 0.1% of the victim" in text  # 96.88, 96.90, 96.92
    assert "Fewest queries reaching 95% of the victim (mean): MSE at 10.0% of the training set" in text
    for png in ("table2_cpu_losses.png", "table7_cpu_queries.png", "efficiency_cpu.png"):
        assert (results_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text


def test_report_says_does_not_hold_and_inconclusive(results_dir):
    for seed, shift in enumerate(SHIFTS):  # recreate head now measurably above direct extraction
        utils.append_jsonl(results_dir / "fixture.jsonl", _record("table1", "recreate_head", "mnistm5k", seed,
                                                                  70.0 + shift))
        # the victim's margin over raw pixels now within its interval
        utils.append_jsonl(results_dir / "fixture.jsonl", _record("table2", "pixels", "mnistm5k", seed, 44.0 + shift))
    text = document.write_report(results_dir, results_dir / "R.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| Direct extraction"))
    assert "**does not hold**" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("| Benchmark: the victim is a real"))
    assert "**inconclusive**" in line and "raw pixels 44.5 ± 1.2" in line


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(utils.UserError, match="no results files"):
        document.write_report(tmp_path, tmp_path / "R.md")


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


def test_tables_skip_finished_probes_and_dry_run_matches_the_paper(tmp_path, capsys, monkeypatch):
    steps = tables.plan("table2", "cpu", [0], None, str(tmp_path / "r.jsonl"))
    probes = [s for s in steps if s.script == "linear_eval"]
    assert len(probes) == 9 * 2  # victim, random, pixels, 6 losses x mnistm5k, mnist5k
    records = [{**probes[0].tags}]
    assert tables.probe_done(probes[0], records) and not tables.probe_done(probes[1], records)
    # a stealing step is done only when its checkpoint finished all its epochs
    ckpt = tmp_path / "steal" / "checkpoint.pt"  # absolute: independent of the checkout's runs/
    assert not tables.checkpoint_finished(str(ckpt))
    enc = build_encoder("resnet18", width=4)
    save_checkpoint(ckpt, encoder=enc, epoch=1, config={"epochs": 2})
    assert not tables.checkpoint_finished(str(ckpt))
    save_checkpoint(ckpt, encoder=enc, epoch=2, config={"epochs": 2})
    assert tables.checkpoint_finished(str(ckpt))

    # resuming from the records alone: with every probe of one seed recorded, no victim or stealing run
    # of that seed is needed, though their checkpoints are absent (a fresh clone, whatever runs/ holds here)
    monkeypatch.setattr(tables, "checkpoint_finished", lambda path: False)
    steps = tables.plan("table2", "cpu", [0, 1], None, str(tmp_path / "r.jsonl"))
    done = [{**s.tags} for s in steps if s.script == "linear_eval" and s.tags["seed"] == "0"]
    todo = tables.pending(steps, done)
    assert not any(t for s, t in zip(steps, todo) if "_s0/" in s.done_when or s.tags.get("seed") == "0")
    assert all(t for s, t in zip(steps, todo) if s.tags.get("seed") == "1")
    assert any(t for s, t in zip(steps, todo) if s.script == "run" and "1" in s.argv)
    # one missing probe of seed 0 brings back its stealing run and the victim it needs
    todo = tables.pending(steps, done[:-1])
    needed = [s for s, t in zip(steps, todo) if t and "_s0/" in s.done_when]
    missing = steps.index(next(s for s in steps if s.tags == done[-1]))
    assert {s.script for s in needed} == {"run", "steal"} and steps[missing].needs in [
        s.done_when for s in needed]

    # the raw-pixel probe is the same computation in every table: reused from another table's record
    pixels = next(s for s in steps if s.tags.get("row") == "pixels")
    assert tables.reusable_pixels(pixels, tmp_path) is None
    utils.append_jsonl(tmp_path / "table9_cpu.jsonl", {**pixels.tags, "table": "table9", "metrics": {"top1": 36.0}})
    reused = tables.reusable_pixels(pixels, tmp_path)
    assert (reused["table"] == "table2" and reused["metrics"]["top1"] == 36.0
            and reused["reused_from"] == "table9_cpu.jsonl")

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
    rec = _record("table2", "mse", "mnistm5k", 0, 61.0)
    utils.append_jsonl(tmp_path / "x.jsonl", rec)
    assert json.loads((tmp_path / "x.jsonl").read_text()) == rec


def test_sweeps_share_runs_with_table2_and_keep_the_image_steps():
    eff = tables.plan("efficiency", "cpu", [0], None, "r.jsonl")
    t2 = tables.plan("table2", "cpu", [0], None, "r.jsonl")
    t1 = tables.plan("table1", "cpu", [0], None, "r.jsonl")
    runs = lambda steps: {s.done_when for s in steps if s.script in ("steal", "stealhead")}  # noqa: E731
    shared = runs(eff) & runs(t2)
    assert {p.rsplit("/", 2)[1] for p in shared} == {"steal_mse_q500", "steal_infonce_q500", "steal_softnn_q500"}
    assert "runs/tables_cpu/mnistm5k_s0/steal_softnn_q500/checkpoint.pt" in runs(t1)  # Table 1's direct row
    epochs = {s.argv[s.argv.index("--num_queries") + 1]: s.argv[s.argv.index("--epochs") + 1]
              for s in eff if "--epochs" in s.argv}
    assert epochs == {"100": "500", "300": "166", "1000": "50"}  # 50,000 image-steps, at most 500 epochs
    t9 = tables.plan("table9", "cpu", [0], None, "r.jsonl")
    assert any("--force True" in s.command() and "steal_softnn_q3000_train_e16" in s.command() for s in t9)


# ------------------------------------------------------------------ the defense tables


def test_defense_plan_pairs_a_legitimate_user_with_an_adversary_per_column():
    steps = tables.defense_plan("table10", "cpu", [0], None, "results/table10_cpu.jsonl")
    scripts = [s.script for s in steps]
    assert scripts[0] == "run" and scripts.count("legitimate") == 5 and scripts.count("steal") == 5
    assert scripts.count("linear_eval") == 5
    steals = [s for s in steps if s.script == "steal"]
    # sigma 0: noise of std 0, the undefended answers through the defended code path (shared with table11)
    assert steals[0].done_when.endswith("mnistm5k_s0/steal_mse_q1000_e50_defensesnoise_sigma0/checkpoint.pt")
    assert steals[0].argv[-4:] == ["--defenses", "noise", "--sigma", "0"]
    t11 = tables.defense_plan("table11", "cpu", [0], None, "r.jsonl")
    assert [s for s in t11 if s.script == "steal"][0].done_when == steals[0].done_when
    assert steals[-1].argv[-6:] == ["--defenses", "noise", "--mu", "10", "--sigma", "2"]
    columns = [s.tags["column"] for s in steps if s.script == "legitimate"]
    assert columns == ["sigma=0", "sigma=0.25", "sigma=0.5", "sigma=1", "sigma=2"]
    t12 = tables.defense_plan("table12", "cpu", [0], None, "r.jsonl")
    assert {s.tags["column"] for s in t12 if s.script == "legitimate"} == {
        f"{m} sigma={x}" for m in ("cosine", "l2") for x in (0, 20, 40, 60)}
    assert all("--n-views" in s.argv for s in t12 if s.script == "steal")
    measure = tables.defense_plan("table13", "cpu", [0, 1], None, "r.jsonl")
    assert [s.script for s in measure] == ["run", "measure_defenses"] * 2
    assert measure[1].command().startswith("python measure_defenses.py detection")


@pytest.mark.parametrize("victim_trained", [True, False])
def test_defense_plan_resumes_from_its_records(monkeypatch, victim_trained):
    monkeypatch.setattr(tables, "checkpoint_finished", lambda path: victim_trained)
    steps = tables.defense_plan("poison", "cpu", [0], None, "r.jsonl")
    done = [{"table": "poison", "scale": "cpu", "row": s.tags["row"], "column": s.tags["column"], "seed": "0"}
            for s in steps if s.tags]
    assert not any(tables.pending(steps, done))
    todo = tables.pending(steps, done[1:])  # the first legitimate user's record is missing
    # it needs the victim: trained already, or trained first (a fresh clone has no runs/)
    expected = ["legitimate"] if victim_trained else ["run", "legitimate"]
    assert [steps[i].script for i, t in enumerate(todo) if t] == expected


def _defense_records():
    recs = []
    # per seed (0, 1, 2): undefended 60 (legitimate) / 58 (adversary); at sigma=2 the legitimate user loses
    # 1 + shift and the adversary 6 + 2 * shift: the difference of drops is 5 + shift, mean 5.5, sd 0.5
    for seed, shift in enumerate(SHIFTS):
        for row, base, drop in (("legitimate", 60.0, 1.0 + shift), ("adversary", 58.0, 6.0 + 2 * shift)):
            recs.append(_record("table10", row, "sigma=0", seed, base))
            recs.append(_record("table10", row, "sigma=2", seed, base - drop))
        recs.append({"table": "table13", "scale": "cpu", "row": "detection", "column": "all", "seed": str(seed),
                     "metrics": {"metric": "cosine", "on": "head", "threshold": 0.9, "n": 500, "draws": 5,
                                 "fp_mean": 5.0 + shift, "fp_std": 0.3, "fn_mean": 24.0, "fn_std": 1.0}})
    return recs


def test_noise_claim_compares_paired_drops_by_hand(tmp_path):
    from reports.defenses import noise_claims

    data = paper_tables.collect(_defense_records())
    (claim, verdict, evidence), = noise_claims(data)
    # mean 5.5, half-width t(0.975, 2) * 0.5 / sqrt(3) = 1.24: the interval is above 0
    assert "mean-shifted noise" in claim and verdict == "holds" and "5.5 ± 1.2" in evidence
    recs = [dict(r, metrics={**r["metrics"], "top1": 80.0}) if r.get("row") == "legitimate"
            and r.get("column") == "sigma=0" else r for r in _defense_records()]
    (_, verdict, _), = noise_claims(paper_tables.collect(recs))
    assert verdict == "does not hold"  # now the legitimate user loses about 21 points, the adversary 7


def test_report_writes_the_defense_sections_and_the_tradeoff_plot(tmp_path):
    for r in _defense_records():
        utils.append_jsonl(tmp_path / "table10_cpu.jsonl", r)
    out = document.write_report(tmp_path, tmp_path / "REPORT.md")
    text = out.read_text()
    assert "Table 10: Gaussian noise of mean 10" in text and "| sigma=2 | 58.5 ± " in text
    assert "| cosine | head | 0.9 | 5.5 ± 0.5 | 24.0 ± 0.0 |" in text  # fp 5.0, 5.5, 6.0 over seeds
    assert (tmp_path / "table13_cpu_tradeoff.png").stat().st_size > 1000
