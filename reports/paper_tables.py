"""The paper's main tables in REPORT.md (Tables 1-3, 5, 7-9, the probes and query efficiency):
records -> rows, claims, markdown and plots.

Reads the probe records that scripts/tables.py appends to ``results/<table>_<scale>.jsonl``.
Per table: our top-1 as mean ± 95% confidence interval over seeds (Student t), the paper's
value beside it, the paper's claims checked by the one statistics rule (:mod:`reports.stats`:
rows of a table are paired by seed), and PNG plots with error bars (accuracy versus number of
queries, loss bars, and the query-efficiency figure).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from reports.captions import header, query_set_note
from reports.stats import (
    EQUIVALENCE_MARGIN,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_SHOWN,
    PAIRED,
    Difference,
    Estimate,
    all_of,
    describe,
    difference,
    estimate,
    exceeds,
    interval90,
    not_above,
    one_sample,
    pairing_units,
    save_plot,
)

ROW_NAMES = {"victim": "victim", "random": "random init", "pixels": "raw pixels",
             "direct": "direct extraction (SoftNN)", "recreate_head": "recreate head",
             "access_head": "access head (InfoNCE)", "mse": "MSE", "infonce": "InfoNCE", "softnn": "SoftNN",
             "wasserstein": "Wasserstein", "supcon": "SupCon*", "barlow": "Barlow*", "symmetrized": "SimSiam*"}


BASELINES = ("victim", "random", "pixels")


IMAGENET_TABLES = ("table3", "table8")


IMAGENET_NOTE = {
    "cpu": "ImageNet path (`stealsimsiam.py`, probe `linsimsiam.py`) on its CPU stand-in: the mnistm5k victim "
           "re-exported in SimSiam's checkpoint format (so it normalises with ImageNet's statistics), an ImageFolder "
           "of mnistm5k (`imagenet` = its train split, `imagenetval` = its test split without the 1,000 images "
           "the probe tests on) and `patches` in place of "
           "CIFAR10 queries; rows are `<loss>_<queries>_<query set>`.",
    "paper": "ImageNet path: `stealsimsiam.py` against the published SimSiam ResNet50, probed by `linsimsiam.py`; rows "
             "are `<loss>_<queries>_<query set>`.",
}


def collect(records: list[dict]) -> dict:
    """{(table, scale): {row: {column: {unit: top1}}}} from probe records, the unit being the seed
    (:func:`reports.stats.pairing_units`; the last record of a table/row/column/unit wins)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r, unit in zip(records, pairing_units(records)):
        if "table" in r and "row" in r and "top1" in r.get("metrics", {}):
            column = r.get("column", r.get("dataset_test"))
            out[(r["table"], r.get("scale", "?"))][r["row"]][column][unit] = float(r["metrics"]["top1"])
    return out


def sizes_by_table(records: list[dict], field: str) -> dict:
    """{(table, scale): sorted values of an integer field}: ``n_test`` (in the metrics; the probe's
    held-out evaluation set) or ``victim_train_size`` (a record tag)."""
    out: dict = defaultdict(set)
    for r in records:
        value = r.get("metrics", {}).get(field, r.get(field))
        if "table" in r and value is not None:
            out[(r["table"], r.get("scale", "?"))].add(int(value))
    return {k: sorted(v) for k, v in out.items()}


def est(rows: dict, row: str, column: str) -> Estimate | None:
    return estimate(rows.get(row, {}).get(column, {}).values())


def cell(rows: dict, row: str, column: str) -> dict:
    """{unit: top1} of one row and column (empty when absent)."""
    return rows.get(row, {}).get(column, {})


def diff(rows: dict, a: str, b: str, column: str) -> Difference | None:
    """Row ``a`` minus row ``b`` by the rule (paired by seed when they share their seeds, else Welch)."""
    return difference(cell(rows, a, column), cell(rows, b, column))


def ratios(rows: dict, row: str, column: str) -> dict:
    """{seed: stolen accuracy as % of the victim's}: a per-seed quantity (victim and attack share a seed),
    so only the seeds both rows have."""
    stolen, victim = cell(rows, row, column), cell(rows, "victim", column)
    return {s: 100.0 * stolen[s] / victim[s] for s in sorted(set(stolen) & set(victim))}


def ratio(rows: dict, row: str, column: str) -> Estimate | None:
    """Stolen accuracy as % of the victim's, paired by seed (victim and attack share a seed)."""
    return estimate(ratios(rows, row, column).values())


def query_rows(rows: dict) -> dict[str, list[tuple[int, str]]]:
    """{loss: [(queries, row name)]} from rows named <loss>_<queries>."""
    series: dict = defaultdict(list)
    for row in rows:
        loss, _, n = row.rpartition("_")
        if loss and n.isdigit():
            series[loss].append((int(n), row))
    return {k: sorted(v) for k, v in series.items()}


def first_column(rows: dict) -> str:
    return next(iter(rows.get("victim") or next(iter(rows.values()))))


def _errorbar(ax, xs, estimates, label, **kw):
    ax.errorbar(xs, [e.mean for e in estimates], yerr=[e.half_width or 0.0 for e in estimates], marker="o",
                capsize=3, label=label, **kw)


def _log_x_at(ax, xs, fmt: str = "{:g}") -> None:
    """A log x axis labelled at the measured points (not at powers of ten)."""
    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [fmt.format(t) for t in ticks])
    ax.minorticks_off()


def _band(ax, e: Estimate | None, name: str, style: str) -> None:
    if e is None:
        return
    ax.axhline(e.mean, color="grey", linestyle=style, label=f"{name} {e}")
    if e.half_width:
        ax.axhspan(e.low, e.high, color="grey", alpha=0.12)


def plot_queries(rows: dict, column: str, title: str, path: Path) -> None:
    def draw(ax):
        xs = []
        for loss, pts in sorted(query_rows(rows).items()):
            es = [est(rows, row, column) for _, row in pts]
            keep = [(n, e) for (n, _), e in zip(pts, es) if e is not None]
            _errorbar(ax, [n for n, _ in keep], [e for _, e in keep], ROW_NAMES.get(loss, loss))
            xs += [n for n, _ in keep]
        for row, style in (("victim", "--"), ("random", ":"), ("pixels", "-.")):
            _band(ax, est(rows, row, column), ROW_NAMES[row], style)
        _log_x_at(ax, xs)
        ax.set_xlabel("queries")
        ax.set_ylabel(f"linear-probe top-1 % on {column}")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)

    save_plot(path, draw)


def plot_bars(rows: dict, column: str, title: str, path: Path) -> None:
    names = [r for r in ROW_NAMES if r in rows and rows[r].get(column)]
    ests = [est(rows, r, column) for r in names]

    def draw(ax):
        colors = ["#555555" if n in BASELINES else "#3b75af" for n in names]
        ax.bar([ROW_NAMES[n] for n in names], [e.mean for e in ests], color=colors,
               yerr=[e.half_width or 0.0 for e in ests], capsize=3)
        for i, e in enumerate(ests):
            ax.text(i, e.high + 0.8, f"{e.mean:.1f}", ha="center", fontsize=7)
        ax.set_ylabel(f"top-1 % on {column} (95% CI)")
        ax.set_title(title, fontsize=9)
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_ha("right")
            label.set_fontsize(8)

    save_plot(path, draw, size=(6, 3.5))


def efficiency_points(rows: dict, column: str, train_size: int) -> dict[str, list[tuple[float, Estimate]]]:
    """{loss: [(queries / victim training-set size, stolen as % of victim)]}."""
    out = {}
    for loss, pts in query_rows(rows).items():
        series = [(n / train_size, ratio(rows, row, column)) for n, row in pts]
        out[loss] = [(f, e) for f, e in series if e is not None]
    return out


def plot_efficiency(points: dict, paper_point: dict | None, title: str, path: Path) -> None:
    def draw(ax):
        xs = [100 * f for pts in points.values() for f, _ in pts]
        for loss, pts in sorted(points.items()):
            _errorbar(ax, [100 * f for f, _ in pts], [e for _, e in pts], ROW_NAMES.get(loss, loss))
        ax.axhline(95, color="grey", linestyle="--", label="95% of the victim")
        ax.axvline(10, color="grey", linestyle=":", label="10% of its training set")
        if paper_point:
            ax.plot([100 * paper_point["queries"] / paper_point["victim_train_size"]],
                    [100 * paper_point["stolen"] / paper_point["victim"]], marker="*", markersize=14,
                    color="crimson", linestyle="none", label="paper: CIFAR10, SoftNN, 9K queries")
        _log_x_at(ax, xs, "{:.3g}%")
        ax.set_xlabel("queries as % of the victim's training set")
        ax.set_ylabel("stolen top-1 as % of the victim's")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)

    save_plot(path, draw)


def _table(data: dict, table: str):
    for (t, scale), rows in sorted(data.items()):
        if t == table:
            return scale, rows
    return None, None


def best_fraction(points: dict, target: float = 95.0) -> tuple[str, float, Estimate] | None:
    """The smallest query fraction at which a loss's mean reaches ``target`` % of the victim."""
    hits = [(f, loss, e) for loss, pts in points.items() for f, e in pts if e.mean >= target]
    if not hits:
        return None
    f, loss, e = min(hits, key=lambda h: (h[0], -h[2].mean))
    return loss, f, e


def listing(named: list[tuple[str, Difference | None]]) -> str:
    """``name difference`` items, with how they were computed once when it is the same for all."""
    hows = {d.how for _, d in named if d is not None}
    if len(hows) == 1:
        return ", ".join(f"{n} {d or 'no data'}" for n, d in named) + f" ({hows.pop()})"
    return ", ".join(f"{n} {describe(d)}" for n, d in named)


def _name(row: str) -> str:
    return ROW_NAMES.get(row, row)


def table2_claims(rows: dict, data: dict) -> list[tuple[str, str, str]]:
    """Table 2 (the losses): the benchmark's victim, copies against random, no copy above its victim
    (over every table, :func:`no_copy_above_victim`), Barlow Twins last."""
    out = []
    col = first_column(rows)
    v, r, p = (est(rows, k, col) for k in BASELINES)
    if v and r and p:
        d_p, d_r = diff(rows, "victim", "pixels", col), diff(rows, "victim", "random", col)
        out.append(("Benchmark: the victim is a real SSL encoder (at least 20 points above raw pixels "
                    "and 25 above a random initialisation)", all_of([exceeds(d_p, 20.0), exceeds(d_r, 25.0)]),
                    f"{col}: victim {v}, raw pixels {p}, random init {r}; victim minus: "
                    + listing([("raw pixels", d_p), ("random init", d_r)])))
    stolen = [k for k in ("mse", "infonce", "softnn") if k in rows]
    diffs = [(_name(k), diff(rows, k, "random", col)) for k in stolen]
    out.append(("Stolen encoders are better than a random initialisation (MSE, InfoNCE and SoftNN each)",
                all_of([exceeds(d) for _, d in diffs]),
                f"{col}: random {r}; " + ", ".join(f"{_name(k)} {est(rows, k, col)}" for k in stolen)
                + "; minus random: " + listing(diffs)))
    out.append(no_copy_above_victim(data))
    copies = [k for k in rows if k not in BASELINES]
    others = [k for k in copies if k != "barlow"]
    if "barlow" in copies and others:
        low = min(others, key=lambda k: est(rows, k, col).mean)
        out.append(("Barlow Twins is the worst stealing loss",
                    all_of([exceeds(diff(rows, k, "barlow", col)) for k in others]),
                    f"{col}: Barlow {est(rows, 'barlow', col)}; next lowest {_name(low)} {est(rows, low, col)}, "
                    f"{_name(low)} − Barlow {describe(diff(rows, low, 'barlow', col))}"))
    return out


def no_copy_above_victim(data: dict) -> tuple[str, str, str]:
    """Benchmark: no copy in any main table is better than its victim by more than the margin (one-sided
    equivalence on copy − victim, on each table's first column)."""
    order = {t: i for i, t in enumerate(MAIN_ORDER)}
    verdicts: list[str] = []
    named: dict = defaultdict(list)  # verdict -> ["table row difference (90% CI)"]
    tables, hows = [], set()
    for (table, _scale), rows in sorted(data.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        if table not in order or "victim" not in rows:
            continue
        col = first_column(rows)
        tables.append(table)
        for k in rows:
            if k in BASELINES or not cell(rows, k, col):
                continue
            d = diff(rows, k, "victim", col)
            verdicts.append(not_above(d))
            hows.add(d.how)
            named[verdicts[-1]].append(f"{table} {_name(k)} {d} ({interval90(d)})")
    margin = f"{EQUIVALENCE_MARGIN:g}"
    evidence = (f"copy − victim on each table's first column ({'; '.join(sorted(hows)) or 'no data'}): "
                f"above +{margin} (90% CI wholly above): {', '.join(named[FAILS]) or 'none'}; not shown (90% CI "
                f"reaches +{margin}): {', '.join(named[NOT_SHOWN]) or 'none'}; below +{margin}: "
                f"{verdicts.count(HOLDS)} of {len(verdicts)} copies")
    return (f"Benchmark: no copy is better than its victim by more than {margin} points (one-sided equivalence; "
            f"every copy of {', '.join(tables) or 'no table'})", all_of(verdicts), evidence)


def queries_claims(rows: dict) -> list[tuple[str, str, str]]:
    """Table 7: more queries help (largest count against smallest, per loss); MSE wins with few queries and
    InfoNCE with many."""
    col = first_column(rows)
    series = query_rows(rows)
    rising = [(f"{_name(k)} {pts[-1][0]} − {pts[0][0]}", diff(rows, pts[-1][1], pts[0][1], col))
              for k, pts in series.items() if len(pts) > 1]
    out = [("Accuracy rises with the number of queries (largest query count above the smallest, per loss)",
            all_of([exceeds(d) for _, d in rising]),
            "; ".join(f"{_name(k)}: " + ", ".join(f"{n}: {est(rows, row, col)}" for n, row in v)
                      for k, v in series.items()) + "; largest − smallest: " + listing(rising))]
    if "mse" in series and "infonce" in series:
        m, i = dict(series["mse"]), dict(series["infonce"])
        ns = sorted(set(m) & set(i))
        few, many = ns[0], ns[-1]
        d_few, d_many = diff(rows, m[few], i[few], col), diff(rows, i[many], m[many], col)
        out.append(("MSE is better with few queries and InfoNCE with many", all_of([exceeds(d_few), exceeds(d_many)]),
                    f"{few} queries: MSE {est(rows, m[few], col)} vs InfoNCE {est(rows, i[few], col)}; "
                    f"{many} queries: MSE {est(rows, m[many], col)} vs InfoNCE {est(rows, i[many], col)}; "
                    + listing([(f"MSE − InfoNCE at {few}", d_few), (f"InfoNCE − MSE at {many}", d_many)])))
    return out


def claims(data: dict, train_sizes: dict) -> list[tuple[str, str, str]]:
    """The paper's claims (and our benchmark's requirements) checked by the rule: (claim, verdict, evidence)."""
    out = []
    scale, rows = _table(data, "table2")
    if rows:
        out += table2_claims(rows, data)
    scale, rows = _table(data, "table1")
    if rows and "direct" in rows and "recreate_head" in rows:
        col = first_column(rows)
        d = diff(rows, "direct", "recreate_head", col)
        out.append(("Direct extraction is better than recreating the head", exceeds(d),
                    f"{col}: direct {est(rows, 'direct', col)} vs recreate head {est(rows, 'recreate_head', col)}; "
                    f"direct − recreate head {describe(d)}"))
    else:
        out.append(("Direct extraction is better than recreating the head", INCONCLUSIVE, "table1 results missing"))
    scale, rows = _table(data, "table7")
    if rows:
        out += queries_claims(rows)
    else:
        out.append(("Accuracy rises with the number of queries", INCONCLUSIVE, "table7 results missing"))
    scale, rows = _table(data, "efficiency")
    if rows and train_sizes.get(("efficiency", scale)):
        col, size = first_column(rows), train_sizes[("efficiency", scale)]
        at10 = [(loss, n, row) for loss, pts in query_rows(rows).items() for n, row in pts
                if n / size <= 0.10 + 1e-9 and ratios(rows, row, col)]
        best = max(at10, key=lambda t: ratio(rows, t[2], col).mean) if at10 else None
        share = one_sample(ratios(rows, best[2], col)) if best else None
        out.append(("Query efficiency: a copy reaches 95% of the victim with queries at most 10% of its "
                    "training set", exceeds(share, 95.0),
                    f"{col}: best at ≤10%: {_name(best[0])} at {100 * best[1] / size:.0f}% of the training set "
                    f"gives {ratio(rows, best[2], col)}% of the victim (per-seed ratio, {share.how})"
                    if best else "no run at 10% or fewer"))
    return out


def imagenet_claims(data: dict) -> list[tuple[str, str, str]]:
    """Tables 3 and 8 (the ImageNet path): copies beat a random encoder, InfoNCE beats MSE with the
    same queries, more queries help, and the best copy comes close to the victim."""
    out = []
    scale, rows = _table(data, "table3")
    if rows and "victim" in rows and "random" in rows:
        col = first_column(rows)
        copies = {k: est(rows, k, col) for k in rows if k not in BASELINES}
        r = est(rows, "random", col)
        low = min(copies, key=lambda k: copies[k].mean) if copies else None
        out.append(("ImageNet path: every copy stolen from the SimSiam victim beats a random initialisation (Table 3)",
                    all_of([exceeds(diff(rows, k, "random", col)) for k in copies]),
                    f"{col}: random {r}; lowest copy " + (
                        f"{low} {copies[low]}, {low} − random {describe(diff(rows, low, 'random', col))}"
                        if low else "-")))
        pairs = [(k, "mse" + k[len("infonce"):]) for k in copies if k.startswith("infonce_")]
        diffs = [(i[len("infonce_"):], diff(rows, i, m, col)) for i, m in pairs if m in copies]
        if diffs:
            out.append(("Table 3: InfoNCE steals the ImageNet victim better than MSE with the same queries",
                        all_of([exceeds(d) for _, d in diffs]), f"{col}, InfoNCE − MSE: " + listing(diffs)))
        v = est(rows, "victim", col)
        best = max(copies, key=lambda k: copies[k].mean) if copies else None
        if best and v:
            share = one_sample(ratios(rows, best, col))
            out.append(("ImageNet path: the best copy reaches 90% of the victim's accuracy (the paper: 90.5% vs "
                        "91.9% on F-MNIST with 200K queries)", exceeds(share, 90.0),
                        f"{col}: victim {v}, {best} {copies[best]} = {ratio(rows, best, col)}% of the victim "
                        f"(per-seed ratio, {share.how})"))
    scale, rows = _table(data, "table8")
    series = query_rows(rows or {}).get("infonce", [])
    if len(series) > 1:
        col = first_column(rows)
        (n0, few), (n1, many) = series[0], series[-1]
        d = diff(rows, many, few, col)
        out.append(("Table 8: more queries give a better copy of the ImageNet victim (InfoNCE)", exceeds(d),
                    f"{col}: {n0} queries {est(rows, few, col)}, {n1} queries {est(rows, many, col)}; "
                    f"{n1} − {n0} {describe(d)}"))
    return out


def table_markdown(rows: dict, columns: list[str], paper: dict | None) -> list[str]:
    pcols = (paper or {}).get("columns", [])
    head = "| encoder | " + " | ".join(columns) + (" | paper (" + " / ".join(pcols) + ")" if paper else "") + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1 + (1 if paper else 0))]
    order = [r for r in ROW_NAMES if r in rows] + sorted(r for r in rows if r not in ROW_NAMES)
    for row in order:
        cells = [str(est(rows, row, c) or "-") for c in columns]
        ref = (paper or {}).get("rows", {}).get(row)
        extra = [" / ".join(f"{v:.1f}" for v in ref) if ref else "-"] if paper else []
        lines.append(f"| {ROW_NAMES.get(row, row)} | " + " | ".join(cells + extra) + " |")
    return lines


def seeds_of(rows: dict) -> int:
    return max((len(seeds) for cols in rows.values() for seeds in cols.values()), default=0)


def probe_lines(data: dict, scale: str = "cpu", column: str = "mnistm5k") -> list[str]:
    """Both linear probes on Table 2's models (``scripts/probes.sh``): ours (L-BFGS on standardised
    features, the table's own records) and the reference's (Adam through the encoder, 100 epochs,
    train-mode BatchNorm), with their difference by the rule (paired by seed)."""
    ref, ours = data.get(("probes", scale)), data.get(("table2", scale))
    if not ref or not ours:
        return []
    lines = ["", f"## Probes: ours (L-BFGS) and the reference's, on Table 2's models ({scale} scale, {column})", "",
             "Same checkpoints, same test images; the reference probe is `linear_eval.py --probe reference` (Adam, "
             "100 epochs through the frozen encoder, BatchNorm in train mode, lr 3e-4 for the victim and 1e-4 for "
             "stolen copies); the difference follows the report's rule: paired by seed (mean ± 95% CI), Welch "
             "where the seeds differ (marked).", "",
             "| encoder | ours (lbfgs) | reference probe | reference − ours |", "|---|---|---|---|"]
    for row in ("victim", "random", "mse", "infonce", "softnn", "wasserstein", "supcon", "barlow"):
        a, b = ours.get(row, {}).get(column, {}), ref.get(row, {}).get(column, {})
        if not a or not b:
            continue
        d = difference(b, a)
        lines.append(f"| {ROW_NAMES.get(row, row)} | {estimate(a.values())} | {estimate(b.values())} | "
                     f"{d if d.method == PAIRED else describe(d)} |")
    return lines


# ----------------------------------------------------------------------------- sections

MAIN_ORDER = ("efficiency", "table1", "table2", "table3", "table5", "table7", "table8", "table9")
OTHER_SECTIONS = ("probes",)  # the probe comparison has its own section (probe_lines)


def efficiency_section(rows: dict, columns: list[str], ref: dict, train_size: int, png: Path, scale: str) -> list[str]:
    """The query-efficiency figure and its table: top-1 against the share of the victim's training set."""
    col = columns[0]
    points = efficiency_points(rows, col, train_size)
    plot_efficiency(points, ref.get("point"), f"query efficiency ({scale}) on {col}", png)
    lines = [f"![query efficiency]({png.name})", "",
             "| loss | queries | % of the victim's training set | top-1 on " + col
             + " | % of the victim |", "|---|---|---|---|---|"]
    for loss, pts in sorted(query_rows(rows).items()):
        for n, row in pts:
            lines.append(f"| {ROW_NAMES.get(loss, loss)} | {n} | "
                         f"{100 * n / train_size:.1f} | {est(rows, row, col) or '-'} | "
                         f"{ratio(rows, row, col) or '-'} |")
    best = best_fraction(points)
    lines += ["", "victim " + " / ".join(str(est(rows, 'victim', c) or '-') for c in columns)
              + f"; random init {est(rows, 'random', col) or '-'}; raw pixels {est(rows, 'pixels', col) or '-'}"
              + (f". Fewest queries reaching 95% of the victim (mean): {ROW_NAMES.get(best[0], best[0])} "
                 f"at {100 * best[1]:.1f}% of the training set ({best[2]}% of the victim)."
                 if best else ". No loss reached 95% of the victim (mean) at these query counts.")]
    return lines


def queries_section(table: str, scale: str, rows: dict, columns: list[str], ref: dict, png: Path) -> list[str]:
    """Tables 7-9: accuracy against the number of queries, plotted and tabulated beside the paper."""
    col = columns[0]
    plot_queries(rows, col, f"{table} ({scale}): accuracy vs queries on {col} (95% CI)", png)
    lines = [f"![accuracy versus queries]({png.name})", ""]
    lines += ["| loss | queries | " + " | ".join(columns) + " | paper (" + " / ".join(ref.get("columns", []))
              + ") |", "|---|---|" + "---|" * (len(columns) + 1)]
    for loss, pts in sorted(query_rows(rows).items()):
        for n, row in pts:
            cells = [str(est(rows, row, c) or "-") for c in columns]
            p = ref.get("queries", {}).get(loss, {}).get(n)
            lines.append(f"| {ROW_NAMES.get(loss, loss)} | {n} | " + " | ".join(cells) + " | "
                         + (" / ".join(f"{v:.1f}" for v in p) if p else "-") + " |")
    notes = [f"{ROW_NAMES[b]}: " + " / ".join(str(est(rows, b, c) or "-") for c in columns)
             for b in BASELINES if b in rows]
    if ref.get("victim"):
        notes.append(f"paper victim: {' / '.join(str(v) for v in ref['victim'])}")
    return lines + ["", "; ".join(notes)]


def main_table_sections(data: dict, paper: dict, records: list[dict], train_sizes: dict, out_dir: Path,
                        skip: tuple = ()) -> list[str]:
    """One section per main table and scale, in the paper's order, each captioned from its own records
    (:func:`reports.captions.header`); tables in ``skip`` (the other sections' tables) are left to their
    own modules."""
    order = {t: i for i, t in enumerate(MAIN_ORDER)}
    lines: list[str] = []
    for (table, scale), rows in sorted(data.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        if table in skip or table in OTHER_SECTIONS:
            continue
        ref = paper.get(table, {})
        columns = sorted({c for cols in rows.values() for c in cols},
                         key=lambda c: list(rows.get("victim", {})).index(c) if c in rows.get("victim", {}) else 99)
        own = [r for r in records if (r.get("table"), r.get("scale", "?")) == (table, scale)]
        lines += header(ref, table, scale, own)
        if table in IMAGENET_TABLES:
            lines += [IMAGENET_NOTE.get(scale, ""), ""]
            stale = query_set_note(own)
            lines += [stale, ""] if stale else []
        if table == "efficiency" and train_sizes.get((table, scale)):
            lines += efficiency_section(rows, columns, ref, train_sizes[(table, scale)],
                                        out_dir / f"{table}_{scale}.png", scale)
        elif table in ("table7", "table8", "table9"):
            lines += queries_section(table, scale, rows, columns, ref, out_dir / f"{table}_{scale}_queries.png")
        else:
            lines += table_markdown(rows, columns, ref or None)
            if table in ("table2", "table5"):
                png = out_dir / f"{table}_{scale}_losses.png"
                plot_bars(rows, columns[0], f"{table} ({scale}): stolen with each loss, on {columns[0]}", png)
                lines += ["", f"![loss functions]({png.name})"]
    return lines
