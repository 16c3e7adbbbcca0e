#!/usr/bin/env python3
"""The table of `make bench-issuance` (scripts/bench-issuance.sh), from its raw outputs.

Reads RESULTS/<contender>-<phase>.tsv (one line per request, written by fetch.sh) and
RESULTS/facts.tsv (wall times, Pebble order counts, the edge's metric deltas); prints the table
and exits 3 when tenant-edge misses one of the targets in its target column. Standard
library only.

Usage: report.py RESULTS_DIR
"""
import collections
import os
import statistics
import sys

TARGET_MEDIAN = 0.100  # s, ClientHello -> first byte for a never-seen name
TARGET_RATE = 10.0  # certificates per second, limits raised


def load(results, who, phase):
    path = os.path.join(results, f"{who}-{phase}.tsv")
    rows = []
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 7:
                continue
            name, code, connect, _app, first, total, exitcode = parts[:7]
            rows.append(
                {
                    "name": name,
                    "ok": code == "200",
                    "code": code,
                    "ttfb": float(first) - float(connect),
                    "total": float(total),
                    "exit": exitcode,
                    "error": parts[7] if len(parts) > 7 else "",
                }
            )
    return rows


def facts(results):
    out = {}
    with open(os.path.join(results, "facts.tsv"), encoding="utf-8") as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            out[k] = v
    return out


def ms(x):
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def errors(rows):
    """The failures, grouped: `3× curl 35: ... alert internal error`."""
    counts = collections.Counter()
    for r in rows:
        if r["ok"]:
            continue
        if r["exit"] != "0":
            msg = r["error"].replace("OpenSSL/3.0.", "OpenSSL ")
            counts[f"curl {r['exit']}: {msg}"] += 1
        else:
            counts[f"HTTP {r['code']}"] += 1
    return "; ".join(f"{n}x {m}" for m, n in counts.most_common()) or "none"


def main():
    results = sys.argv[1]
    fa = facts(results)
    table = []  # (metric, edge, caddy, target, verdict)
    misses = 0
    notes = []

    edge_ran = os.path.exists(os.path.join(results, "edge-a.tsv"))

    def verdict(ok):
        nonlocal misses
        if ok is None or not edge_ran:
            return ""
        if not ok:
            misses += 1
        return "PASS" if ok else "FAIL"

    def latency(who, phase):
        rows = load(results, who, phase) or []
        good = [r["ttfb"] for r in rows if r["ok"]]
        return rows, good

    # a. never-seen names, one after the other
    cells = {}
    for who in ("edge", "caddy"):
        rows, good = latency(who, "a")
        cells[who] = (rows, good)
    def med(who):
        good = cells[who][1]
        return statistics.median(good) if good else None
    em, cm = med("edge"), med("caddy")
    n = max(len(cells["edge"][0]), len(cells["caddy"][0]))
    table.append(
        (
            f"a. new name: ClientHello -> first byte, median ({n} sequential)",
            ms(em) if em is not None else "-",
            ms(cm) if cm is not None else "-",
            f"<= {ms(TARGET_MEDIAN)}",
            verdict(em is not None and em <= TARGET_MEDIAN),
        )
    )
    def minmax(who):
        good = cells[who][1]
        return f"{ms(min(good))} / {ms(max(good))}" if good else "-"
    table.append(("   min / max", minmax("edge"), minmax("caddy"), "", ""))
    def okcount(who, phase):
        rows = load(results, who, phase) or []
        return sum(r["ok"] for r in rows), len(rows), rows

    def frac(ok, n):
        return f"{ok}/{n}" if n else "-"
    eo, en, erows = okcount("edge", "a")
    co, cn, crows = okcount("caddy", "a")
    table.append(("   succeeded", frac(eo, en), frac(co, cn), f"{n}/{n}", verdict(eo == en and en > 0)))
    def per_order(who, phase):
        o = int(fa.get(f"{who}.{phase}.orders", 0) or 0)
        p = int(fa.get(f"{who}.{phase}.acme_posts", 0) or 0)
        return f"{p / o:.1f}" if o else "-"
    table.append(("   ACME POSTs per order (Pebble log; 5 = no polling)", per_order("edge", "a"), per_order("caddy", "a"), "", ""))
    cnt = float(fa.get("edge.a.acme_order_count", 0) or 0)
    secs = float(fa.get("edge.a.acme_order_seconds", 0) or 0)
    table.append(
        (
            "   edge: mean ACME order (tenant_edge_acme_order_duration_seconds)",
            ms(secs / cnt) if cnt else "-",
            "",
            "",
            "",
        )
    )

    # h. the same names again: the warm path
    eh, ch = latency("edge", "h")[1], latency("caddy", "h")[1]
    table.append(
        (
            "h. cached name, new connection: ClientHello -> first byte, median",
            ms(statistics.median(eh)) if eh else "-",
            ms(statistics.median(ch)) if ch else "-",
            "",
            "",
        )
    )
    dbq = fa.get("edge.h.database_queries", "-")
    asks = fa.get("caddy.h.asks", "-")
    table.append(
        (
            "   allow-list lookups during h (edge: DB queries; Caddy: asks)",
            dbq,
            asks,
            "edge 0",
            verdict(dbq == "0") if edge_ran else "",
        )
    )

    # b. all at once
    eo, en, erows = okcount("edge", "b")
    co, cn, crows = okcount("caddy", "b")
    nb = max(en, cn)
    table.append((f"b. {nb} new names at the same moment: HTTP 200", frac(eo, en), frac(co, cn), f"{nb}/{nb}", verdict(eo == en and en > 0)))
    eb, cb = latency("edge", "b")[1], latency("caddy", "b")[1]
    table.append(
        (
            "   slowest success (ClientHello -> first byte)",
            ms(max(eb)) if eb else "-",
            ms(max(cb)) if cb else "-",
            "",
            "",
        )
    )
    if eo < en:
        notes.append(f"b edge failures: {errors(erows)}")
    if co < cn:
        notes.append(f"b Caddy failures: {errors(crows)}")
    b0o, b0n, b0rows = okcount("edge", "b0")
    if b0n:
        table.append(
            (
                f"b0. same, edge with the shipped default limits",
                f"{b0o}/{b0n}",
                "",
                "(info)",
                "",
            )
        )
        if b0o < b0n:
            lim = fa.get("edge.b0.limited", "?")
            notes.append(f"b0 edge (default limits) failures: {errors(b0rows)}; tenant_edge_issuances_limited_total +{lim}")

    # c. sustained
    def rate(who):
        rows = load(results, who, "c") or []
        ok = sum(r["ok"] for r in rows)
        wall = float(fa.get(f"{who}.c.wall", 0) or 0)
        return ok, len(rows), wall, (ok / wall if wall else 0.0), rows
    eok, en, ewall, erate, erows = rate("edge")
    cok, cn, cwall, crate, crows = rate("caddy")
    table.append(
        (
            "c. sustained: certificates/s (HTTP 200s / wall time)",
            f"{erate:.1f}/s" if en else "-",
            f"{crate:.1f}/s" if cn else "-",
            f">= {TARGET_RATE:.0f}/s",
            verdict(erate >= TARGET_RATE and eok == en),
        )
    )
    conc = os.environ.get("BENCH_CONCURRENCY", "16")
    table.append(
        (
            f"   names ok / started ({conc} in flight), wall time",
            f"{eok}/{en} in {ewall:.1f} s" if en else "-",
            f"{cok}/{cn} in {cwall:.1f} s" if cn else "-",
            "",
            "",
        )
    )
    ec, cc = latency("edge", "c")[1], latency("caddy", "c")[1]
    table.append(
        (
            "   per name: ClientHello -> first byte, median / max",
            f"{ms(statistics.median(ec))} / {ms(max(ec))}" if ec else "-",
            f"{ms(statistics.median(cc))} / {ms(max(cc))}" if cc else "-",
            "",
            "",
        )
    )
    table.append(
        (
            "   Pebble orders placed",
            fa.get("edge.c.orders", "-"),
            fa.get("caddy.c.orders", "-"),
            "",
            "",
        )
    )
    if eok < en:
        notes.append(f"c edge failures: {errors(erows)}")
    if cok < cn:
        notes.append(f"c Caddy failures: {errors(crows)}")

    # w. the first name (ACME account created)
    (ewr, ew), (cwr, cw) = latency("edge", "w"), latency("caddy", "w")
    table.append(
        (
            "w. first name after start (creates the ACME account; not a target)",
            ms(ew[0]) if ew else ("failed" if ewr else "-"),
            ms(cw[0]) if cw else ("failed" if cwr else "-"),
            "",
            "",
        )
    )

    for key, value in sorted(fa.items()):
        if key.endswith(".pebble_deadlocks"):
            who, phase = key.split(".")[:2]
            if who == "edge":
                notes.append(
                    f"Pebble deadlocked during edge phase {phase} ({value}x): a broken CA, not the edge; "
                    "the phase was run again on a restarted Pebble and a fresh edge (the failed "
                    f"attempt: edge-{phase}-deadlocked-N.tsv; goroutine dump: pebble-edge.log)"
                )
            else:
                notes.append(f"Pebble deadlocked during Caddy phase {phase}: Caddy's later figures are not valid")

    widths = [max(len(r[i]) for r in table + [("metric", "tenant-edge", "Caddy", "target", "edge")]) for i in range(5)]
    header = ("metric", "tenant-edge", "Caddy", "target", "edge")
    def line(r):
        return f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip()
    print(line(header))
    print("-" * (sum(widths) + 8))
    for r in table:
        print(line(r))
    print()
    for n in notes:
        print(n)
    if notes:
        print()
    print("a/h/b/c: tenant-edge with limits raised (interval off, burst 1000, max_concurrent 64,")
    print("budget_per_week off, clients.new_names_burst 100000); Caddy as it comes (no on_demand")
    print("interval/burst). ClientHello -> first byte = curl time_starttransfer - time_connect.")
    return 3 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
