"""Command line: run the suite, write results.json, RESULTS.md and the plots."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.common import Ctx
from benchmarks.concurrency import ConcurrencyParams
from benchmarks.counting import CountParams
from benchmarks.harness import ROOT, kill_all, load_snapshot, machine_info, real_engine_files
from benchmarks.multi import AlternateParams, StartingParams
from benchmarks.overhead import OverheadParams
from benchmarks.peers import DecisionParams, PeerLatencyParams, PoolSimParams
from benchmarks.router import RouterParams
from benchmarks.rpc import RpcParams
from benchmarks.stream_fast import FastStreamParams
from benchmarks.streaming import StreamParams
from benchmarks.swapback import SwapbackParams
from benchmarks.switch import SwitchParams

HERE = Path(__file__).resolve().parent
NAMES = report.NAMES


@dataclass
class Plan:
    switch_fake: SwitchParams = field(default_factory=lambda: SwitchParams(rounds=16))
    switch_real: SwitchParams = field(default_factory=lambda: SwitchParams(rounds=7))
    streaming: StreamParams = field(default_factory=lambda: StreamParams(tokens=5000, repeats=15))
    overhead: OverheadParams = field(default_factory=lambda: OverheadParams(requests=400, repeats=3))
    counting: CountParams = field(default_factory=lambda: CountParams(repeats=9))
    concurrency: ConcurrencyParams = field(default_factory=lambda: ConcurrencyParams(repeats=5))
    alternate_fake: AlternateParams = field(default_factory=lambda: AlternateParams(requests=300, repeats=5))
    alternate_real: AlternateParams = field(default_factory=lambda: AlternateParams(requests=40, repeats=5, warmup=6))
    starting_fake: StartingParams = field(default_factory=lambda: StartingParams(rounds=6, idle_pairs=300))
    starting_real: StartingParams = field(default_factory=lambda: StartingParams(rounds=14, idle_pairs=7))
    stream_fast: FastStreamParams = field(default_factory=lambda: FastStreamParams(chunks=10000, repeats=15))
    swapback: SwapbackParams = field(default_factory=lambda: SwapbackParams(rounds=3))
    router_real: RouterParams = field(default_factory=lambda: RouterParams(rounds=7, small_pairs=20, launches=2))
    rpc_real: RpcParams = field(default_factory=lambda: RpcParams(rounds=3))
    peer_latency: PeerLatencyParams = field(default_factory=PeerLatencyParams)
    routing_decision: DecisionParams = field(default_factory=DecisionParams)
    pool_sim: PoolSimParams = field(default_factory=PoolSimParams)


FULL = Plan()
QUICK = Plan(
    switch_fake=SwitchParams(rounds=2),
    switch_real=SwitchParams(rounds=1),
    streaming=StreamParams(tokens=5000, repeats=2),
    overhead=OverheadParams(requests=100, repeats=2, cpu_requests=100),
    counting=CountParams(repeats=3),
    concurrency=ConcurrencyParams(repeats=1),
    alternate_fake=AlternateParams(requests=60, repeats=2),
    alternate_real=AlternateParams(requests=8, repeats=2, warmup=4),
    starting_fake=StartingParams(rounds=2, idle_pairs=100),
    starting_real=StartingParams(rounds=2, idle_pairs=4),
    stream_fast=FastStreamParams(chunks=10000, repeats=3, hangups=2),
    swapback=SwapbackParams(rounds=1),
    router_real=RouterParams(rounds=1, small_pairs=6, launches=1),
    rpc_real=RpcParams(rounds=1, tokens=64),
    peer_latency=PeerLatencyParams(requests=100, repeats=2),
    routing_decision=DecisionParams(iterations=2000, repeats=3),
    pool_sim=PoolSimParams(requests=600),
)
# The smoke test's plan: a few requests of each fake-engine benchmark.
SMOKE = Plan(
    switch_fake=SwitchParams(rounds=1),
    streaming=StreamParams(tokens=300, repeats=1),
    overhead=OverheadParams(requests=5, repeats=1, cpu_requests=5),
    concurrency=ConcurrencyParams(clients=(1, 2), tokens=20, token_delay=0.001, repeats=1),
    alternate_fake=AlternateParams(requests=6, repeats=2, warmup=2),
    starting_fake=StartingParams(rounds=2, idle_pairs=5, load_delay=0.5),
    stream_fast=FastStreamParams(chunks=300, repeats=1, hangups=1),
    swapback=SwapbackParams(rounds=1, turns=2, router=False, engine="fake"),
    peer_latency=PeerLatencyParams(requests=5, repeats=1),
    routing_decision=DecisionParams(iterations=50, repeats=1),
    pool_sim=PoolSimParams(nodes=8, models=4, requests=40, clients=4, cold_start=0.05, check_interval=0.5),
)


async def run_suite(ctx: Ctx, plan: Plan, names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the named benchmarks one after the other; an error in one is recorded, the rest still run."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in names:
        ctx.log(f"== {name}")
        t0 = time.monotonic()
        try:
            results[name] = await report.module_of(name).run(ctx, name, getattr(plan, name))
            results[name]["duration_s"] = round(time.monotonic() - t0, 1)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            ctx.log(f"{name} FAILED: {errors[name]}\n{traceback.format_exc()}")
        finally:
            kill_all()  # nothing of one benchmark may leak into the next
    return results, errors


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="llmgw benchmarks (see README.md)")
    parser.add_argument("--quick", action="store_true", help="short run (~2 min), written under benchmarks/out/")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument("--no-real", action="store_true", help="skip the real llama-server benchmarks")
    parser.add_argument("--profile", action="store_true", help="run every gateway under cProfile (see README)")
    parser.add_argument(
        "--overhead-fake-flags",
        metavar="FLAGS",
        help="extra fake-engine flags for the overhead benchmark, e.g. --overhead-fake-flags='--fake-tokens 8' "
        "(--fake-count-process is always added)",
    )
    parser.add_argument("--out", type=Path, help="directory for results JSON (default benchmarks/out)")
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="where RESULTS.md and the PNGs go (default: benchmarks/ for a full run of everything, "
        "else the --out directory)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (configs, logs)")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("OLD.json", "NEW.json"),
        help="print the headline figures of two results files side by side, run nothing",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="only rewrite RESULTS.md and the plots from a results file (into --report-dir, default benchmarks/)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        print(report.compare(old, new))
        return 0
    if args.render:
        data = json.loads(args.render.read_text())
        data["targets"] = report.targets(data)
        suffix = "-quick" if data["meta"]["mode"] == "quick" else ""
        print(report.write(data, args.report_dir or HERE, suffix))
        return 0
    plan = QUICK if args.quick else FULL
    if args.overhead_fake_flags:
        plan = replace(plan, overhead=replace(plan.overhead, fake_flags=tuple(shlex.split(args.overhead_fake_flags))))
    names = list(NAMES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    out = args.out or HERE / "out"
    out.mkdir(parents=True, exist_ok=True)
    complete = not args.only and not args.no_real and not args.quick and not args.profile
    report_dir = args.report_dir or (HERE if complete else out)
    mode = "quick" if args.quick else "full"

    skipped: dict[str, str] = {}
    files, why = (None, "--no-real") if args.no_real else real_engine_files()
    if files is None:
        for name in report.NEEDS_REAL:
            if name in names:
                names.remove(name)
                skipped[name] = f"real engine unavailable: {why}"
        complete = False
        report_dir = args.report_dir or out

    work = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    ctx = Ctx(workdir=work, real=files, profile=args.profile)
    started = datetime.datetime.now(datetime.UTC)
    ctx.log(f"work directory {work}; measuring the machine")
    meta: dict[str, Any] = {
        "mode": mode,
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "git": _git(),
        "machine": machine_info(files),
        "load_before": load_snapshot(),
        "plan": {name: asdict(getattr(plan, name)) for name in names},
    }
    try:
        results, errors = asyncio.run(run_suite(ctx, plan, names))
    finally:
        kill_all()
    meta["load_after"] = load_snapshot()
    meta["duration_s"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
    data = {"meta": meta, "benchmarks": results, "skipped": skipped, "errors": errors}
    data["targets"] = report.targets(data)
    suffix = "-quick" if mode == "quick" else "" if complete else "-partial"
    json_path = out / f"results{suffix}.json"
    json_path.write_text(json.dumps(data, indent=1))
    md_path = report.write(data, report_dir, suffix)
    if args.profile:
        report.profile_summaries(work, out)
    if args.keep_work or errors:
        ctx.log(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ctx.log(f"wrote {json_path} and {md_path} in {meta['duration_s']} s")
    print(report.headline_text(data))
    return 1 if errors else 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
