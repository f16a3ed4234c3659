"""The load generator's own cost and error, per engine, against reference clients and the simulator's truth.

    uv run python bench/run.py            # the full bench, ~8 minutes on a 2-core machine
    uv run python bench/run.py --smoke    # a few seconds: checks that every part works, measures nothing

The simulator runs pinned to core 0 (TTFT 200 ms, 20 ms between tokens, 20 tokens); each load
generator runs alone, pinned to core 1, with its users sending back to back (no think time), and
is measured over one window after a warm-up (see ``_harness.py``). Load generators:

* ``raw``: the bare reference, a gevent raw-socket loop (``reference.py --client raw``);
* ``lc-loop``: ``for chunk in ChatOpenAI(...).stream(messages)`` under gevent, nothing else
  (``reference.py --client langchain``);
* ``langchain``, ``fast``: a real ``locust`` run of this project (``locustfile.py`` with a
  measurement window), engine ``--client-engine langchain`` (the default) or ``fast``, as a user
  runs it: random conversations, models and temperatures;
* ``langchain-1``: the LangChain engine with one model and one temperature, the same work as
  ``lc-loop``, for the engine's own overhead.

Printed: a Markdown table (one row per load generator and user count) and the derived figures:
CPU per message and its ratio to ``raw``, our overhead over ``lc-loop``, RSS per user, capacity
per process. Errors are ``measured / truth - 1``, the truth being what the simulator measured of
its own sending in the same window. ``--json FILE`` keeps every raw figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _harness import ROOT, pinned, start_simulator

from bagstress_locust.selfcheck import threshold_ms

BENCH = Path(__file__).resolve().parent
ENGINES = ("raw", "lc-loop", "langchain", "fast")


def run_one(engine: str, users: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One load generator, pinned to core 1, measured over one window; its JSON figures."""
    spawn = args.spawn
    budget = spawn + args.warmup + args.window + 90
    if engine in ("raw", "lc-loop"):
        client = "raw" if engine == "raw" else "langchain"
        command = [
            *pinned(1), sys.executable, str(BENCH / "reference.py"), "--client", client, "--host", url,
            "--users", str(users), "--spawn", str(spawn), "--warmup", str(args.warmup), "--window", str(args.window),
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, timeout=budget, cwd=ROOT, env=child_env())
        if completed.returncode != 0 or not completed.stdout.strip():
            raise RuntimeError(f"{engine} at {users} users failed:\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as workdir:
        out = Path(workdir) / "window.json"
        env = child_env()
        env.update(BENCH_OUT=str(out), BENCH_WARMUP=str(args.warmup), BENCH_WINDOW=str(args.window))
        fixed = ["--model", "sim-small", "--temp-min", "0.7", "--temp-max", "0.7"] if engine == "langchain-1" else []
        command = [
            *pinned(1), sys.executable, "-m", "locust", "-f", str(BENCH / "locustfile.py"), "--headless",
            "-u", str(users), "-r", str(users / spawn), "-t", f"{int(budget)}s", "--stop-timeout", "0",
            "--think-time-scale", "0", "--client-engine", "fast" if engine == "fast" else "langchain",
            "--host", url, *fixed,
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, timeout=budget + 30, cwd=ROOT, env=env)
        if not out.exists():
            raise RuntimeError(f"{engine} at {users} users wrote no figures:\n{completed.stderr[-3000:]}")
        return json.loads(out.read_text())


def child_env() -> dict[str, str]:
    """Ours, minus anything that would point a run elsewhere, plus the simulator's pid for its CPU figure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "OPENAI_"))}
    env["BENCH_SIM_PID"] = str(SIMULATOR_PID[0])
    return env


SIMULATOR_PID = [0]


def error_percent(measured: float | None, truth: float | None) -> float | None:
    if measured is None or not truth:
        return None
    return (measured / truth - 1) * 100


def judged(figures: dict[str, Any]) -> bool:
    """Our processes judge themselves; a reference client is judged here by the same rule."""
    if figures.get("load_generator"):
        return bool(figures["load_generator"]["inflated"])
    lag, threshold = figures["lag"].get("p99"), threshold_ms(figures["ttft_ms"]["p50"])
    return lag is not None and threshold is not None and lag > threshold


def fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    raw_cpu = {r["users"]: r["figures"]["cpu_ms_per_message"] for r in results if r["engine"] == "raw"}
    lines = [
        "| engine | users | msg/s | chunks/s | CPU % | CPU ms/msg | × raw | TTFT p50 err % | TTFT p99 err % "
        "| E2E p50 err % | E2E p99 err % | lag p99 ms | inflated | conns/msg | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        f, truth = r["figures"], r["figures"]["truth"]
        cpu = f["cpu_ms_per_message"]
        ratio = cpu / raw_cpu[r["users"]] if cpu and raw_cpu.get(r["users"]) else None
        conns = f["connections"] / f["messages"] if f["messages"] else None
        lines.append(
            f"| {r['engine']} | {r['users']} | {fmt(f['messages_per_s'])} | {fmt(f['chunks_per_s'], 0)} "
            f"| {fmt(f['cpu_percent'])} | {fmt(cpu, 2)} | {fmt(ratio, 1)} "
            f"| {fmt(error_percent(f['ttft_ms']['p50'], truth['ttft_ms']), 1, True)} "
            f"| {fmt(error_percent(f['ttft_ms']['p99'], truth['ttft_ms']), 1, True)} "
            f"| {fmt(error_percent(f['e2e_ms']['p50'], truth['e2e_ms']), 1, True)} "
            f"| {fmt(error_percent(f['e2e_ms']['p99'], truth['e2e_ms']), 1, True)} "
            f"| {fmt(f['lag'].get('p99'), 1)} | {'yes' if judged(f) else 'no'} | {fmt(conns, 2)} | {f['errors']} |"
        )
    return "\n".join(lines)


def derived(results: list[dict[str, Any]], rss_users: int | None, low_users: int) -> list[str]:
    """The headline figures: overhead over the LangChain loop, RSS per user, capacity per process."""
    by = {(r["engine"], r["users"]): r["figures"] for r in results}
    lines = []
    for users in sorted({r["users"] for r in results if r["engine"] == "langchain-1"}):
        ours, loop = by.get(("langchain-1", users)), by.get(("lc-loop", users))
        if ours and loop and ours["cpu_ms_per_message"] and loop["cpu_ms_per_message"]:
            overhead = (ours["cpu_ms_per_message"] / loop["cpu_ms_per_message"] - 1) * 100
            lines.append(
                f"- LangChain engine over a bare ChatOpenAI.stream loop, {users} users, one model and temperature: "
                f"{ours['cpu_ms_per_message']:.2f} vs {loop['cpu_ms_per_message']:.2f} ms CPU per message "
                f"({overhead:+.0f}%; target <= +15%)"
            )
    for engine in ENGINES:
        points = [(users, f) for (e, users), f in by.items() if e == engine and f["cpu_percent"] > 0]
        if not points:
            continue
        users, busiest = max(points, key=lambda point: point[1]["messages_per_s"])
        share = busiest["cpu_percent"] / 100
        lines.append(
            f"- {engine}: at most {busiest['messages_per_s']:,.0f} messages/s and {busiest['chunks_per_s']:,.0f} "
            f"chunks/s measured ({users} users, {busiest['cpu_percent']:.0f}% CPU): "
            f"{busiest['messages_per_s'] / share:,.0f} messages/s and {busiest['chunks_per_s'] / share:,.0f} "
            "chunks/s per process at 100% of a core, if it scaled linearly"
        )
        if rss_users and (engine, rss_users) in by and (engine, low_users) in by:
            high, low = by[(engine, rss_users)]["rss_mb"], by[(engine, low_users)]["rss_mb"]
            per_user = (high - low) * 1024 / (rss_users - low_users)
            lines.append(
                f"  RSS {low:.0f} MB at {low_users} users, {high:.0f} MB at {rss_users}: {per_user:.0f} KB per user"
            )
    return lines


def versions() -> str:
    names = ("locust", "langchain-openai", "langchain-core", "openai", "httpx2", "gevent", "geventhttpclient")
    return ", ".join([f"python {platform.python_version()}", *(f"{name} {version(name)}" for name in names)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: every part once, tiny windows")
    parser.add_argument("--users", default="10,50,200,500", help="user counts for the latency sweep")
    parser.add_argument("--rss-users", type=int, default=1000, help="one more point for RSS and capacity; 0: none")
    parser.add_argument("--engines", default=",".join(ENGINES), help="load generators, of " + ", ".join(ENGINES))
    parser.add_argument("--overhead-users", type=int, default=50, help="users for the langchain-1 point; 0: none")
    parser.add_argument("--spawn", type=float, default=1.0, help="seconds over which users start")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the last start before measuring")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--json", help="write every raw figure to this file")
    args = parser.parse_args()
    ttft, itl, tokens = 0.2, 0.02, 20
    users = [int(u) for u in args.users.split(",") if u]
    if args.smoke:
        ttft, itl, tokens = 0.05, 0.005, 5
        users, args.rss_users, args.overhead_users = [4], 0, 4
        args.spawn, args.warmup, args.window = 0.2, 0.3, 1.0
    engines = [e for e in args.engines.split(",") if e]
    plan = [(engine, n) for n in users for engine in engines]
    if args.overhead_users and "langchain" in engines:
        plan.append(("langchain-1", args.overhead_users))
        if args.overhead_users not in users and "lc-loop" in engines:
            plan.append(("lc-loop", args.overhead_users))
    if args.rss_users:
        plan += [(engine, args.rss_users) for engine in engines]

    print(f"# bagstress-locust bench, {time.strftime('%Y-%m-%d %H:%M')}{' (smoke)' if args.smoke else ''}")
    print(f"{versions()}; {os.cpu_count()} cores; pinning: {'taskset' if pinned(1) else 'none (no taskset)'}")
    print(f"simulator: TTFT {ttft * 1000:.0f} ms, {itl * 1000:.0f} ms between tokens, {tokens} tokens; no think time")
    simulator, url = start_simulator(ttft, itl, tokens, core=0)
    SIMULATOR_PID[0] = simulator.pid
    results: list[dict[str, Any]] = []

    def measure(point: tuple[str, int]) -> dict[str, Any]:
        engine, n = point
        started = time.monotonic()
        figures = run_one(engine, n, url, args)
        print(f"  {engine:>11} {n:>5} users: {time.monotonic() - started:5.1f} s", file=sys.stderr, flush=True)
        return {"engine": engine, "users": n, "figures": figures}

    try:
        if args.smoke:  # nothing is measured: all at once, to check that every part works in a few seconds
            with ThreadPoolExecutor(max_workers=len(plan)) as pool:
                results = list(pool.map(measure, plan))
        else:  # one at a time: each load generator has core 1 to itself
            results = [measure(point) for point in plan]
    finally:
        simulator.terminate()
        simulator.communicate(timeout=10)
    print()
    print(table(results))
    print()
    for line in derived(results, args.rss_users or None, users[0]):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
