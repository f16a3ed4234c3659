"""LLM figures against the simulator's ground truth, from real `locust` processes on loopback."""

import csv
import re
from pathlib import Path

import pytest

from bagstress_locust.tokens import estimate_prompt_tokens, estimate_tokens

from .conftest import replay

TTFT_MS, ITL_MS, TOKENS = 200.0, 20.0, 20
E2E_MS = TTFT_MS + (TOKENS - 1) * ITL_MS


def light_load(tmp_path: Path, simulator, *extra: str):
    return replay(tmp_path, simulator.base_url, *extra, users=2, seconds=6)


def console_number(output: str, pattern: str) -> float:
    match = re.search(pattern, output)
    assert match, pattern
    return float(match.group(1).replace(",", ""))


def test_figures_match_the_simulator_truth(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", str(TTFT_MS / 1000), "--itl", str(ITL_MS / 1000), "--output-tokens", "20")
    run = light_load(tmp_path, simulator, "--csv", "run")
    assert run.returncode == 0, run.output
    truth = simulator.stats()
    report = run.summary()

    # Counts and token totals are exact.
    assert report["messages"]["total"] == truth["completions_served"] > 10
    assert report["messages"]["failed"] == 0
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["tokens"]["output"] == truth["completion_tokens_served"] == TOKENS * truth["completions_served"]
    assert report["tokens"]["estimated"] is False
    assert {m: f["messages"] for m, f in report["models"].items()} == truth["served_by_model"]
    assert report["itl_ms"]["count"] == (TOKENS - 1) * truth["completions_served"]
    assert report["conversations"]["total"] >= 1 and report["conversations"]["failed"] == 0

    # Timing at light load is within 2% of the truth: what the simulator really sent, and when.
    served = truth["served_timing"]
    assert served["streams"] == truth["completions_served"]
    assert served["ttft_ms_mean"] == pytest.approx(TTFT_MS, rel=0.01)  # the event loop's own punctuality
    assert report["ttft_ms"]["p50"] == pytest.approx(served["ttft_ms_mean"], rel=0.02)
    assert report["latency_ms"]["p50"] == pytest.approx(served["e2e_ms_mean"], rel=0.02)
    assert report["latency_ms"]["p50"] == pytest.approx(E2E_MS, rel=0.02)
    assert report["itl_ms"]["p50"] == pytest.approx(ITL_MS, rel=0.02)
    assert report["tpot_ms"]["p50"] == pytest.approx(ITL_MS, rel=0.02)

    # The console report shows the same figures as the JSON.
    out = run.output
    assert console_number(out, r"MESSAGES\n  Total: ([\d,]+)") == report["messages"]["total"]
    assert console_number(out, r"Input: ([\d,]+)") == report["tokens"]["input"]
    assert console_number(out, r"Output: ([\d,]+)") == report["tokens"]["output"]
    assert console_number(out, r"  TTFT +[\d,]+ +[\d.,]+ +[\d.,]+ +([\d.,]+)") == pytest.approx(
        report["ttft_ms"]["p50"], abs=0.05
    )
    assert "BAGSTRESS LLM SUMMARY REPORT" in out and "LLM model" in out  # summary and periodic table

    # --csv also writes the LLM files next to Locust's.
    with open(tmp_path / "run_llm_stats.csv", newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    assert int(rows["Aggregated"]["Messages"]) == report["messages"]["total"]
    assert int(rows["Aggregated"]["Output tokens"]) == report["tokens"]["output"]
    assert sum(int(rows[m]["Messages"]) for m in report["models"]) == report["messages"]["total"]
    with open(tmp_path / "run_llm_stats_history.csv", newline="") as file:
        history = list(csv.DictReader(file))
    assert len(history) >= 2
    assert int(history[-1]["Total messages"]) <= report["messages"]["total"]


def test_server_without_usage_gives_estimated_tokens(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "7", "--no-usage",
                                "--record-requests")  # fmt: skip
    run = light_load(tmp_path, simulator)
    assert run.returncode == 0, run.output
    report = run.summary()
    requests = simulator.requests()
    assert report["messages"]["total"] == len(requests) == simulator.stats()["completions_served"]
    assert report["tokens"]["estimated"] is True
    reply = "lorem ipsum dolor sit amet consectetur adipiscing "  # the simulator's 7-token reply
    assert report["tokens"]["output"] == len(requests) * estimate_tokens(reply)
    assert report["tokens"]["input"] == sum(estimate_prompt_tokens(r["messages"]) for r in requests)
    assert "TOKENS (estimated" in run.output
