"""Locust as a library: examples/as_a_library.py, run as its own process, reads the same true figures."""

import json
import subprocess
import sys

from .conftest import ROOT, clean_env


def test_the_library_example_reports_the_simulator_truth(start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.02", "--itl", "0.002", "--output-tokens", "5")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "as_a_library.py"), simulator.base_url],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    truth = simulator.stats()
    assert report["messages"]["total"] == truth["completions_served"] > 0
    assert report["tokens"]["output"] == truth["completion_tokens_served"]
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["conversations"]["total"] > 0
    assert set(report["load_generator"]["workers"]) == {"local"}  # the self-check ran in this process
