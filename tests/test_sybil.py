"""Several accounts (a Sybil attack): routing, what per-account defenses see, the recorded
statistics, steal.py --accounts, the sybil table's plan and its report section."""
import json
import sys
from pathlib import Path

import pytest
import torch

import run
import steal
from attacks import connect, sybil
from attacks.client import QueryClient, SybilConnection
from defenses.detect import SimilarQueryDetection
from defenses.pow_gate import ProofOfWork
from models import load_checkpoint, load_encoder
from service.victim import VictimService
from utils import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


class _PixelBackend:
    """The representation is the image itself, flattened (B x 48 for 3 x 4 x 4 images)."""
    out_dims = {"representation": 48}

    def outputs(self, x):
        return {"representation": x.float().flatten(1)}


def _images(ids):
    """Distinct images that are orthogonal one-hot vectors (cosine 0 between any two)."""
    x = torch.zeros(len(ids), 48)
    x[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return x.view(-1, 3, 4, 4)


def _two_views(ids):
    """A view-major batch as attacks.encoder.QueryViews.rows sends it: view 0 of each image, then view 1;
    both views are the image itself (an exact repeat)."""
    x = _images(ids)
    return torch.cat([x, x])


def _service(*defenses):
    return VictimService(_PixelBackend(), defenses=list(defenses))


@pytest.mark.parametrize("split, k, flagged", [("views", 1, [8]), ("views", 2, [0, 0]), ("views", 4, [0] * 4),
                                               ("images", 2, [4, 4]), ("images", 4, [2] * 4)])
def test_routing_views_apart_hides_the_repeats_from_a_detector(split, k, flagged):
    service = _service(SimilarQueryDetection("rep", "cosine", 0.9, sigma=0.0))
    names = sybil.account_names(k)
    conn = sybil.sybil_connection([service.connect(n) for n in names], split, n_views=2)
    x = _two_views(range(8))
    assert torch.equal(conn.answer(x), x.flatten(1))  # answers come back in the batch's order
    stats = sybil.account_stats(service, names)
    # one account: each image's second view repeats its first (8 of 16 flagged); views apart: none;
    # all views of an image on one account: still every second view
    assert [a["detect"]["flagged"] for a in stats["accounts"]] == flagged
    assert [a["used"] for a in stats["accounts"]] == [16 // k] * k
    assert stats["totals"]["detect"]["flagged"] == sum(flagged) and stats["totals"]["used"] == 16
    assert stats["totals"]["detect"]["mean_flagged_fraction"] == pytest.approx(sum(flagged) / 16)
    # the recorded numbers are the service's own books
    for name, row in zip(names, stats["accounts"]):
        state = service.accounts[name].state["detect"]
        assert (row["detect"]["checked"], row["detect"]["flagged"]) == (state["checked"], state["flagged"])


def test_routing_views_apart_lowers_the_proof_of_work_price():
    costs = {}
    for k in (1, 2):
        service = _service(ProofOfWork(bits_min=0, bits_max=10, on="rep"))
        names = sybil.account_names(k)
        conn = sybil.sybil_connection([service.connect(n) for n in names], "views", n_views=2)
        conn.answer(_two_views(range(8)))
        conn.answer(_two_views(range(8, 16)))
        costs[k] = sybil.account_stats(service, names)["totals"]["pow"]
    # one account: batch 1 at score 0 costs 2^(0 + log2 16) = 16 hashes; its second views make the score
    # 0.5, so batch 2 costs 2^(5 + 4) = 512. Two accounts (views apart): score 0 throughout, and each
    # pays 2^(0 + log2 8) = 8 per batch
    assert costs[1]["expected_hashes"] == 16 + 512 and costs[1]["deviation_score"] == 0.5
    assert costs[2]["expected_hashes"] == 4 * 8 and costs[2]["deviation_score"] == 0.0
    assert costs[2]["bits_per_query"] == 0.0 and costs[1]["bits_per_query"] == pytest.approx(4.0444, abs=1e-3)
    assert costs[1]["puzzles"] == 2 and costs[2]["puzzles"] == 4


def test_router_keeps_shares_exact_across_cached_rows():
    service = _service()
    names = sybil.account_names(3)
    conn = sybil.sybil_connection([service.connect(n) for n in names], "views", n_views=2)
    client = QueryClient(conn)
    for ids in ([0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8]):  # 2 and 3 are cached: only 4 and 5 are sent
        x = _two_views(ids)
        answers = client.query(x, keys=[(i, v) for v in range(2) for i in ids])
        assert torch.equal(answers, x.flatten(1))
    assert client.queries_used == 18 and [service.accounts[n].used for n in names] == [6, 6, 6]
    with pytest.raises(ValueError, match="view-major"):
        conn.answer(_images([0, 1, 2]))  # 3 rows cannot be 2 views of the same images
    assert isinstance(sybil.sybil_connection([service.connect(n) for n in names], "even"), SybilConnection)
    one = service.connect("attacker")
    assert sybil.sybil_connection([one], "views", n_views=2) is one  # one account: the connection itself


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victim")
    return run.main(["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--epochs", "1",
                     "--device", "cpu", "--logdir", str(logdir)])


def _steal(victim, logdir, *extra):
    return steal.main(["--victim-checkpoint", str(victim), "--losstype", "infonce", "--n-views", "2",
                       "--num_queries", "96", "-b", "16", "--epochs", "1", "--device", "cpu",
                       "--defenses", "detect", "--sigma", "0", "--logdir", str(logdir), *extra])


def test_steal_through_several_accounts_records_each_accounts_share(tiny_victim, tmp_path, monkeypatch, one_thread):
    services = []
    build = connect.service_from_config  # the owner's side, where open_victim builds it
    monkeypatch.setattr(connect, "service_from_config",
                        lambda *a, **kw: services.append(build(*a, **kw)) or services[-1])
    _steal(tiny_victim, tmp_path / "k3", "--accounts", "3")
    stats = json.loads((tmp_path / "k3" / "accounts.json").read_text())
    service = services[-1][0]
    names = ["attacker0", "attacker1", "attacker2"]
    assert [a["account"] for a in stats["accounts"]] == names
    assert [a["used"] for a in stats["accounts"]] == [32, 32, 32] == [service.accounts[n].used for n in names]
    for name, row in zip(names, stats["accounts"]):
        state = service.accounts[name].state["detect"]
        assert row["detect"]["flagged"] == state["flagged"] and row["detect"]["checked"] == state["checked"] == 32
    assert stats["totals"]["used"] == 96 and load_checkpoint(tmp_path / "k3" / "checkpoint.pt")["queries_used"] == 96


def test_one_account_is_the_attack_as_before(tiny_victim, tmp_path, one_thread):
    plain = _steal(tiny_victim, tmp_path / "plain")
    one = _steal(tiny_victim, tmp_path / "one", "--accounts", "1", "--sybil-split", "images")
    a, b = load_encoder(plain)[0].state_dict(), load_encoder(one)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "plain" / "queries.jsonl").read_text() == (tmp_path / "one" / "queries.jsonl").read_text()
    stats = json.loads((tmp_path / "one" / "accounts.json").read_text())
    assert [(r["account"], r["used"]) for r in stats["accounts"]] == [("attacker", 96)]


def test_bad_account_counts_get_one_sentence(tiny_victim, tmp_path, capsys):
    with pytest.raises(SystemExit):
        steal.main(["--accounts", "0"])
    assert "--accounts: expects a positive integer" in capsys.readouterr().err
    with pytest.raises(UserError, match="some accounts would send nothing"):
        _steal(tiny_victim, tmp_path / "s", "--accounts", "97")
    with pytest.raises(UserError, match="repeat --api-key"):
        steal.main(["--victim-url", "http://127.0.0.1:9", "--api-key", "k", "--accounts", "2"])
    with pytest.raises(UserError, match="--sybil-split must be one of"):
        sybil.sybil_connection([], "random")


def test_sybil_plan_records_a_probe_and_the_accounts_per_cell(tmp_path):
    import tables

    steps = tables.sybil_plan("sybil", "cpu", [0], None, str(tmp_path / "r.jsonl"))
    cells = [s for s in steps if s.script == "steal"]
    assert len(cells) == 2 * (1 + 3 + 3)  # two defenses x (K=1, then K=2, 4, 8 for each split)
    assert all("--accounts" in s.argv for s in cells)
    probe, record = steps[2], steps[3]
    assert (probe.script, record.script) == ("linear_eval", "sybil") and probe.needs == record.needs
    # the two records of a cell share table/row/column/seed: each step is done by its own kind only
    done = [{**probe.tags, "what": "probe"}]
    assert tables.probe_done(probe, done) and not tables.probe_done(record, done)


def _records():
    out = []
    for seed, noise in enumerate((0.0, 1.0, -1.0)):
        for defense in ("detect", "pow"):
            for k, split, flagged, bits, top1 in ((1, "views", 40, 6.0, 40), (8, "views", 2, 0.1, 50),
                                                  (8, "images", 35, 5.5, 41)):
                tags = {"table": "sybil", "scale": "cpu", "seed": seed, "row": defense, "defense": defense,
                        "accounts": str(k), "split": split, "column": f"K={k}"}
                out.append({**tags, "what": "probe", "metrics": {"top1": top1 + noise, "n_test": 1000}})
                t = {"used": 1000, "accounts": k}
                t["detect" if defense == "detect" else "pow"] = (
                    {"mean_flagged_fraction": (flagged + noise) / 100} if defense == "detect" else
                    {"mean_deviation_score": 0.3, "bits_per_query": bits + noise / 10, "hashes_per_query": 2 ** bits})
                out.append({**tags, "what": "accounts", "stats": {"totals": t, "accounts": [{"used": 1000 // k}] * k}})
    return out


def test_report_section_and_claims(tmp_path):
    from reports.defenses import sybil_claims, sybil_lines

    lines = sybil_lines(_records(), tmp_path)
    assert (tmp_path / "sybil_cpu.png").is_file()
    row = next(x for x in lines if x.startswith("| detect | views | 8 |"))
    assert "| 125 | 2.0 ± 1.0 |" in row and "| 50.0 ± 1.0 | 3 |" in row
    verdicts = [v for _, v, _ in sybil_claims(_records())]
    assert verdicts == ["holds"] * 4
