"""The printed result: one Markdown table (A | B | C side by side), the targets with PASS/FAIL, the machine."""

from __future__ import annotations

import math
from typing import Any

from bench.costs import MONTHLY_REQUESTS, PRICE_PER_COMMAND, Cost, monthly_bill, seed_card_per_request
from bench.measure import Latency, Overhead, Race, Stampede, Zipf, percentile
from bench.strategies import STRATEGIES, SeedCard
from lib.ops.recorder import FLUSH_INTERVAL

DASH = "—"


def ms(value: float) -> str:
    if value != value:  # NaN: no samples
        return DASH
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def pct(value: float) -> str:
    return DASH if value != value else f"{value:.1%}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in lines]
    return "\n".join(out)


def _odd(counter: Any) -> str:
    items = [f"{n} {what}" for what, n in sorted(counter.items()) if n]
    return f" [{', '.join(items)}]" if items else ""


def _overflows(count: int) -> str:
    return f" [{count} connects dropped: accept queue full]" if count > 0 else ""


def render(results: dict[str, Any]) -> str:
    args = results["args"]
    labels = [s.label for s in STRATEGIES]
    lines: list[list[str]] = []

    def row(name: str, cell: Any) -> None:
        lines.append([name, *(cell(label) for label in labels)])

    latency: dict[str, Latency] = results["latency"]
    if latency:
        def hits(label: str) -> str:
            if label not in latency:
                return DASH
            found = latency[label]
            if not found.hit_ms and not found.unexpected:
                return f"{DASH} (every read is a query)"
            n = "" if len(found.hit_ms) == args.hits else f" (n={len(found.hit_ms)})"
            odd = _odd({k: v for k, v in found.unexpected.items() if k.startswith("hit")})
            return f"{ms(percentile(found.hit_ms, 50))} / {ms(percentile(found.hit_ms, 95))}{n}{odd}"

        def misses(label: str) -> str:
            if label not in latency:
                return DASH
            found = latency[label]
            n = "" if len(found.miss_ms) == args.misses else f" (n={len(found.miss_ms)})"
            odd = _odd({k: v for k, v in found.unexpected.items() if k.startswith("miss")})
            return f"{ms(percentile(found.miss_ms, 50))} / {ms(percentile(found.miss_ms, 95))}{n}{odd}"

        row(f"1. detail read, hit: p50 / p95 ms ({args.hits} reads)", hits)
        row(f"1. detail read, miss: p50 / p95 ms ({args.misses} reads, invalidated first)", misses)

    stampede: dict[str, Stampede] = results["stampede"]
    if stampede:
        def queries(label: str) -> str:
            found = stampede.get(label)
            return DASH if found is None else f"{found.loader_calls} / {found.db_queries}"

        def statuses(label: str) -> str:
            found = stampede.get(label)
            if found is None:
                return DASH
            parts = [f"{n} {status}" for status, n in found.statuses.most_common()]
            return " · ".join(parts) + _odd(found.errors) + _overflows(found.overflows)

        def slowest(label: str) -> str:
            found = stampede.get(label)
            return DASH if found is None else ms(found.slowest_ms)

        row(f"2. {args.concurrent} concurrent reads of one cold key: DB queries (loader calls / stand-in count)",
            queries)
        row("2. … answered as (X-Cache)", statuses)
        row("2. … slowest of them (ms)", slowest)

    zipf: dict[str, Zipf] = results["zipf"]
    if zipf:
        def each(fn: Any) -> Any:
            return lambda label: DASH if label not in zipf else fn(zipf[label])

        head = (f"3. Zipf s={args.zipf_s:g} over {results.get('zipf_keys', '?')} keys, {args.zipf_threads} threads, "
                f"{args.zipf_writes:.0%} writes, DB delay {args.zipf_db_delay_ms:g} ms")
        row(f"{head}: reads + writes run", each(
            lambda z: f"{z.reads} + {z.writes} in {z.seconds:.1f} s" + (f" (of {z.planned} planned)"
                                                                        if z.reads + z.writes < z.planned else "")
            + _odd(z.errors) + _overflows(z.overflows)))
        row("3. … hit rate (HIT or STALE / reads; cache filled first)", each(lambda z: pct(z.hit_rate)))
        row("3. … DB queries avoided (1 − DB queries / reads)",
            each(lambda z: f"{pct(z.avoided)} ({z.db_queries} queries; loader calls {z.loader_calls})"))
        row("3. … read latency p50 / p95 / p99 (ms)", each(
            lambda z: " / ".join(ms(percentile(z.read_ms, p)) for p in (50, 95, 99))))
        row("3. … reads that waited for another's fill: polls (READ calls) per waiting read, mean (max)", each(
            lambda z: f"{z.waiting} reads: {z.polls_per_wait:.2f} ({z.max_polls})" if z.waiting
            else ("0 reads" if z.can_wait else f"{DASH} (never waits)")))
        def first_hit(z: Zipf) -> str:
            parts = []
            for kind, label in (("list", "lists"), ("detail", "details")):
                found = z.first_hit_ms[kind]
                parts.append(f"{label} {ms(percentile(found, 50))} / {ms(percentile(found, 95))} / "
                             f"{ms(max(found, default=float('nan')))} ({len(found)}, "
                             f"{z.missed_before_hit[kind]} reads not hit before)")
            return " · ".join(parts) + (f" [{z.never_hit} never hit]" if z.never_hit else "")

        row("3. … a write's return → first HIT of each key it invalidated: p50 / p95 / max ms (pairs, reads of it "
            "that began meanwhile and did not hit)", each(first_hit))
        row("3. … stale reads after a write had returned (of reads exposed to one)",
            each(lambda z: f"{z.stale_reads} of {z.exposed_reads}"
                 + (f" (lists {z.stale_list}, details {z.stale_detail})" if z.stale_reads else "")
                 + (f" [{z.unknown_prices} unknown prices]" if z.unknown_prices else "")))

    race: dict[str, Race] = results["race"]
    if race:
        def forced(label: str) -> str:
            found = race.get(label)
            if found is None:
                return DASH
            return " · ".join(f"{kind} {found.stale[kind]} of {found.reads[kind]}" for kind in found.stale)

        row("3. forced stale-set race (reader's query, a write returns, the reader stores): stale follow-up reads",
            forced)

    overhead: dict[str, Overhead] = results["overhead"]
    if overhead:
        def cost(label: str) -> str:
            found = overhead.get(label)
            if found is None:
                return DASH
            hit, get = percentile(found.hit_ms, 50), percentile(found.get_ms, 50)
            odd = f" [{found.misses} not hits]" if found.misses else ""
            return f"{ms(hit)} vs {ms(get)}: {hit - get:+.2f}{odd}"

        row(f"4. hit p50 vs one bare Upstash GET p50, same stand-in (ms; {args.overhead_samples} each)", cost)

    if zipf:
        def spent(z: Zipf) -> str:
            hit = ""
            if z.per_hit == z.per_hit:
                waited = z.hit_reads - z.first_read_hits
                hit = (f"; per hit {z.per_hit:.3f}, per hit answered by its first read {z.per_first_read_hit:.3f} "
                       f"({waited} hits found another request filling the key); {z.metrics_writes} metrics writes")
            return f"{z.billed}: {z.per_request:.3f} per request{hit}; {z.global_lock} under the global lock"

        row("3. … Upstash: billed commands (per request, per hit); scripts under the global lock", each(spent))

    imports = results.get("imports")
    if imports:
        endpoint, supabase = imports

        def cold(label: str) -> str:
            if label != STRATEGIES[-1].label:
                return DASH
            ratio = endpoint.median_ms / supabase.median_ms
            heavy = f" [pulls in {endpoint.heavy}]" if endpoint.heavy else ""
            return f"{endpoint.median_ms:.0f} vs {supabase.median_ms:.0f} = {ratio:.0%}{heavy}"

        row(f"5. cold import: read endpoint vs `import supabase` (ms, median of {len(endpoint.runs_us)})", cold)

    parts = [_table(["measure", *labels], lines)]
    if results.get("costs"):
        parts += ["", "6. What one request costs on Upstash, measured on the stand-in: billed commands · scripts run "
                      "under Upstash's global lock (the commands)", "", costs_table(results["costs"])]
    if "B: naive cache-aside" in zipf and STRATEGIES[-1].label in zipf:
        parts += ["", f"7. The monthly Upstash bill of row 3's mix ({args.zipf_writes:.0%} writes, hit rates as "
                      f"measured), pay-as-you-go at $0.20 per 100,000 commands", "", bill_table(zipf)]
    parts += ["", "Targets (issues 4, 11 and 17):", *targets(results)]
    parts += ["", "Machine and conditions:", *conditions(results)]
    return "\n".join(parts)


def costs_table(found: dict[str, dict[str, Cost]]) -> str:
    designs = ["B: naive cache-aside", SeedCard.label, STRATEGIES[-1].label]
    lines = [[kind, *(per[d].cell() if d in per else DASH for d in designs)] for kind, per in found.items()]
    return _table(["request kind", *designs], lines)


def bill_table(zipf: dict[str, Zipf]) -> str:
    naive, ours = zipf["B: naive cache-aside"], zipf[STRATEGIES[-1].label]
    rows = [
        ("B: naive cache-aside (GET; SET on a miss; DEL on a write)", naive.per_request, naive.per_hit),
        (f"{SeedCard.label}: B plus an INCR per read (its hit/miss counter)", seed_card_per_request(naive), float("nan")),
        (f"{STRATEGIES[-1].label} (metrics writes included)", ours.per_request, ours.per_hit),
    ]
    lines = []
    for name, per_request, per_hit in rows:
        lines.append([name, f"{per_request:.3f}", DASH if per_hit != per_hit else f"{per_hit:.3f}",
                      *(f"${monthly_bill(per_request, n):,.2f}" for n in MONTHLY_REQUESTS)])
    head = ["design", "billed commands per request", "per hit",
            *(f"{n // 1_000_000} M requests / month" for n in MONTHLY_REQUESTS)]
    note = (f"  ($ = requests × commands per request × ${PRICE_PER_COMMAND * 100_000:.2f} / 100,000; storage and "
            "bandwidth aside. B's per-hit figure is not tallied: its hits are one GET by construction.)")
    return _table(head, lines) + "\n" + note


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def targets(results: dict[str, Any]) -> list[str]:
    ours = STRATEGIES[-1].label
    out = []
    found = results["overhead"].get(ours)
    if found is not None:
        hit, get = percentile(found.hit_ms, 50), percentile(found.get_ms, 50)
        ok = None if math.isnan(hit) else hit - get <= 0.2
        out.append(f"  {_verdict(ok)}  a hit's p50 within 0.2 ms of one bare Upstash GET on the same stand-in: "
                   f"{hit - get:+.2f} ms ({ms(hit)} vs {ms(get)})")
    found_costs = results.get("costs") or {}
    if found_costs:
        hit, miss = found_costs["hit"][ours], found_costs["miss"][ours]
        out.append(f"  {_verdict(hit.billed == 1)}  a hit = 1 billed command: {hit.billed:g}")
        out.append(f"  {_verdict(miss.billed <= 3)}  a miss ≤ 3 billed commands: {miss.billed:g}")
        reads = [kind for kind in found_costs if kind.split(" ")[0] in ("hit", "miss", "stale", "metrics")
                 and "write" not in kind]
        locked = {kind: found_costs[kind][ours].global_lock for kind in reads}
        out.append(f"  {_verdict(not any(locked.values()))}  0 global-lock scripts on any read "
                   f"({', '.join(k.split(' (')[0] for k in reads)}): {sum(locked.values()):g}")
    found = results["stampede"].get(ours)
    if found is not None:
        ok = found.loader_calls == 1 and found.db_queries == 1
        out.append(f"  {_verdict(ok)}  {found.requests} concurrent requests on a cold key cause 1 database query: "
                   f"{found.db_queries} (loader calls {found.loader_calls})"
                   + (f"; {found.overflows} connects were dropped by a full accept queue meanwhile (a stand-in's "
                      "listen backlog: lib bypassed Redis, see bench/README.md)" if found.overflows > 0 else ""))
    z = results["zipf"].get(ours)
    if z is not None:
        out.append(f"  {_verdict(z.per_first_read_hit <= 1.05)}  a hit averaged over the Zipf run ≤ 1.05 billed "
                   f"commands, metrics writes included: {z.per_first_read_hit:.3f} (the {z.first_read_hits} hits "
                   "answered by their first read)")
        out.append(f"  {_verdict(z.per_hit <= 1.05)}  … counting also the {z.hit_reads - z.first_read_hits} hits that "
                   f"found another request filling the key (they waited and polled): {z.per_hit:.3f}")
        out.append(f"  {_verdict(z.global_lock == 0)}  0 scripts under the global lock in the Zipf run: {z.global_lock}")
        out.append(f"  {_verdict(z.hit_rate >= 0.95)}  Zipf hit rate ≥ 95 %: {pct(z.hit_rate)}")
        out.append(f"  {_verdict(z.avoided >= 0.95)}  Zipf database queries avoided ≥ 95 %: {pct(z.avoided)}")
        out.append(f"  {_verdict(z.stale_reads == 0 and z.unknown_prices == 0)}  0 stale reads after a write has "
                   f"returned: {z.stale_reads} (of {z.exposed_reads} reads that began after a write they show)")
    naive = results["zipf"].get("B: naive cache-aside")
    if z is not None and naive is not None:
        out.append(f"  {_verdict(z.seconds <= naive.seconds)}  Zipf run with writes as fast as naive cache-aside or "
                   f"faster: {z.seconds:.1f} s vs {naive.seconds:.1f} s")
        p99, naive_p99 = percentile(z.read_ms, 99), percentile(naive.read_ms, 99)
        out.append(f"  {_verdict(p99 <= naive_p99)}  … and its read p99 no higher: {ms(p99)} ms vs {ms(naive_p99)} ms")
    if z is not None:
        ok = None if not z.waiting else z.polls_per_wait <= 2
        out.append(f"  {_verdict(ok)}  ≤ 2 polls (READ calls) per read that waited for another's fill, on average: "
                   + (f"{z.polls_per_wait:.2f} over {z.waiting} reads" if z.waiting else "no read waited"))
    found = results["race"].get(ours)
    if found is not None:
        stale = sum(found.stale.values())
        out.append(f"  {_verdict(stale == 0)}  … and 0 under the forced stale-set race: {stale} "
                   f"(of {sum(found.reads.values())} follow-up reads)")
    imports = results.get("imports")
    if imports:
        endpoint, supabase = imports
        ratio = endpoint.median_ms / supabase.median_ms
        out.append(f"  {_verdict(ratio <= 0.60)}  a read endpoint's cold import ≤ 60 % of `import supabase`: "
                   f"{ratio:.0%} ({endpoint.median_ms:.0f} ms vs {supabase.median_ms:.0f} ms)")
    return out or ["  (no row that a target reads was run)"]


def conditions(results: dict[str, Any]) -> list[str]:
    args, machine = results["args"], results["machine"]
    out = [
        f"  cores: {machine['cores']}",
        f"  python: {machine['python']}",
        f"  database delay: {args.db_delay_ms:g} ms before every PostgREST request (rows 1, 2, 4); "
        f"row 3: {args.zipf_db_delay_ms:g} ms",
    ]
    if results.get("redis"):
        out.append(f"  Upstash stand-in in front of {results['redis']}, no added delay; all traffic on 127.0.0.1")
    if results["zipf"]:
        out.append(f"  row 3: {args.zipf_requests} requests for B and C; A runs the first "
                   f"{args.zipf_nocache_requests} of the same sequence (every A read is a query, so its rates are 0 "
                   "by construction and the full run would take minutes)")
        out.append("  row 3 keys ranked: the public list first, then 4 city lists and the detail pages in a seeded "
                   "order; writes pick a property by the same law over the details; B and C start with every key "
                   "filled once (steady state, not counted)")
        out.append("  row 3 stale reads: the stand-in sleeps before it runs a query, so a naive reader reads the row "
                   "at the end of the delay and its window before the SET is milliseconds: B's count in the Zipf run "
                   "varies from run to run (0 in some); the forced line interleaves that race on purpose")
    out.append("  server-side figures, in process through lib (no HTTP handler, no `vercel dev` proxy: "
               "through `make dev` add its per-request proxy overhead)")
    if results["zipf"] or results.get("costs"):
        out.append("  rows 3, 6, 7: Upstash's bill read from the stand-in's counters: every command, each one inside a "
                   "pipeline too, except INFO, PING, AUTH, QUIT, COMMAND (not charged); C's requests are recorded "
                   "by lib/metrics as in a function (one instance: its writes at most every "
                   f"{FLUSH_INTERVAL:g} s)")
    out.append(f"  whole run: {results['seconds']:.0f} s")
    return out
