"""The defenses part of results/REPORT.md (Tables 10-15, proof of work, prediction poisoning).

Called by ``report.py``; reads the same records (``results/<table>_<scale>.jsonl``, written by
``scripts/tables.py``) and the paper's numbers. Accuracies are mean ± 95% CI over seeds; a
claim follows the one statistics rule (:mod:`reports.stats`): paired by seed, since the
legitimate user and the adversary of one seed face the same victim (Welch where seeds differ).
"""
from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from reports.captions import header
from reports.stats import (
    Difference,
    contrast,
    describe,
    difference,
    estimate,
    exceeds,
    mean_sd,
    pairing_units,
    save_plot,
)

NOISE_TABLES = ("table10", "table11", "table12", "poison")


def _value(column: str) -> float:
    m = re.search(r"=([-\d.]+)$", column)
    return float(m.group(1)) if m else 0.0


def _paper_cell(ref: dict, row: str, column: str):
    values = ref.get(row, {})
    if " " in column:  # "cosine sigma=20"
        values = values.get(column.split()[0], {})
    v = values.get(_value(column)) if isinstance(values, dict) else None
    if v is None and isinstance(values, dict):
        v = values.get(int(_value(column))) if _value(column).is_integer() else None
    return v


def _drop_difference(rows: dict, column: str, base: str) -> Difference | None:
    """(adversary's drop) - (legitimate user's drop) from the undefended column ``base``: per seed when the
    four cells share their seeds, else Welch over the four means."""
    adv, leg = rows.get("adversary", {}), rows.get("legitimate", {})
    return contrast([(1.0, adv.get(base, {})), (-1.0, adv.get(column, {})),
                     (-1.0, leg.get(base, {})), (1.0, leg.get(column, {}))])


def noise_claims(data: dict) -> list[tuple[str, str, str]]:
    """The paper's claims on serving-side noise, checked on the largest noise of each table."""
    out = []
    for table, what in (("table10", "mean-shifted noise (mean 10)"), ("table11", "zero-mean noise"),
                        ("table12", "detection + noise (cosine)"), ("poison", "prediction poisoning")):
        for (t, scale), rows in data.items():
            if t != table or "adversary" not in rows:
                continue
            columns = sorted(rows["adversary"], key=_value)
            if table == "table12":
                columns = [c for c in columns if c.startswith("cosine")]
            if len(columns) < 2:
                continue
            base, top = columns[0], columns[-1]
            e = _drop_difference(rows, top, base)
            claim = f"{what} hurts the adversary more than the legitimate user ({scale}, {top} vs {base})"
            evidence = f"adversary's drop minus the legitimate user's: {describe(e, ' points')}"
            out.append((claim, exceeds(e), evidence))
    return out


def _accuracy_table(table: str, scale: str, rows: dict, ref: dict) -> list[str]:
    columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (c.split()[0] if " " in c else "", _value(c)))
    lines = ["| column | legitimate user | adversary (stolen + linear probe) | paper legitimate / adversary |",
             "|---|---|---|---|"]
    for c in columns:
        leg = estimate(rows.get("legitimate", {}).get(c, {}).values())
        adv = estimate(rows.get("adversary", {}).get(c, {}).values())
        p_leg, p_adv = _paper_cell(ref, "legitimate", c), _paper_cell(ref, "adversary", c)
        paper = f"{p_leg} / {p_adv}" if p_leg is not None else "-"
        lines.append(f"| {c} | {leg or '-'} | {adv or '-'} | {paper} |")
    return lines


def plot_tradeoff(records: list[dict], paper: dict, path: Path) -> None:
    """False positive vs false negative rate by threshold, one curve per metric/output."""
    curves = defaultdict(list)
    for r in records:
        m = r["metrics"]
        curves[f"{m['metric']} {m['on']}"].append((m["threshold"], m["fp_mean"], m["fn_mean"]))

    def draw(ax):
        for name, pts in sorted(curves.items()):
            by_t = defaultdict(list)
            for t, fp, fn in pts:
                by_t[t].append((fp, fn))
            xs = sorted(by_t)
            fps = [statistics.mean(p[0] for p in by_t[t]) for t in xs]
            fns = [statistics.mean(p[1] for p in by_t[t]) for t in xs]
            ax.plot(fps, fns, "o-", label=f"ours: {name}")
            for t, x, y in zip(xs, fps, fns):
                ax.annotate(f"{t:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, by_t in (paper or {}).items():
            pts = sorted(by_t.items())
            ax.plot([v[0] for _, v in pts], [v[2] for _, v in pts], "x--", alpha=0.6, label=f"paper: {name}")
        ax.set_xlabel("false positive rate % (distinct images flagged)")
        ax.set_ylabel("false negative rate % (augmented views missed)")
        ax.set_title("similar-query detection: the threshold trade-off")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    save_plot(path, draw, size=(6.5, 4.5))


def detection_lines(records: list[dict], ref: dict, scale: str, out_dir: Path) -> list[str]:
    png = out_dir / f"table13_{scale}_tradeoff.png"
    plot_tradeoff(records, ref.get("rates"), png)
    groups = defaultdict(list)
    for r in records:
        m = r["metrics"]
        groups[(m["metric"], m["on"], m["threshold"])].append(m)
    seeds = len({r.get("seed") for r in records})
    n = sorted({m["n"] for ms in groups.values() for m in ms})
    draws = sorted({m["draws"] for ms in groups.values() for m in ms})
    lines = [f"![detection trade-off]({png.name})", "",
             f"{seeds} victim(s) (seeds), {', '.join(map(str, draws))} draws of {', '.join(map(str, n))} distinct "
             "query-pool images each; the mean over victims of each victim's mean over its draws ± the standard "
             "deviation across victims (one victim: across its draws). False positive: a distinct image flagged "
             "against the earlier ones; false negative: an "
             "augmented view (the attacker's cpu views: crops of at least 80% of the area, colour jitter) of an "
             "image already sent, not flagged.", "",
             "| metric | watched | threshold | false positive % | false negative % |", "|---|---|---|---|---|"]
    for (metric, on, t), ms in sorted(groups.items()):
        fp = [m["fp_mean"] for m in ms]
        fn = [m["fn_mean"] for m in ms]
        one = ms[0]["fp_std"]  # one victim: the spread over its draws

        def sd(v: list, one: float = one) -> float:
            return statistics.stdev(v) if len(v) > 1 else one

        lines.append(f"| {metric} | {on} | {t:g} | {statistics.mean(fp):.1f} ± {sd(fp):.1f} | "
                     f"{statistics.mean(fn):.1f} ± {sd(fn):.1f} |")
    lines += ["", "Paper (ResNet18 CIFAR10 victim): " + "; ".join(
        f"{name}: " + ", ".join(f"τ={t:g} {v[0]}/{v[2]}" for t, v in sorted(by_t.items()))
        for name, by_t in (ref.get("rates") or {}).items())]
    return lines


def pow_lines(records: list[dict], bench: list[dict]) -> list[str]:
    lines = []
    if bench:
        lines += [("Measured solve time by puzzle bits k (`bench/pow_bench.py`, a Python loop over hashlib's "
                   "SHA-256 (C), one core):"), "",
                  "| k | expected hashes 2^k | mean hashes | mean solve s | hashes/s |", "|---|---|---|---|---|"]
        for r in sorted(bench, key=lambda r: r["config"]["bits"]):
            m = r["metrics"]
            lines.append(f"| {r['config']['bits']} | {m['expected_hashes']:.0f} | {m['hashes_mean']:.0f} | "
                         f"{m['solve_s_mean']:.4f} | {m['hashes_per_s']:,.0f} |")
        lines.append("")
    groups = defaultdict(list)
    for r in records:
        m = r["metrics"]
        groups[(m["bits_min"], m["bits_max"], m["role"])].append(m)
    if groups:
        lines += ["Cost of the same number of queries for each customer (one PoW service per customer; "
                  "difficulty k + round(log2 batch) bits per batch, k from the deviation score):", "",
                  "| bits min-max | customer | deviation score | expected hashes | × legitimate | solve s |",
                  "|---|---|---|---|---|---|"]
        order = {"legitimate": 0, "attacker_1view": 1, "attacker_2views": 2}
        for (lo, hi, role), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9))):
            lines.append(f"| {lo}-{hi} | {role} | {statistics.mean(m['deviation_score'] for m in ms):.2f} | "
                         f"{statistics.mean(m['expected_hashes'] for m in ms):.3g} | "
                         f"{statistics.mean(m['cost_ratio_vs_legitimate'] for m in ms):.1f} | "
                         f"{statistics.mean(m['solve_seconds'] for m in ms):.3f} |")
        lines += ["", "A single-view attacker (MSE) sends distinct images, as a legitimate user does, so it pays "
                  "the same: the calibration only prices repetition (the two-view attacker's score is at most "
                  "0.5, since each image's first view is new)."]
    return lines


def _records_of(records: list[dict], table: str, scale: str) -> list[dict]:
    return [r for r in records if r.get("table") == table and r.get("scale", "?") == scale]


def defense_sections(records: list[dict], data: dict, paper: dict, out_dir: Path) -> list[str]:
    """Markdown for every defense table present in the records."""
    lines: list[str] = []
    for table in ("table10", "table11", "table12", "poison"):
        for (t, scale), rows in sorted(data.items()):
            if t != table:
                continue
            ref = paper.get(table, {})
            lines += header(ref, table, scale, _records_of(records, table, scale))
            lines += ["Legitimate user and adversary are tested on the same held-out images; the legitimate "
                      "user's records carry no query or epoch count.", ""]
            lines += _accuracy_table(table, scale, rows, ref)
    by = defaultdict(list)
    for r in records:
        if r.get("table") in ("table13", "pow") and "metrics" in r and "config" not in r:
            by[(r["table"], r.get("scale", "?"))].append(r)
    for (table, scale), recs in sorted(by.items()):
        ref = paper.get(table, {})
        lines += header(ref, table, scale, recs)
        if table == "table13":
            lines += detection_lines(recs, ref, scale, out_dir)
        else:
            bench = [r for r in records if r.get("table") == "pow" and "config" in r and r.get("scale", scale) == scale]
            lines += pow_lines([r for r in recs if "role" in r["metrics"]], bench)
    lines += sybil_lines(records, out_dir)
    return lines


# ----------------------------------------------------------------------------- several accounts (Sybil)

SYBIL_TABLES = ("sybil",)


def sybil_records_by_cell(records: list[dict]) -> dict:
    """{(scale, defense, split, K): {seed: {top1, n_test, used, per_account, flagged, deviation, bits,
    hashes}}} from the Sybil table's records (``what=probe``: the stolen encoder's probe;
    ``what=accounts``: ``sybil.py``'s per-account statistics); the last record of a cell and seed wins."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    records = [r for r in records if r.get("table") in SYBIL_TABLES and r.get("what") in ("probe", "accounts")]
    for r, unit in zip(records, pairing_units(records)):
        k = int(r["accounts"])
        key = (r.get("scale", "?"), r["defense"], "views" if k == 1 else r["split"], k)
        cell = cells[key][unit]
        if r["what"] == "probe":
            cell.update(top1=float(r["metrics"]["top1"]), n_test=int(r["metrics"]["n_test"]))
            continue
        t = r["stats"]["totals"]
        cell.update(used=t["used"], per_account=[a["used"] for a in r["stats"]["accounts"]])
        if "detect" in t:
            cell["flagged"] = 100 * t["detect"]["mean_flagged_fraction"]
        if "pow" in t:
            cell.update(deviation=t["pow"]["mean_deviation_score"], bits=t["pow"]["bits_per_query"],
                        hashes=t["pow"]["hashes_per_query"])
    return cells


def _paired(cells: dict, a: tuple, b: tuple, field: str) -> Difference | None:
    """Cell ``a``'s ``field`` minus cell ``b``'s by the rule: paired by seed (the same victim and seed) when
    the cells share their seeds, else Welch."""
    ca, cb = cells.get(a, {}), cells.get(b, {})
    return difference({s: c[field] for s, c in ca.items() if field in c},
                      {s: c[field] for s, c in cb.items() if field in c})


def sybil_claims(records: list[dict]) -> list[tuple[str, str, str]]:
    """Does splitting the table12 attacker over the most accounts (K) beat one account? Paired by seed."""
    cells = sybil_records_by_cell(records)
    out = []
    for scale in sorted({key[0] for key in cells}):
        ks = sorted({key[3] for key in cells if key[0] == scale})
        if len(ks) < 2:
            continue
        top = ks[-1]
        one = {d: (scale, d, "views", 1) for d in ("detect", "pow")}
        many = {d: (scale, d, "views", top) for d in ("detect", "pow")}
        for claim, a, b, field, unit in (
                (f"Splitting the queries over {top} accounts (an image's views to different accounts) lowers each "
                 f"account's flagged fraction under similar-query detection ({scale}, K={top} vs 1)",
                 one["detect"], many["detect"], "flagged", "points of flagged %"),
                (f"Splitting the queries over {top} accounts lowers the proof-of-work price per query ({scale}, "
                 f"K={top} vs 1)", one["pow"], many["pow"], "bits", "bits per query"),
                (f"Splitting the queries over {top} accounts raises the stolen encoder's accuracy under detection "
                 f"({scale}, K={top} vs 1)", many["detect"], one["detect"], "top1", "points of top-1"),
                (f"Only the routing hides the repeats: with all views of an image on one account, {top} accounts are "
                 f"flagged more than with its views on different accounts ({scale}, K={top})",
                 (scale, "detect", "images", top), many["detect"], "flagged", "points of flagged %")):
            e = _paired(cells, a, b, field)
            evidence = f"difference {describe(e, ' ' + unit)}, 95% CI"
            out.append((claim, exceeds(e), evidence))
    return out


def plot_sybil(cells: dict, scale: str, path: Path) -> None:
    """Flagged fraction, puzzle bits per query and stolen accuracy against the number of accounts."""
    panels = (("flagged", "flagged % per account (detect)", ("detect",)),
              ("bits", "puzzle bits per query (pow)", ("pow",)),
              ("top1", "stolen encoder top-1 %", ("detect", "pow")))

    def draw(ax):
        fig = ax.figure
        fig.delaxes(ax)
        for i, (field, title, defenses) in enumerate(panels):
            sub = fig.add_subplot(1, len(panels), i + 1)
            for defense in defenses:
                for split, style in (("views", "o-"), ("images", "s--")):
                    pts = []
                    for (sc, d, sp, k), by_seed in sorted(cells.items(), key=lambda kv: kv[0][3]):
                        vals = [c[field] for c in by_seed.values() if field in c]
                        if sc == scale and d == defense and (sp == split or k == 1) and vals:
                            pts.append((k, statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0))
                    if len(pts) > 1:
                        sub.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style,
                                     capsize=3, label=f"{defense}, split {split}")
            sub.set_xscale("log", base=2)
            sub.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
            sub.minorticks_off()
            sub.set_xlabel("accounts K")
            sub.set_title(title, fontsize=9)
            sub.grid(alpha=0.3)
            sub.legend(fontsize=7)

    save_plot(path, draw, size=(12, 3.8))


def sybil_lines(records: list[dict], out_dir: Path) -> list[str]:
    """The Sybil section: per defense, split and K the per-account defense numbers and the stolen
    encoder's accuracy, mean ± standard deviation over seeds; the plot."""
    cells = sybil_records_by_cell(records)
    lines: list[str] = []
    for scale in sorted({key[0] for key in cells}):
        keys = sorted((k for k in cells if k[0] == scale), key=lambda k: (k[1], k[2] != "views", k[3]))
        seeds = sorted({s for k in keys for s in cells[k]})
        n_test = sorted({c["n_test"] for k in keys for c in cells[k].values() if "n_test" in c})
        png = out_dir / f"sybil_{scale}.png"
        plot_sybil(cells, scale, png)
        lines += ["", f"## Several accounts (Sybil) against per-account defenses — ours at `{scale}` scale", "",
                  f"Table 12's attacker (InfoNCE, two augmented views of each of 500 images, 1,000 queries, 50 "
                  f"epochs) spread over K accounts of the same victim (`steal.py --accounts K --sybil-split S`): "
                  f"detection is Table 12's cosine 0.9 on head outputs with N(1000, 20²) answers, proof of work "
                  f"0-16 bits per query. Split `views`: the two views of an image go to different accounts; "
                  f"`images`: both to the same account. Mean ± standard deviation over {len(seeds)} seed(s) "
                  f"({', '.join(seeds)}; a victim per seed); flagged % and deviation score are per account, "
                  f"averaged over the K accounts; bits per query = log2(expected hashes / queries); top-1 of the "
                  f"linear probe on the {', '.join(f'{n:,}' for n in n_test) or '?'} held-out images.", "",
                  f"![several accounts](sybil_{scale}.png)", "",
                  "| defense | split | accounts K | queries per account | flagged % per account | deviation score "
                  "per account | bits per query | expected hashes per query | stolen top-1 % | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key in keys:
            _, defense, split, k = key
            by = cells[key].values()

            def col(field, scale=1.0, digits=1, by=by):
                return mean_sd([c[field] for c in by if field in c], scale, digits)

            per = sorted({n for c in by for n in c.get("per_account", [])})
            per_text = "-" if not per else (str(per[0]) if len(per) == 1 else f"{per[0]}-{per[-1]}")
            lines.append(f"| {defense} | {split if k > 1 else '-'} | {k} | {per_text} | {col('flagged')} | "
                         f"{col('deviation', digits=2)} | {col('bits', digits=2)} | {col('hashes', digits=1)} | "
                         f"{col('top1')} | {len(list(by))} |")
    return lines
