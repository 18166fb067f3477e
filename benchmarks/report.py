"""RESULTS.md, the plots, target checks, run comparison and profile summaries."""

from __future__ import annotations

import io
import pstats
from pathlib import Path
from typing import Any

from benchmarks import stream_fast, swapback

HERE = Path(__file__).resolve().parent
FINDINGS = HERE / "findings.md"
# Benchmarks whose targets, section and headline figures live in their own module.
MODULES: dict[str, Any] = {"stream_fast": stream_fast, "swapback": swapback}

STARTING_METHOD = (
    "A gateway with `max_engines = 2`; A loaded. Each round has an idle phase (A alone) and a phase while B starts "
    '(`POST /load {"model": "B"}` sent in the background), order flipped between rounds. Both phases sample alike: '
    "`GET /running`, then a pair (the small request to A through the gateway and straight to A's process, order "
    "flipped), then `GET /running` again. **While B is starting** means: a pair counts only if the reads before and "
    "after it both show B in state `starting` (B enters that state once, when the gateway decides to start it, and "
    "leaves it once, when it is ready), so B was starting during the whole pair; the pair during which the start "
    "ended is dropped. Idle pairs count only if both reads show A alone and `ready` with its first pid. After each "
    'start, B is unloaded (`POST /unload {"model": "B"}` returns once it is gone). Differences are taken per round '
    "(starting - idle), then summarised over rounds.\n"
)

KIND_LABEL = {"model_switch": "switch between 2 models", "variant_switch": "switch to the larger variant",
              "cold": "cold first request"}


def fmt(s: dict[str, Any] | None, digits: int = 1) -> str:
    """A spread as 'median [min, max]'."""
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _v(s: dict[str, Any] | None) -> float | None:
    return None if not s else s.get("median")


# --------------------------------------------------------------------------- targets


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    b = data["benchmarks"]
    rows: list[dict[str, Any]] = []

    def add(bench: str, target: str, value: float | None, ok: bool | None, shown: str) -> None:
        rows.append({"benchmark": bench, "target": target, "value": value, "shown": shown,
                     "met": bool(ok) if value is not None else None})

    for engine in ("fake", "real"):
        sw = b.get(f"switch_{engine}")
        if not sw:
            continue
        for kind in ("model_switch", "variant_switch", "cold"):
            g = sw["gateway"].get(kind)
            if g:
                value = _v(g["added_ms"])
                shown = f"{fmt(g['added_ms'])} ms"
                if g.get("orchestration_ms"):
                    shown += f" (orchestration vs by hand: {g['orchestration_ms']['added']:+.1f} ms)"
                add(f"1. switch ({engine} engine)", f"added cost, {KIND_LABEL[kind]}: median <= 50 ms", value,
                    value is not None and value <= 50 and g["all_ok"], shown)
    st = b.get("streaming")
    if st:
        value = _v(st["ratio_chunks_per_s"])
        add("2. streaming", "chunks/s gateway / direct >= 0.8", value, value is not None and value >= 0.8 and
            st["all_ok"], fmt(st["ratio_chunks_per_s"], 3))
    ov = b.get("overhead")
    if ov:
        value = _v(ov["added_nonstream_ms"]["median"])
        add("3. overhead", "added median, small non-streaming request <= 1.0 ms", value,
            value is not None and value <= 1.0, f"{fmt(ov['added_nonstream_ms']['median'], 2)} ms")
        cpu = ov["gateway_cpu_ms_per_request"]
        add("3. overhead", "gateway CPU per small request <= 1.5 ms", cpu, cpu <= 1.5, f"{cpu:.2f} ms")
    cc = b.get("concurrency")
    if cc:
        for row in cc["levels"]:
            if row["clients"] == 16:
                value = _v(row["wall_ratio"])
                add("5. concurrency", "16 clients: gateway wall <= 1.2 x direct", value,
                    value is not None and value <= 1.2 and row["all_ok"], fmt(row["wall_ratio"], 3))
        failed = [row["clients"] for row in cc["levels"] if not row["all_ok"]]
        add("5. concurrency", "every client of every level succeeds", 0 if not failed else len(failed), not failed,
            "all succeeded" if not failed else f"failures at {failed} clients")
    for engine in ("fake", "real"):
        al = b.get(f"alternate_{engine}")
        if al:
            value = _v(al["difference_ms"])
            same = al["within_spread"] or (value is not None and value <= 0)
            add(f"7. alternation ({engine} engine)", "added latency, alternating 2 loaded models = single model "
                "(difference within the spread), no engine start", value,
                value is not None and same and al["all_ok"] and al["engine_starts_during_measurement"] == 0,
                _alternate_shown(al))
    for engine in ("fake", "real"):
        sg = b.get(f"starting_{engine}")
        if sg:
            value = _v(sg["gateway_more_ms"])
            add(f"8. while another starts ({engine} engine)", "request to a loaded model while another model starts: "
                "median <= 5 ms more than with nothing starting", value,
                value is not None and value <= 5 and sg["all_ok"],
                f"{fmt(sg['gateway_more_ms'], 2)} ms (gateway's own part: {fmt(sg['added_more_ms'], 2)} ms)")
    for name, module in MODULES.items():
        if b.get(name):
            for target, value, ok, shown in module.targets(b[name]):
                add(module.LABEL, target, value, ok, shown)
    return rows


def _alternate_shown(al: dict[str, Any]) -> str:
    diff = _v(al["difference_ms"]) or 0.0
    verdict = "within the spread" if al["within_spread"] else ("lower, outside the spread" if diff <= 0
                                                                else "higher, outside the spread")
    return (f"(a) {fmt(al['single']['added_ms']['median'], 2)}, (b) {fmt(al['alternating']['added_ms']['median'], 2)}"
            f" ms; (b) - (a) {fmt(al['difference_ms'], 2)} ms, {verdict}; "
            f"engine starts during: {al['engine_starts_during_measurement']}")


# --------------------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _machine(data: dict[str, Any]) -> str:
    meta = data["meta"]
    m = meta["machine"]
    rows = [
        ["CPU", f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} cores)"],
        ["memory", f"{m['memory_gb']} GB"],
        ["OS", m["os"]],
        ["Python", m["python"]],
        ["Tornado", m["tornado"]],
        ["llama-server", m["llama_server"]],
        ["model", m["model"] or "-"],
        ["git", meta["git"]],
        ["run", f"`{meta['command']}`, mode {meta['mode']}, started {meta['started']} UTC, {meta['duration_s']} s"],
    ]
    for when in ("load_before", "load_after"):
        snap = meta.get(when)
        if snap:
            busy = "; ".join(snap["busy_processes"]) or "none over 10% CPU"
            rows.append([when.replace("_", " "), f"loadavg {snap['loadavg_1_5_15']}; other busy processes: {busy}"])
    return _table(["", ""], rows)


def _switch_md(sw: dict[str, Any]) -> str:
    engine = sw["engine"]
    out = [f"### {engine} engine\n",
           f"Contexts {sw['setup']['contexts']}, {sw['rounds']} round(s); latency = the client's request time. "
           "Direct = the benchmark doing the same by hand (stop old, spawn, poll /health every 5 ms, request).\n"]
    rows = []
    for kind in ("model_switch", "variant_switch", "cold"):
        d = sw["direct"].get(kind)
        if not d:
            continue
        rows.append([KIND_LABEL[kind], "direct", d["samples"], fmt(d["total_ms"]), fmt(d["stop_ms"]),
                     fmt(d["spawn_to_healthy_ms"]), fmt(d["request_ms"]), "", "", ""])
        for path in ("gateway", "router"):
            g = sw.get(path, {}).get(kind)
            if g:
                ok = "" if g["all_ok"] else " **(failures)**"
                rows.append([KIND_LABEL[kind], path + ok, g["samples"], fmt(g["latency_ms"]), "", "", "",
                             fmt(g["added_ms"]), fmt(g["added_excl_stop_ms"]), fmt(g["vs_direct_ms"])])
    out.append(_table(["scenario", "path", "n", "latency ms", "engine stop ms", "spawn→healthy ms",
                       "first request ms", "added ms", "added excl. stop ms", "vs direct ms"], rows))
    logged = []
    for kind in ("model_switch", "variant_switch", "cold"):
        g = sw["gateway"].get(kind, {}).get("gateway_log_ms")
        if g:
            logged.append([KIND_LABEL[kind], fmt(g["stop_ms"]), fmt(g["spawn_to_ready_ms"]), fmt(g["rest_ms"]),
                           fmt(g["own_ms"])])
    if logged:
        out.append("\nThe same gateway switches as the gateway's own log times them (ms resolution): the old "
                   "engine's stop, spawn to ready (its readiness polling and `/props` read included), the rest of "
                   "the request (counting, forwarding, the engine's answer) and that rest minus the direct first "
                   "request (the gateway's own work outside the engine's start and stop).\n")
        out.append(_table(["scenario", "stop ms", "spawn→ready ms", "rest ms", "rest - direct request ms"], logged))
    orch = []
    for kind in ("model_switch", "variant_switch", "cold"):
        o = sw["gateway"].get(kind, {}).get("orchestration_ms")
        if o:
            orch.append([KIND_LABEL[kind], fmt(o["engine_ready_direct"]), fmt(o["engine_ready_gateway"]),
                         fmt(o["direct"]), fmt(o["gateway"]), f"**{o['added']:.1f}**"])
    if orch:
        out.append("\nOrchestration time: latency minus the old engine's stop, minus the new engine's load time by its "
                   "own log clock (`listening on` line), minus the first request's direct time. What is left is "
                   "spawning, readiness detection, counting and proxying; the engine's load-time noise drops out.\n")
        out.append(_table(["scenario", "engine load (own clock), direct runs ms", "same, gateway runs ms",
                           "orchestration by hand ms", "orchestration by the gateway ms", "gateway - by hand ms"],
                          orch))
    return "\n".join(out)


def _streaming_md(st: dict[str, Any]) -> str:
    rows = []
    labels = [("chunks", "SSE events", 0), ("total_ms", "stream time ms", 1), ("chunks_per_s", "chunks/s", 0),
              ("ttft_ms", "time to first token ms", 2), ("gap_p99_us", "inter-chunk gap p99 µs", 0),
              ("gap_max_ms", "longest gap ms", 2), ("engine_cpu_us_per_chunk", "engine CPU µs/chunk", 1),
              ("gateway_cpu_us_per_chunk", "gateway CPU µs/chunk", 1)]
    for key, label, digits in labels:
        rows.append([label, fmt(st["direct"][key], digits), fmt(st["gateway"][key], digits)])
    rows.append(["**ratio chunks/s (gateway/direct)**", "", fmt(st["ratio_chunks_per_s"], 3)])
    rows.append(["**added per chunk µs**", "", fmt(st["added_us_per_chunk"], 1)])
    return (f"One stream of {st['tokens']} tokens (fake engine, no token delay, context {st['engine_context']}), "
            f"{st['repeats']} repeats, direct and gateway alternating on the same engine process.\n\n"
            + _table(["", "direct", "gateway"], rows))


def _overhead_md(ov: dict[str, Any]) -> str:
    p = ov["probes"]
    rows = []
    for name, label in (("nonstream", "small request, not streamed"), ("stream_ttft", "streamed: time to first token"),
                        ("health", "GET /health (no engine call via gateway)")):
        d, g = p[f"{name}/direct"], p[f"{name}/gateway"]
        a = ov[f"added_{name}_ms"]
        rows.append([label, fmt(d["median"], 3), fmt(g["median"], 3), f"**{fmt(a['median'], 3)}**",
                     fmt(d["p99"], 3), fmt(g["p99"], 3), fmt(a["p99"], 3)])
    rows.append(["exact count: direct input_tokens call, keep-alive", fmt(p["count/direct"]["median"], 3), "", "",
                 fmt(p["count/direct"]["p99"], 3), "", ""])
    rows.append(["exact count: the same on a new connection (as the gateway did before pooling)",
                 fmt(p["count_new_conn/direct"]["median"], 3), "", "", fmt(p["count_new_conn/direct"]["p99"], 3), "",
                 ""])
    return (f"Fake engine loaded, {ov['requests_per_repeat']} requests per probe and path per repeat, "
            f"{ov['repeats']} repeats (figures: median [min, max] over the repeats).\n\n"
            + _table(["probe", "direct median ms", "gateway median ms", "added median ms", "direct p99 ms",
                      "gateway p99 ms", "added p99 ms"], rows)
            + f"\nGateway CPU per small request: **{ov['gateway_cpu_ms_per_request']} ms** "
            f"({ov['gateway_requests_per_s_sequential']} sequential requests/s through the gateway, one client).\n")


def _counting_md(ct: dict[str, Any]) -> str:
    rows = []
    for r in ct["sizes"]:
        rows.append([r["prompt_tokens"], f"{r['body_bytes'] / 1024:.0f} KiB", fmt(r["direct_ms"], 2),
                     fmt(r["gateway_ms"], 2), fmt(r["gateway_minus_direct_ms"], 2), fmt(r["json_ms"], 3)])
    return (f"Real llama-server, one variant `-c {ct['context_flag']}` (the engine reports {ct['context_learned']}), "
            f"{ct['repeats']} repeats. Gateway = a request rejected with 400 right after its count (no generation); "
            f"its floor with a one-line prompt: {fmt(ct['gateway_floor_ms'], 2)} ms.\n\n"
            + _table(["prompt tokens", "body", "direct input_tokens ms", "gateway count-and-reject ms",
                      "gateway - direct ms", "gateway JSON loads+dumps ms"], rows)
            + f"\nGrowth of the engine's count: {ct['direct_ms_per_1k_tokens']} ms per 1k tokens.\n")


def _concurrency_md(cc: dict[str, Any]) -> str:
    rows = []
    for r in cc["levels"]:
        ok = "yes" if r["all_ok"] else f"**no** {r['errors']}"
        rows.append([r["clients"], ok, fmt(r["direct_wall_ms"]), fmt(r["gateway_wall_ms"]), fmt(r["wall_ratio"], 3),
                     fmt(r["direct_chunks_per_s"], 0), fmt(r["gateway_chunks_per_s"], 0), fmt(r["direct_ttft_ms"], 2),
                     fmt(r["gateway_ttft_ms"], 2)])
    return (f"Fake engine, {cc['tokens']} tokens at {cc['token_delay_s'] * 1000:.0f} ms each, {cc['engine_slots']} "
            f"slots; each client on its own connection, all started at once; {cc['repeats']} repeats.\n\n"
            + _table(["clients", "all ok", "direct wall ms", "gateway wall ms", "ratio", "direct chunks/s",
                      "gateway chunks/s", "direct TTFT ms (median client)", "gateway TTFT ms"], rows))


def _alternate_md(al: dict[str, Any]) -> str:
    rows = []
    for mode, label in (("single", "(a) single model (A only)"), ("alternating", "(b) alternating A, B, A, B...")):
        m = al[mode]
        rows.append([label, fmt(m["direct_ms"], 3), fmt(m["gateway_ms"], 3), f"**{fmt(m['added_ms']['median'], 3)}**",
                     fmt(m["added_ms"]["p99"], 3)])
    verdict = "within" if al["within_spread"] else "outside"
    starts = al["engine_starts"]
    fake = f", fake engines' event files {starts['fake_events']}" if starts.get("fake_events") else ""
    return (f"### {al['engine']} engine\n\n{al['requests_per_block']} gateway requests (and as many direct) per block, "
            f"{al['repeats']} repeats, `max_tokens` {al['max_tokens']}.\n\n"
            + _table(["requests", "direct median ms", "gateway median ms", "added median ms", "added p99 ms"], rows)
            + f"\n(b) - (a), per repeat: **{fmt(al['difference_ms'], 3)} ms**, {verdict} the spread of the two "
            f"(the min-max ranges of (a) and (b) {'overlap' if al['within_spread'] else 'do not overlap'}). "
            f"Engine starts: gateway log {starts['gateway_log']}{fake} (the loads before measuring, nothing else); "
            f"/running read {al['checks']} times (after loading, after the warm-up, after every block): the same pids "
            f"{al['pids']}, both `ready`, nothing queued.\n")


def _starting_md(sg: dict[str, Any]) -> str:
    pool = sg["pooled"]
    rows = []
    for phase, label in (("idle", "nothing starting"), ("starting", "while B starts")):
        gw, direct = pool[phase]["gateway"], pool[phase]["direct"]
        rows.append([label, gw["n"], fmt(direct, 3), fmt(gw, 3), f"{gw['p99']:.3f}", fmt(sg[f"{phase}_added_ms"], 3)])
    how = (f"fake engine, B with `--fake-load-delay {sg['load_delay_s']:g}`" if sg["engine"] == "fake"
           else "real llama-server, B's real load")
    samples = sg["samples"]
    return (f"### {sg['engine']} engine\n\n{how}; {sg['rounds']} rounds; B's start as the benchmark saw it (load "
            f"sent to load answered): {fmt(sg['b_start_s'], 3)} s. Pairs kept: {samples['idle']} idle, "
            f"{samples['starting']} while B started (dropped: {samples['dropped_idle']} idle, "
            f"{samples['dropped_starting']} during which B's start ended).\n\n"
            + _table(["A's small request", "pairs", "direct ms (all pairs)", "gateway ms (all pairs)", "gateway p99 ms",
                      "added ms (per round)"], rows)
            + f"\nPer round, starting - idle: gateway **{fmt(sg['gateway_more_ms'], 3)} ms** (the target's figure); "
            f"direct {fmt(sg['direct_more_ms'], 3)} ms (the engine itself, sharing the machine with B's start); "
            f"gateway's own part (added while starting - added idle) {fmt(sg['added_more_ms'], 3)} ms.\n"
            + _starting_cpu(sg))


def _starting_cpu(sg: dict[str, Any]) -> str:
    cpu = sg.get("gateway_cpu_ms_per_pair")
    if not cpu:
        return ""
    text = (f"\nGateway CPU time over a phase per pair sent (psutil; its request work plus whatever else it does "
            f"meanwhile): idle {fmt(cpu['idle'], 3)} ms, while B starts {fmt(cpu['starting'], 3)} ms")
    if sg.get("readiness_probes_per_start") is not None:
        text += f"; the gateway probed B's `/health` {sg['readiness_probes_per_start']:g} times per start"
    return text + ".\n"


def _memory_md(cc: dict[str, Any]) -> str:
    m = cc["memory"]
    rows = [["idle, no engine", m.get("idle_no_engine_mb")], ["idle, engine loaded", m.get("idle_engine_loaded_mb")],
            [f"under {m.get('load_clients')} streaming clients: median", m.get("median_under_load_mb")],
            [f"under {m.get('load_clients')} streaming clients: peak", m.get("peak_under_load_mb")],
            ["after the load", m.get("after_load_mb")]]
    return "Gateway process RSS (psutil), MB.\n\n" + _table(["", "RSS MB"], rows)


def _blockers(data: dict[str, Any]) -> str:
    """For each target not met, the measured parts that stand in the way."""
    out = []
    b = data["benchmarks"]
    for t in data["targets"]:
        if t["met"] is not False:
            continue
        line = f"- **{t['benchmark']}: {t['target']}** — measured {t['shown']}."
        if t["benchmark"].startswith("1. switch"):
            engine = "real" if "real" in t["benchmark"] else "fake"
            sw = b[f"switch_{engine}"]
            kind = next(k for k, label in KIND_LABEL.items() if label in t["target"])
            d, g = sw["direct"][kind], sw["gateway"][kind]
            line += (f" Of that, the old engine's own stop (SIGTERM to exit, measured directly) is "
                     f"{fmt(d['stop_ms'])} ms; without it the gateway adds {fmt(g['added_excl_stop_ms'])} ms; "
                     f"against the same switch done by hand it adds {fmt(g['vs_direct_ms'])} ms.")
            orch = g.get("orchestration_ms")
            if orch:
                line += (f" Taking the engine's own load time (its log clock) out of both sides, the gateway's "
                         f"orchestration costs {orch['added']:.1f} ms more than doing it by hand.")
            logged = g.get("gateway_log_ms")
            if logged:
                line += (f" The gateway's own log of these switches: stop {fmt(logged['stop_ms'])} ms, spawn to ready "
                         f"{fmt(logged['spawn_to_ready_ms'])} ms (direct: {fmt(d['spawn_to_healthy_ms'])} ms), its own "
                         f"work besides {fmt(logged['own_ms'])} ms.")
            if kind == "variant_switch":
                line += " A variant switch also counts the prompt twice (on the small engine, then on the large one)."
        elif t["benchmark"].startswith("3. overhead"):
            ov = b["overhead"]
            line += (f" The gateway spends {ov['gateway_cpu_ms_per_request']:.2f} ms of CPU per such request; its "
                     f"floor (GET /health) adds {fmt(ov['added_health_ms']['median'], 3)} ms; the exact count it "
                     f"makes per request costs the engine {fmt(ov['count_direct_ms']['median'], 3)} ms straight to it "
                     "on a kept-alive connection, as the gateway now sends it; the fake engine answers it and the "
                     "request one after the other (llama-server counts on its HTTP threads, beside the generation).")
        elif t["benchmark"].startswith("7. alternation"):
            al = b["alternate_" + ("real" if "real" in t["benchmark"] else "fake")]
            line += (f" Gateway medians: single {fmt(al['single']['gateway_ms'], 3)} ms, alternating "
                     f"{fmt(al['alternating']['gateway_ms'], 3)} ms; direct: {fmt(al['single']['direct_ms'], 3)} and "
                     f"{fmt(al['alternating']['direct_ms'], 3)} ms. Engine starts in the gateway log: "
                     f"{al['engine_starts']['gateway_log']}.")
        elif t["benchmark"].startswith("8. while another starts"):
            sg = b["starting_" + ("real" if "real" in t["benchmark"] else "fake")]
            line += (f" Of that, the engine itself (direct requests to the same process, same moments) is "
                     f"{fmt(sg['direct_more_ms'], 2)} ms slower while the other engine starts; the gateway's own part "
                     f"(added while starting - added idle) is {fmt(sg['added_more_ms'], 2)} ms.")
        elif t["benchmark"].startswith("2. streaming"):
            st = b["streaming"]
            line += (f" The gateway spends {fmt(st['gateway']['gateway_cpu_us_per_chunk'])} µs of CPU per chunk, the "
                     f"engine {fmt(st['gateway']['engine_cpu_us_per_chunk'])} µs; on 2 cores shared by engine, "
                     "gateway and client that CPU is throughput.")
        out.append(line)
    if not out:
        return "All targets met in this run.\n"
    return "\n".join(out) + "\n"


def write(data: dict[str, Any], report_dir: Path, suffix: str = "") -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    b = data["benchmarks"]
    plots = make_plots(data, report_dir, suffix)
    md = ["# llmgw benchmark results\n",
          "Generated by `python -m benchmarks` (method: [README.md](README.md)). Every figure is measured in the "
          "same run side by side with the direct path; `a [b, c]` = median [min, max] over repeats or samples. "
          "The machine is shared: see the load lines below.\n",
          "## Machine\n", _machine(data), "## Targets\n"]
    rows = [[t["benchmark"], t["target"], t["shown"], {True: "met", False: "**not met**", None: "-"}[t["met"]]]
            for t in data["targets"]]
    md.append(_table(["benchmark", "target", "measured", ""], rows))
    md.append("Switch targets follow the issue's formula (latency - direct spawn-to-healthy - direct first request), "
              "so the engine's own start-to-start variance lands in them, in both directions; for the real engine "
              "the orchestration figure (engine load time taken from the engine's own log on both sides) shows the "
              "gateway's part without that noise.\n")
    if data.get("skipped"):
        md.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items()) + "\n")
    if data.get("errors"):
        md.append("**Errors:** " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items()) + "\n")
    md.append("## What stands in the way\n")
    md.append(_blockers(data))
    if FINDINGS.exists():
        md.append("\n" + FINDINGS.read_text().strip() + "\n")
    if b.get("switch_fake") or b.get("switch_real"):
        md.append("## 1. Switch time\n")
        md.append("Added = latency - direct spawn→healthy - direct first request (medians; the old engine's stop is "
                  "in it). Added excl. stop also takes off the direct stop time. Vs direct = latency - the direct "
                  "end-to-end switch.\n")
        for key in ("switch_fake", "switch_real"):
            if b.get(key):
                md.append(_switch_md(b[key]))
        if "switch" in plots:
            md.append(f"![switch time breakdown]({plots['switch']})\n")
    if b.get("streaming"):
        md += ["## 2. Streaming throughput\n", _streaming_md(b["streaming"])]
    if b.get("overhead"):
        md += ["## 3. Per-request overhead\n", _overhead_md(b["overhead"])]
    if b.get("counting"):
        md += ["## 4. Token counting cost\n", _counting_md(b["counting"])]
        if "counting" in plots:
            md.append(f"![counting cost]({plots['counting']})\n")
    if b.get("concurrency"):
        md += ["## 5. Concurrency\n", _concurrency_md(b["concurrency"])]
        if "concurrency" in plots:
            md.append(f"![concurrency]({plots['concurrency']})\n")
        md += ["## 6. Memory\n", _memory_md(b["concurrency"])]
    alternates = [b[k] for k in ("alternate_fake", "alternate_real") if b.get(k)]
    if alternates:
        md.append("## 7. Alternating between two loaded models\n")
        md.append("A gateway with `max_engines = 2` and models A and B, both loaded before anything is measured. "
                  "(a) single: small non-streamed requests to A only; (b) alternating: the same requests to A, B, A, "
                  "B...; the two blocks alternate (order flipped between repeats). Each gateway request is paired with "
                  "the same request straight to the engine process that serves it. Added = gateway median - direct "
                  "median per block; figures over repeats.\n")
        md += [_alternate_md(al) for al in alternates]
    startings = [b[k] for k in ("starting_fake", "starting_real") if b.get(k)]
    if startings:
        md.append("## 8. A loaded model while another starts\n")
        md.append(STARTING_METHOD)
        md += [_starting_md(sg) for sg in startings]
    if "multi" in plots:
        md.append(f"![several engines]({plots['multi']})\n")
    for name, module in MODULES.items():
        if b.get(name):
            md += [f"## {module.TITLE}\n", module.markdown(b[name])]
    path = report_dir / f"RESULTS{suffix}.md"
    path.write_text("\n".join(md))
    return path


# --------------------------------------------------------------------------- plots


def make_plots(data: dict[str, Any], report_dir: Path, suffix: str) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    b = data["benchmarks"]
    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fname = f"{name}{suffix}.png"
        fig.tight_layout()
        fig.savefig(report_dir / fname, dpi=80)
        plt.close(fig)
        made[name] = fname

    switches = [(k, b[k]) for k in ("switch_fake", "switch_real") if b.get(k)]
    if switches:
        fig, axes = plt.subplots(1, len(switches), figsize=(6 * len(switches), 3.8), squeeze=False)
        colors = {"engine stop": "#999999", "spawn→healthy": "#4c72b0", "first request": "#55a868",
                  "by-hand rest": "#dd8452", "latency (up to the direct one)": "#c9c9c9",
                  "more than direct": "#c44e52"}
        seen: set[str] = set()
        for ax, (_, sw) in zip(axes[0], switches, strict=True):
            rows: list[tuple[str, list[tuple[str, float]]]] = []
            for kind in ("model_switch", "variant_switch", "cold"):
                d = sw["direct"].get(kind)
                if not d:
                    continue
                stop, spawn, req, total = (_v(d[k]) or 0.0 for k in ("stop_ms", "spawn_to_healthy_ms", "request_ms",
                                                                      "total_ms"))
                rows.append((f"direct: {KIND_LABEL[kind]}", [("engine stop", stop), ("spawn→healthy", spawn),
                                                             ("first request", req),
                                                             ("by-hand rest", max(total - stop - spawn - req, 0))]))
                for path in ("gateway", "router"):
                    latency = _v(sw.get(path, {}).get(kind, {}).get("latency_ms"))
                    if latency is not None:
                        rows.append((f"{path}: {KIND_LABEL[kind]}",
                                     [("latency (up to the direct one)", min(latency, total)),
                                      ("more than direct", max(latency - total, 0))]))
            for y, (_, segments) in enumerate(rows):
                left = 0.0
                for name, width in segments:
                    label = None if name in seen else name
                    seen.add(name)
                    ax.barh(y, width, left=left, color=colors[name], label=label)
                    left += width
            ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("ms (medians)", fontsize=7)
            ax.set_title(f"switch latency, {sw['engine']} engine", fontsize=9)
        fig.legend(loc="lower center", ncol=6, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fname = f"switch{suffix}.png"
        fig.savefig(report_dir / fname, dpi=80)
        plt.close(fig)
        made["switch"] = fname
    cc = b.get("concurrency")
    if cc:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
        n = [r["clients"] for r in cc["levels"]]
        for key, label in (("direct_wall_ms", "direct"), ("gateway_wall_ms", "gateway")):
            med = [r[key]["median"] for r in cc["levels"]]
            err = [[m - r[key]["min"] for m, r in zip(med, cc["levels"], strict=True)],
                   [r[key]["max"] - m for m, r in zip(med, cc["levels"], strict=True)]]
            ax1.errorbar(n, med, yerr=err, marker="o", capsize=3, label=label)
        ax1.set_xlabel("concurrent streaming clients")
        ax1.set_ylabel("wall time ms")
        ax1.legend(fontsize=7)
        ratio = [r["wall_ratio"]["median"] for r in cc["levels"]]
        ax2.plot(n, ratio, marker="o", color="#c44e52")
        ax2.axhline(1.2, ls="--", color="gray", lw=1)
        ax2.text(n[0], 1.21, "target at 16 clients", fontsize=7, color="gray")
        ax2.set_xlabel("concurrent streaming clients")
        ax2.set_ylabel("gateway / direct wall time")
        save(fig, "concurrency")
    alternates = [b[k] for k in ("alternate_fake", "alternate_real") if b.get(k)]
    startings = [b[k] for k in ("starting_fake", "starting_real") if b.get(k)]
    if alternates or startings:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))

        def bars(ax: Any, groups: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> None:
            width = 0.8 / max(len(series) for _, series in groups)
            for g, (_, series) in enumerate(groups):
                for i, (label, sp) in enumerate(series):
                    med = sp["median"]
                    ax.bar(g + i * width, med, width, yerr=[[med - sp["min"]], [sp["max"] - med]], capsize=3,
                           color=f"C{i}", label=label if g == 0 else None)
            ax.set_xticks([g + width * (len(s) - 1) / 2 for g, (_, s) in enumerate(groups)],
                          [name for name, _ in groups], fontsize=8)
            ax.axhline(0, color="black", lw=0.5)
            ax.legend(fontsize=7)

        if alternates:
            bars(ax1, [(f"{al['engine']} engine", [("(a) single model", al["single"]["added_ms"]["median"]),
                                                   ("(b) alternating A, B", al["alternating"]["added_ms"]["median"])])
                       for al in alternates])
        ax1.set_ylabel("gateway - direct, ms (median per block)", fontsize=7)
        ax1.set_title("7. added latency, two loaded models", fontsize=9)
        if startings:
            bars(ax2, [(f"{sg['engine']} engine", [("gateway (target)", sg["gateway_more_ms"]),
                                                   ("direct (the engine)", sg["direct_more_ms"]),
                                                   ("gateway's own part", sg["added_more_ms"])])
                       for sg in startings])
            ax2.axhline(5, ls="--", color="gray", lw=1)
        ax2.set_ylabel("while B starts - idle, ms (per round)", fontsize=7)
        ax2.set_title("8. request to A while B starts", fontsize=9)
        save(fig, "multi")
    ct = b.get("counting")
    if ct:
        fig, ax = plt.subplots(figsize=(5, 3))
        toks = [r["prompt_tokens"] for r in ct["sizes"]]
        for key, label in (("direct_ms", "direct input_tokens"), ("gateway_ms", "through the gateway")):
            ax.plot(toks, [r[key]["median"] for r in ct["sizes"]], marker="o", label=label)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("ms per request")
        ax.set_title("exact token count cost (real engine)", fontsize=9)
        ax.legend(fontsize=7)
        save(fig, "counting")
    return made


# --------------------------------------------------------------------------- comparison


def headlines(data: dict[str, Any]) -> dict[str, float]:
    """The figures worth comparing between runs (name -> median)."""
    out: dict[str, float] = {}
    b = data["benchmarks"]
    for engine in ("fake", "real"):
        sw = b.get(f"switch_{engine}")
        for path in ("gateway", "router"):
            for kind, g in (sw or {}).get(path, {}).items():
                out[f"switch_{engine}.{path}.{kind}.latency_ms"] = g["latency_ms"]["median"]
                out[f"switch_{engine}.{path}.{kind}.added_ms"] = g["added_ms"]["median"]
    if b.get("streaming"):
        st = b["streaming"]
        out["streaming.ratio"] = st["ratio_chunks_per_s"]["median"]
        out["streaming.gateway_chunks_per_s"] = st["gateway"]["chunks_per_s"]["median"]
        out["streaming.added_us_per_chunk"] = st["added_us_per_chunk"]["median"]
        out["streaming.gateway_cpu_us_per_chunk"] = st["gateway"]["gateway_cpu_us_per_chunk"]["median"]
    if b.get("overhead"):
        ov = b["overhead"]
        for name in ("nonstream", "stream_ttft", "health"):
            out[f"overhead.added_{name}_median_ms"] = ov[f"added_{name}_ms"]["median"]["median"]
            out[f"overhead.added_{name}_p99_ms"] = ov[f"added_{name}_ms"]["p99"]["median"]
        out["overhead.gateway_cpu_ms_per_request"] = ov["gateway_cpu_ms_per_request"]
    if b.get("counting"):
        for r in b["counting"]["sizes"]:
            out[f"counting.{r['target_tokens']}.direct_ms"] = r["direct_ms"]["median"]
            out[f"counting.{r['target_tokens']}.gateway_ms"] = r["gateway_ms"]["median"]
    if b.get("concurrency"):
        for r in b["concurrency"]["levels"]:
            out[f"concurrency.{r['clients']}.wall_ratio"] = r["wall_ratio"]["median"]
        for k, v in b["concurrency"]["memory"].items():
            if isinstance(v, float):
                out[f"memory.{k}"] = v
    for engine in ("fake", "real"):
        al = b.get(f"alternate_{engine}")
        if al:
            for mode in ("single", "alternating"):
                out[f"alternate_{engine}.{mode}.added_ms"] = al[mode]["added_ms"]["median"]["median"]
            out[f"alternate_{engine}.difference_ms"] = al["difference_ms"]["median"]
        sg = b.get(f"starting_{engine}")
        if sg:
            for key in ("gateway_more_ms", "direct_more_ms", "added_more_ms"):
                out[f"starting_{engine}.{key}"] = sg[key]["median"]
    for name, module in MODULES.items():
        if b.get(name):
            out.update(module.headlines(b[name]))
    return {k: v for k, v in out.items() if v is not None}


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    a, b = headlines(old), headlines(new)
    lines = [f"old: {old['meta']['started']} {old['meta']['git']} ({old['meta']['mode']})",
             f"new: {new['meta']['started']} {new['meta']['git']} ({new['meta']['mode']})", "",
             f"{'figure':<52} {'old':>10} {'new':>10} {'change':>9}"]
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        change = f"{(y - x) / abs(x) * 100:+.0f}%" if x not in (None, 0) and y is not None else ""
        lines.append(f"{key:<52} {x if x is not None else '-':>10} {y if y is not None else '-':>10} {change:>9}")
    return "\n".join(lines)


def headline_text(data: dict[str, Any]) -> str:
    lines = ["", "target                                                         measured            result"]
    for t in data["targets"]:
        res = {True: "met", False: "NOT MET", None: "-"}[t["met"]]
        lines.append(f"{(t['benchmark'] + ': ' + t['target'])[:62]:<62} {t['shown'][:19]:<19} {res}")
    for name, err in data.get("errors", {}).items():
        lines.append(f"ERROR in {name}: {err}")
    return "\n".join(lines)


def profile_summaries(work: Path, out: Path, top: int = 30) -> None:
    """Each gateway's cProfile dump -> out/profile-NAME.txt (top functions by own and cumulative time)."""
    for prof in sorted(work.glob("*.prof")):
        buf = io.StringIO()
        stats = pstats.Stats(str(prof), stream=buf)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        (out / f"profile-{prof.stem}.txt").write_text(buf.getvalue())
        (out / prof.name).write_bytes(prof.read_bytes())
