"""The one statistics rule of the report (reports/stats.py): the paired and Welch intervals and the
equivalence test against scipy and hand-computed values, pairing by seed (never by order), the fall-back
to Welch; and every verdict of the committed report's claims table recomputed from results/*.jsonl,
independently of reports/ (scipy only)."""
from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
from scipy import stats as sps

from reports import document, paper_tables, stats

ROOT = Path(__file__).resolve().parent.parent
T975_2, T95_2 = 4.302652729749462, 2.9199855803537242  # Student t quantiles, 2 degrees of freedom


# ----------------------------------------------------------------------------- (a) the rule on small inputs


def test_paired_interval_by_hand_and_against_scipy():
    a, b = {"0": 61.0, "1": 64.0, "2": 66.0}, {"0": 60.0, "1": 62.0, "2": 63.0}  # differences 1, 2, 3
    mean, low, high = stats.paired_interval(a, b)
    hw = T975_2 * 1.0 / math.sqrt(3)  # sd of (1, 2, 3) is 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - hw, 2.0 + hw), abs=1e-12)
    ref = sps.ttest_rel([61.0, 64.0, 66.0], [60.0, 62.0, 63.0]).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    d = stats.difference(a, b)
    assert d.method == stats.PAIRED and d.sizes == (3,) and str(d) == "+2.0 ± 2.5"
    assert d.how == "paired by seed, 3 seeds"
    lo90, hi90 = d.interval(0.90)
    assert (lo90, hi90) == pytest.approx((2.0 - T95_2 / math.sqrt(3), 2.0 + T95_2 / math.sqrt(3)), abs=1e-12)
    with pytest.raises(ValueError, match="same units"):
        stats.paired_interval(a, {"0": 1.0, "1": 2.0})


def test_welch_interval_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0, 10.0]  # means 2, 7; variances 1, 20/3
    se2 = 1 / 3 + (20 / 3) / 4  # = 2
    df = se2 ** 2 / ((1 / 3) ** 2 / 2 + ((20 / 3) / 4) ** 2 / 3)  # Welch-Satterthwaite: 4.0755
    hw = sps.t.ppf(0.975, df) * math.sqrt(se2)
    mean, low, high = stats.welch_interval(a, b)
    assert (mean, low, high) == pytest.approx((-5.0, -5.0 - hw, -5.0 + hw), abs=1e-12)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert df == pytest.approx(4.0755, abs=1e-4)


def test_a_seed_mismatch_falls_back_to_welch_and_says_so():
    a, b = {"0": 1.0, "1": 2.0, "2": 3.0}, {"0": 4.0, "1": 6.0, "3": 8.0, "4": 10.0}
    d = stats.difference(a, b)
    assert d.method == stats.WELCH and d.sizes == (3, 4) and d.how == "Welch, seeds differ: 3 vs 4 seeds"
    ref = sps.ttest_ind([1.0, 2.0, 3.0], [4.0, 6.0, 8.0, 10.0], equal_var=False).confidence_interval(0.95)
    assert d.interval() == pytest.approx((ref.low, ref.high), abs=1e-12)
    # a partial overlap is a mismatch too: not paired on the two shared seeds
    assert stats.difference({"0": 1.0, "1": 2.0, "2": 4.0}, {"0": 0.0, "1": 1.0, "3": 2.0}).method == stats.WELCH
    # two victims at one seed (Table 20: SSL and supervised) get different units, so their rows never pair
    recs = [{"table": "t", "scale": "cpu", "seed": s, "row": row, "victim_checkpoint": v}
            for s in (0, 1) for row, v in (("a", f"ssl_s{s}"), ("b", f"sup_s{s}"))]
    units = stats.pairing_units(recs)
    assert units == ["0@ssl_s0", "0@sup_s0", "1@ssl_s1", "1@sup_s1"]
    one = [dict(r, victim_checkpoint=f"ssl_s{r['seed']}") for r in recs]
    assert stats.pairing_units(one) == ["0", "0", "1", "1"]
    # in the report: a row of other seeds is compared by Welch, and the evidence says so
    rows = [{"table": "table1", "scale": "cpu", "row": row, "column": "mnistm5k", "seed": seed,
             "metrics": {"top1": top1 + seed}} for row, top1, seeds in (("victim", 64.0, (0, 1, 2)),
                                                                       ("direct", 60.0, (0, 1, 2)),
                                                                       ("recreate_head", 50.0, (0, 1, 3)))
            for seed in seeds]
    (claim, verdict, evidence), = [c for c in paper_tables.claims(paper_tables.collect(rows), {})
                                   if c[0].startswith("Direct extraction")]
    welch = stats.welch_interval([60.0, 61.0, 62.0], [50.0, 51.0, 53.0])
    assert verdict == stats.exceeds(stats.difference({"0": 60.0, "1": 61.0, "2": 62.0},
                                                     {"0": 50.0, "1": 51.0, "3": 53.0})) == stats.HOLDS
    assert welch[1] > 0 and "(Welch, seeds differ: 3 vs 3 seeds)" in evidence and f"{welch[0]:+.1f}" in evidence


def test_pairing_is_by_seed_not_by_row_order():
    a = {"0": 1.0, "1": 5.0, "2": 9.0}
    b = {"2": 8.0, "0": 0.0, "1": 4.0}  # by seed: +1 at every seed; by position it would be -7, +5, +5
    d = stats.difference(a, b)
    assert d.mean == 1.0 and d.se == 0.0 and stats.exceeds(d) == stats.HOLDS
    # the same through the records: shuffling them changes no claim
    recs = []
    for seed, (v, r, m, h) in enumerate(((60.0, 30.0, 58.0, 40.0), (70.0, 35.0, 66.0, 52.0), (55.0, 20.0, 54.0, 41.0))):
        for row, top1 in (("victim", v), ("random", r), ("pixels", r + 5), ("direct", m), ("recreate_head", h),
                          ("mse", m + 1), ("infonce", m - 1), ("softnn", m)):
            for table in ("table1", "table2"):
                recs.append({"table": table, "scale": "cpu", "row": row, "column": "mnistm5k", "seed": seed,
                             "metrics": {"top1": top1}})
    expected = paper_tables.claims(paper_tables.collect(recs), {})
    for k in range(5):
        shuffled = recs[:]
        random.Random(k).shuffle(shuffled)
        assert paper_tables.claims(paper_tables.collect(shuffled), {}) == expected
    direct = next(v for c, v, _ in expected if c.startswith("Direct extraction"))
    assert direct == stats.HOLDS  # +18, +14, +13 paired; the rows' intervals overlap


def test_equivalence_tost_by_hand_and_against_two_one_sided_tests():
    m = stats.EQUIVALENCE_MARGIN
    assert m == 2.0
    near = stats.one_sample({"0": 0.5, "1": 0.0, "2": -0.5})  # 90% CI 0 ± 0.5 * 2.92 / sqrt(3) = ±0.84
    assert stats.equivalent(near) == stats.HOLDS and stats.not_above(near) == stats.HOLDS
    wide = stats.one_sample({"0": 1.0, "1": 2.0, "2": 3.0})  # 90% CI 2 ± 1.69: 0.31 to 3.69
    assert stats.interval90(wide) == "90% CI +0.3 to +3.7"
    assert stats.equivalent(wide) == stats.NOT_SHOWN and stats.not_above(wide) == stats.NOT_SHOWN
    assert stats.exceeds(wide) == stats.INCONCLUSIVE  # 95%: 2 ± 2.48 reaches below 0
    # below zero: "not better" holds though "no difference" is not shown
    below = stats.one_sample({"0": -1.0, "1": -2.0, "2": -3.0})
    assert stats.not_above(below) == stats.HOLDS and stats.equivalent(below) == stats.NOT_SHOWN
    far = stats.one_sample({"0": 5.0, "1": 6.0, "2": 7.0})  # 90% CI 4.31 to 7.69: wholly beyond +2
    assert stats.equivalent(far) == stats.FAILS and stats.not_above(far) == stats.FAILS
    assert stats.equivalent(stats.one_sample({"0": 1.0})) == stats.NOT_SHOWN  # one seed: never "holds"
    # TOST is two one-sided t-tests at 5%: holds exactly when both reject
    rng = random.Random(0)
    for _ in range(200):
        values = [rng.gauss(rng.uniform(-3, 3), rng.uniform(0.1, 2)) for _ in range(rng.randint(2, 6))]
        d = stats.one_sample(dict(enumerate(values)))
        lower = sps.ttest_1samp(values, -m, alternative="greater").pvalue
        upper = sps.ttest_1samp(values, m, alternative="less").pvalue
        assert (stats.equivalent(d) == stats.HOLDS) == (max(lower, upper) < 0.05)
        assert (stats.not_above(d) == stats.HOLDS) == (upper < 0.05)


# ----------------------------------------------------------------------------- (b) the committed report


def _records() -> list[dict]:
    return [json.loads(line) for f in sorted((ROOT / "results").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def _ci(values: list[float], confidence: float) -> tuple[float, float]:
    r = sps.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return r.low, r.high


def _interval(a: dict, b: dict | None = None, confidence: float = 0.95, minus: float = 0.0):
    """a - b (paired by seed when they share their seeds, else Welch) or a - minus."""
    if b is None:
        return _ci([v - minus for v in a.values()], confidence)
    if set(a) == set(b):
        r = sps.ttest_rel([a[s] for s in sorted(a)], [b[s] for s in sorted(a)]).confidence_interval(confidence)
    else:
        r = sps.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(confidence)
    return r.low, r.high


def _above(ci, threshold: float = 0.0) -> str:
    return "holds" if ci[0] > threshold else "does not hold" if ci[1] < threshold else "inconclusive"


def _every(verdicts: list[str]) -> str:
    if "does not hold" in verdicts:
        return "does not hold"
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "not shown" if "not shown" in verdicts else "inconclusive"


def _not_better(ci90, m: float = 2.0) -> str:
    return "holds" if ci90[1] < m else "does not hold" if ci90[0] > m else "not shown"


def _equivalent(ci90, m: float = 2.0) -> str:
    if -m < ci90[0] and ci90[1] < m:
        return "holds"
    return "does not hold" if ci90[0] >= m or ci90[1] <= -m else "not shown"


def _contrast(*terms) -> list[float]:
    """Per seed sum(c * row) over rows that must share their seeds (they do in the committed records)."""
    seeds = set(terms[0][1])
    assert all(set(row) == seeds for _, row in terms)
    return [sum(c * row[s] for c, row in terms) for s in sorted(seeds)]


def _expected_verdicts(recs: list[dict]) -> dict[str, str]:
    """{claim's first words: verdict}, each recomputed from the records by the rule."""
    top1: dict = defaultdict(dict)  # (table, row, column) -> {seed: top1}
    own: dict = defaultdict(dict)  # (table, row) -> {seed: metrics}
    sybil: dict = defaultdict(dict)  # (defense, split, K) -> {seed: {field: value}}
    study: dict = defaultdict(dict)  # (method, fraction) -> {seed: top1}
    for r in recs:
        seed = str(r.get("seed"))
        if r.get("table") == "sslextract":
            study[(r["row"], float(r["query_fraction"]))][seed] = r["metrics"]["top1"]
        elif r.get("table") == "sybil":
            k = int(r["accounts"])
            cell = sybil[(r["defense"], "views" if k == 1 else r["split"], k)].setdefault(seed, {})
            if r["what"] == "probe":
                cell["top1"] = r["metrics"]["top1"]
            else:
                t = r["stats"]["totals"]
                cell.update({"flagged": 100 * t["detect"]["mean_flagged_fraction"]} if "detect" in t
                            else {"bits": t["pow"]["bits_per_query"]})
        elif r.get("what") == "ownership":
            own[(r["table"], r["row"])][seed] = r["metrics"]
        elif "row" in r and "top1" in r.get("metrics", {}):
            top1[(r["table"], r["row"], r["column"])][seed] = r["metrics"]["top1"]

    def row(table, name, column="mnistm5k"):
        return top1[(table, name, column)]

    def diff(table, a, b, threshold=0.0):
        return _above(_interval(row(table, a), row(table, b)), threshold)

    def copies(table):
        return [r for (t, r, c) in top1 if t == table and c == "mnistm5k" and r not in ("victim", "random", "pixels")]

    def ratio(table, name):
        return {s: 100 * v / row(table, "victim")[s] for s, v in row(table, name).items()}

    out = {"Benchmark: the victim is a real": _every([diff("table2", "victim", "pixels", 20.0),
                                                      diff("table2", "victim", "random", 25.0)]),
           "Stolen encoders are better": _every([diff("table2", k, "random") for k in ("mse", "infonce", "softnn")]),
           "Benchmark: no copy is better": _every([
               _not_better(_interval(row(t, k), row(t, "victim"), 0.90))
               for t in ("efficiency", "table1", "table2", "table3", "table5", "table7", "table8", "table9")
               for k in copies(t)]),
           "Barlow Twins is the worst": _every([diff("table2", k, "barlow")
                                                for k in copies("table2") if k != "barlow"]),
           "Direct extraction": diff("table1", "direct", "recreate_head"),
           "Accuracy rises": _every([diff("table7", f"{loss}_3000", f"{loss}_100")
                                     for loss in ("mse", "infonce", "softnn")]),
           "MSE is better with few": _every([diff("table7", "mse_100", "infonce_100"),
                                             diff("table7", "infonce_3000", "mse_3000")])}
    at10 = [k for k in copies("efficiency") if int(k.rpartition("_")[2]) <= 300]  # 10% of 3,000 training images
    best = max(at10, key=lambda k: sum(ratio("efficiency", k).values()))
    out["Query efficiency"] = _above(_interval(ratio("efficiency", best), minus=95.0))
    out["ImageNet path: every copy"] = _every([diff("table3", k, "random") for k in copies("table3")])
    out["Table 3: InfoNCE steals"] = _every([diff("table3", k, "mse" + k[len("infonce"):])
                                             for k in copies("table3") if k.startswith("infonce")])
    best = max(copies("table3"), key=lambda k: sum(row("table3", k).values()))
    out["ImageNet path: the best copy"] = _above(_interval(ratio("table3", best), minus=90.0))
    out["Table 8: more queries"] = diff("table8", "infonce_3000", "infonce_100")
    for table, claim, base, top in (("table10", "mean-shifted noise", "sigma=0", "sigma=2"),
                                    ("table11", "zero-mean noise", "sigma=0", "sigma=2"),
                                    ("table12", "detection + noise", "cosine sigma=0", "cosine sigma=60"),
                                    ("poison", "prediction poisoning", "strength=0", "strength=4")):
        drops = _contrast((1, row(table, "adversary", base)), (-1, row(table, "adversary", top)),
                          (-1, row(table, "legitimate", base)), (1, row(table, "legitimate", top)))
        out[claim] = _above(_ci(drops, 0.95))

    def field(cell, name):
        return {s: v[name] for s, v in sybil[cell].items()}

    out["Splitting the queries over 8 accounts (an image's"] = _above(_interval(
        field(("detect", "views", 1), "flagged"), field(("detect", "views", 8), "flagged")))
    out["Splitting the queries over 8 accounts lowers the proof"] = _above(_interval(
        field(("pow", "views", 1), "bits"), field(("pow", "views", 8), "bits")))
    out["Splitting the queries over 8 accounts raises"] = _above(_interval(
        field(("detect", "views", 8), "top1"), field(("detect", "views", 1), "top1")))
    out["Only the routing"] = _above(_interval(field(("detect", "images", 8), "flagged"),
                                               field(("detect", "views", 8), "flagged")))

    def wsr(table, name):
        return {s: m["wsr"]["wsr_suspect"] for s, m in own[(table, name)].items()}

    named = ("victim", "independent", "random")
    out["An independently trained"] = _equivalent(_interval(wsr("table4", "independent"), None, 0.90, 50.0))
    out["The watermarked victim's WSR"] = _above(_interval(wsr("table4", "victim"), wsr("table4", "independent")))
    out["Every stolen copy's WSR"] = _every([_above(_interval(wsr("table4", r), wsr("table4", "independent")))
                                             for (t, r) in own if t == "table4" and r not in named])
    out["The watermark costs"] = _not_better(_interval(row("table4", "victim_plain"),
                                                       row("table4", "victim_watermarked"), 0.90))
    out["An MSE-stolen copy"] = _every([_above(_ci(_contrast(
        (1, {s: m["l2"]["mean_d_independent"] for s, m in own[("table18", r)].items()}),
        (-1, {s: m["l2"]["mean_d_suspect"] for s, m in own[("table18", r)].items()})), 0.95))
        for (t, r) in own if t == "table18" and r.startswith("mse_")])
    out["Rotating the attacker's"] = _every([_above(_interval(wsr("table17", f"{k}_rotation"),
                                                              wsr("table17", f"{k}_standard")))
                                             for k in ("mse", "softnn", "infonce")])
    # the one count of per-seed test verdicts: holds when no seed flags a copy, fails when every seed does
    flags = [[m["private_public"]["verdict"] == "stolen" for m in own[("table20", r)].values()]
             for (t, r) in own if t == "table20" and r not in named and not r.startswith("supervised")]
    out["Dataset inference"] = ("holds" if not any(map(any, flags)) else "does not hold" if all(map(all, flags))
                                else "inconclusive")
    low, high = min(f for _, f in study), max(f for _, f in study)
    for method, name in (("moco", "MoCo v2"), ("rotation", "rotation"), ("simsiam", "SimSiam")):
        out[f"Classifier extraction: {name} pre-training"] = _above(_interval(study[(method, low)],
                                                                                study[("none", low)]))
    out["Classifier extraction: the gain"] = _above(_ci(_contrast(
        (1, study[("moco", low)]), (-1, study[("none", low)]), (-1, study[("moco", high)]),
        (1, study[("none", high)])), 0.95))
    return out


def _report_claims(text: str) -> list[tuple[str, str]]:
    rows = [line for line in text.split("## Claims of the paper", 1)[1].split("\n## ", 1)[0].splitlines()
            if line.startswith("| ") and " | **" in line]
    return [(line.split(" | ")[0][2:], line.split(" | ")[1].strip("*")) for line in rows]


def test_every_verdict_of_the_committed_report_follows_the_rule_from_the_records(tmp_path):
    recs = _records()
    # one victim per table and seed wherever claims pair rows, so the seed is the pairing unit
    victims = defaultdict(set)
    for r in recs:
        if r.get("victim_checkpoint") and r.get("table") != "table20":
            victims[(r["table"], str(r.get("seed")))].add(r["victim_checkpoint"])
    assert all(len(v) == 1 for v in victims.values()), victims
    committed = (ROOT / "results" / "REPORT.md").read_text()
    assert stats.RULE in committed and committed.index(stats.RULE) < committed.index("## Claims of the paper")
    claims = _report_claims(committed)
    expected = _expected_verdicts(recs)
    matched = {}
    for claim, verdict in claims:
        keys = [k for k in expected if claim.startswith(k)]
        assert len(keys) == 1, (claim, keys)
        matched[keys[0]] = (claim, verdict)
        assert verdict == expected[keys[0]], (claim, verdict, expected[keys[0]])
    assert set(matched) == set(expected)  # every claim of the report is recomputed, and only those
    assert len(claims) == 31
    # the claims that name how they compared rows say paired by seed (every compared pair shares its seeds)
    assert "Welch" not in "".join(line for line in committed.split("## Query efficiency", 1)[0].splitlines()
                                  if line.startswith("| ") and " | **" in line)
    # and the committed report is what report.py writes from the committed records
    fresh = document.write_report(ROOT / "results", tmp_path / "REPORT.md").read_text()
    assert fresh == committed
