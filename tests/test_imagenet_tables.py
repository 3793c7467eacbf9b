"""The plans of Tables 3 and 8 (scripts/tables.py): the paper's rows and commands, torchrun for
several GPUs, the CPU stand-in's chain (victim -> SimSiam export -> steal -> probe) resuming from
its records, and the report's sections."""
import sys
from pathlib import Path

import utils
from reports import document, paper_tables, stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tables  # noqa: E402


def test_paper_scale_commands_follow_the_paper(capsys):
    tables.main(["table3", "--scale", "paper", "--dry-run", "-data", "/d", "--pretrained", "ss.pth.tar",
                 "--nproc", "8"])
    out = capsys.readouterr().out.splitlines()
    steals = [line for line in out if "stealsimsiam.py" in line]
    assert len(steals) == 11 and all(line.startswith("torchrun --standalone --nproc_per_node=8 ") for line in steals)
    assert all("--pretrained ss.pth.tar" in line and "--lars" in line and "-b 512" in line for line in steals)
    assert sum("--useval True" in line for line in steals) == 2
    assert sum("--num_queries 250000" in line for line in steals) == 1
    probes = [line for line in out if "linsimsiam.py" in line]
    assert len(probes) == 13 * 5  # victim, random and 11 copies x 5 columns
    assert all("--lars --lr 1.0" in line for line in probes)
    assert {c for c in ("cifar10", "cifar100", "stl10", "svhn", "fashionmnist")
            if any(f"--dataset {c} " in line for line in probes)} == {"cifar10", "cifar100", "stl10", "svhn",
                                                                       "fashionmnist"}
    tables.main(["table8", "--scale", "paper", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    steals = [line for line in out if "stealsimsiam.py" in line]
    assert [int(line.split("--num_queries ")[1].split()[0]) for line in steals] == [
        500, 1000, 5000, 10000, 20000, 30000, 40000, 50000]
    assert all(line.startswith("python stealsimsiam.py") and "--datasetsteal cifar10" in line for line in steals)
    # the batch of 512 is lowered below 4 batches of queries (500 queries would give no step)
    assert "-b 128" in steals[0] and "-b 128" not in steals[-1]


def test_cpu_chain_resumes_from_records(tmp_path, monkeypatch):
    steps = tables.imagenet_plan("table8", "cpu", [0, 1], None, str(tmp_path / "r.jsonl"))
    seed0 = [s for s in steps if s.tags.get("seed") == "0" or "_s0" in s.done_when]
    assert [s.script for s in seed0[:2]] == ["run", "scripts.imagenet_cpu"]
    assert sum(s.script == "stealsimsiam" for s in seed0) == 4
    # about the same image-steps at every query count: 300 epochs at 100 queries, 10 at 3000
    steal100 = next(s for s in seed0 if s.script == "stealsimsiam" and "100" in s.argv)
    last = len(steal100.argv) - 1 - steal100.argv[::-1].index("--epochs")  # argparse: the last value wins
    assert steal100.argv[last + 1] == "300"
    monkeypatch.setattr(tables, "checkpoint_finished", lambda path: False)
    done = [{**s.tags} for s in steps if s.script == "linsimsiam" and s.tags["seed"] == "0"]
    todo = tables.pending(steps, done)
    assert not any(t for s, t in zip(steps, todo) if s.tags.get("seed") == "0" or "_s0" in s.done_when)
    # one missing probe of a copy brings back its steal, the exported victim and the run.py victim
    missing = next(s for s in steps if s.script == "linsimsiam" and s.tags["seed"] == "0" and s.tags["row"] != "victim"
                   and s.tags["row"] != "random")
    todo = tables.pending(steps, [r for r in done if r != missing.tags])
    needed = {s.script for s, t in zip(steps, todo) if t and "_s0" in s.done_when}
    assert needed == {"run", "scripts.imagenet_cpu", "stealsimsiam"}


def test_report_has_the_imagenet_sections(tmp_path):
    for seed in range(3):
        for row, acc in (("victim", 61.0), ("random", 30.0), ("mse_1000_imagenet", 55.0),
                         ("infonce_1000_imagenet", 58.0)):
            utils.append_jsonl(tmp_path / "table3_cpu.jsonl", {"table": "table3", "scale": "cpu", "row": row,
                                                               "column": "mnistm5k", "seed": str(seed),
                                                               "metrics": {"top1": acc + seed, "n_test": 1000}})
        for n, acc in ((100, 40.0), (1000, 50.0)):
            utils.append_jsonl(tmp_path / "table8_cpu.jsonl", {"table": "table8", "scale": "cpu",
                                                               "row": f"infonce_{n}", "column": "mnistm5k",
                                                               "seed": str(seed),
                                                               "metrics": {"top1": acc + seed, "n_test": 1000}})
    text = document.write_report(tmp_path, tmp_path / "REPORT.md").read_text()
    assert "Table 3: ImageNet SimSiam victim" in text and "Table 8: ImageNet victim" in text
    assert "Paper: the published SimSiam ResNet50 victim, stolen at 224 px." in text
    assert "| mse_1000_imagenet | 56.0 ±" in text and "re-exported in SimSiam's checkpoint format" in text
    assert (tmp_path / "table8_cpu_queries.png").is_file()
    # the claims by hand: every seed shifts all rows alike, so paired differences have no spread
    data = paper_tables.collect([r for f in ("table3_cpu.jsonl", "table8_cpu.jsonl")
                                 for r in utils.read_jsonl(tmp_path / f)])
    claims = {c: (v, e) for c, v, e in paper_tables.imagenet_claims(data)}
    verdicts = [v for v, _ in claims.values()]
    assert len(claims) == 4 and verdicts == [stats.HOLDS] * 4, claims
    infonce_vs_mse = next(e for c, (v, e) in claims.items() if "InfoNCE steals" in c)
    assert "1000_imagenet +3.0 ± 0.0 (paired by seed, 3 seeds)" in infonce_vs_mse
    best = next(e for c, (v, e) in claims.items() if "90%" in c)
    assert "infonce_1000_imagenet" in best  # (58 + s) / (61 + s): 95.1% of the victim on average
    # a copy below random fails the first claim
    for seed in range(3):
        utils.append_jsonl(tmp_path / "table3_cpu.jsonl", {"table": "table3", "scale": "cpu", "row": "mse_10_imagenet",
                                                           "column": "mnistm5k", "seed": str(seed),
                                                           "metrics": {"top1": 20.0 + seed, "n_test": 1000}})
    data = paper_tables.collect(utils.read_jsonl(tmp_path / "table3_cpu.jsonl"))
    assert paper_tables.imagenet_claims(data)[0][1] == stats.FAILS
