"""The LLM tab in Locust's web UI: a real `locust` process, driven from a real headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven by Playwright pointed at that
binary: Playwright's own browser downloads are never used. Everything runs on loopback.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CONVERSATIONS, LOCUST, clean_env
from .test_html_report import assert_charts_drawn, assert_rows_match_summary, llm_section
from .test_selfcheck import OVERLOADED_LOCUSTFILE, WARNING

SECRET = "sk-test-SECRET-123"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# The LLM tab's table as the page shows it: {row name: {column title: cell text}}.
READ_LLM_TABLE = """() => {
  const th = [...document.querySelectorAll("table th")].find(h => h.textContent.startsWith("TTFT p50"));
  if (!th) return null;
  const table = th.closest("table");
  const titles = [...table.querySelectorAll("thead th")].map(h => h.textContent.trim());
  const rows = {};
  for (const tr of table.querySelectorAll("tbody tr")) {
    const cells = [...tr.querySelectorAll("td")].map(td => td.textContent.trim());
    rows[cells[0]] = Object.fromEntries(titles.map((title, i) => [title, cells[i]]));
  }
  return rows;
}"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class WebLocust:
    """A `locust` process with its web UI on a free loopback port."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"locust-{self.port}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*LOCUST, "--web-host", "127.0.0.1", "--web-port", str(self.port), *args],
                cwd=workdir, env=env or clean_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._answers, f"the web UI at {self.url}")

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.output()
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):
                return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, **form: str) -> Any:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(self.url + path, data=data, timeout=30) as response:
            return json.load(response)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl+C, as a person would end it: Locust writes --html, then the plugin its reports."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_locust(tmp_path: Path) -> Iterator[Callable[..., WebLocust]]:
    started: list[WebLocust] = []

    def start(*args: str, env: dict[str, str] | None = None, workdir: Path = tmp_path) -> WebLocust:
        started.append(WebLocust(workdir, *args, env=env))
        return started[-1]

    yield start
    for locust in started:
        if locust.process.poll() is None:
            locust.process.kill()
        locust.process.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium context with a fresh profile; skips only where Chromium is not installed."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True,
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


def test_llm_tab_shows_the_runs_figures_live(tmp_path: Path, start_simulator, start_locust, browser) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10", "--api-key", SECRET)
    locust = start_locust(
        "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS), "--think-time-scale", "0",
        "--stop-timeout", "10", "--summary-json", "summary.json", "--csv", "run", "--html", "report.html",
        env=clean_env(OPENAI_API_KEY=SECRET),
    )  # fmt: skip
    page = browser.new_page()
    bodies: list[tuple[str, bytes]] = []  # every response the page received, to look for the key

    def record(route: Any) -> None:
        response = route.fetch()
        bodies.append((route.request.url, response.body()))
        route.fulfill(response=response)

    page.route("**/*", record)
    page.goto(locust.url + "/")

    # The start form has our options, with their defaults (and the run's --think-time-scale 0).
    form = page.locator("form")
    assert form.locator("input[name=conversationsDir]").input_value() == str(CONVERSATIONS)
    assert form.locator("input[name=thinkTimeScale]").input_value() == "0"
    assert form.locator("input[name=tempMin]").input_value() == "0.5"
    assert form.locator("input[name=tempMax]").input_value() == "1"
    assert form.locator("input[name=model]").input_value() == ""  # a random model per conversation
    assert form.locator("input[name=maxTokens]").input_value() == ""  # no limit
    assert SECRET not in page.content()

    form.locator("input[name=userCount]").fill("4")
    form.locator("input[name=spawnRate]").fill("4")
    form.get_by_role("button", name="Start").click()
    page.get_by_role("tab", name="LLM").click()

    # Live: the table's figures grow while the run goes on, and the charts appear under it.
    def aggregated_messages() -> int:
        table = page.evaluate(READ_LLM_TABLE)
        return int(table["Aggregated"]["Messages"]) if table and "Aggregated" in table else 0

    first = wait_until(aggregated_messages, "messages in the LLM tab")
    wait_until(lambda: aggregated_messages() > first, "the LLM tab to update without a reload")
    page.wait_for_function(  # two 2-s intervals drawn, at least: the charts grow as the run goes on
        """() => (document.querySelector("#bagstress-llm-charts svg[data-chart=output_tokens_per_s] polyline")
                  ?.getAttribute("points") ?? "").trim().split(" ").length >= 2""",
        timeout=15_000,
    )
    charts = page.locator("#bagstress-llm-charts svg")
    assert [charts.nth(i).get_attribute("data-chart") for i in range(charts.count())] == [
        "output_tokens_per_s", "messages_per_s", "ttft_ms", "e2e_ms",
    ]  # fmt: skip

    page.get_by_role("button", name="Stop").click()
    wait_until(lambda: locust.get("/stats/requests")["state"] == "stopped", "the run to stop")
    page.goto(locust.url + "/?tab=llm")  # the UI stops polling when a run stops: load its final figures
    page.wait_for_function(f"(({READ_LLM_TABLE})() || {{}}).Aggregated !== undefined")
    shown = page.evaluate(READ_LLM_TABLE)
    assert SECRET not in page.content() and SECRET not in page.evaluate("JSON.stringify(window.templateArgs)")

    page.get_by_role("tab", name="Download Data").click()
    downloaded = {}
    for title in (
        "Download LLM statistics CSV",
        "Download LLM statistics history CSV",
        "Download LLM load generator self-check CSV",
    ):
        with page.expect_download() as download:
            page.get_by_role("link", name=title, exact=True).click()
        downloaded[title] = Path(download.value.path()).read_bytes()
    ui_report = page.goto(locust.url + "/stats/report?theme=light").text()
    final = page.goto(locust.url + "/bagstress/llm").json()
    page.goto(locust.url + "/logs")  # the LOGS tab's source: its body is checked with the others below

    assert locust.interrupt() == 0, locust.output()
    report = json.loads((tmp_path / "summary.json").read_text())

    # The page showed the process's own final figures, within the table's rounding.
    assert_rows_match_summary(shown, report)
    assert final["summary"]["messages"] == report["messages"]
    assert final["rows"][-1]["name"] == "Aggregated" and final["rows"][-1]["messages"] == report["messages"]["total"]
    # The key was sent (the simulator requires it, and nothing failed) and reached no page or response.
    assert report["messages"]["failed"] == 0 and simulator.stats()["completions_served"] > 0
    assert len(bodies) > 10 and {url for url, _ in bodies} >= {locust.url + "/", locust.url + "/stats/requests"}
    leaks = [url for url, body in bodies if SECRET.encode() in body]
    assert not leaks, leaks
    assert all(SECRET.encode() not in body for body in downloaded.values())
    # Downloads are --csv's files; both reports (the UI's, and --html on Ctrl+C) have the LLM section.
    assert downloaded["Download LLM statistics CSV"] == (tmp_path / "run_llm_stats.csv").read_bytes()
    assert downloaded["Download LLM statistics history CSV"] == (tmp_path / "run_llm_stats_history.csv").read_bytes()
    self_check = (tmp_path / "run_llm_load_generator.csv").read_bytes()
    assert downloaded["Download LLM load generator self-check CSV"] == self_check
    assert self_check.decode().splitlines()[1].startswith("local,")  # this process measured itself
    with open(tmp_path / "run_llm_stats_history.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) >= 2  # a row per 2 s of the run
    for page_html in (ui_report, (tmp_path / "report.html").read_text(encoding="utf-8")):
        section = llm_section(page_html)
        assert_rows_match_summary(section.rows, report)
        assert_charts_drawn(section.charts)


def test_llm_tab_warns_when_the_load_generator_inflates_the_figures(
    tmp_path: Path, start_simulator, start_locust, browser
) -> None:
    simulator = start_simulator("--ttft", "0.2", "--itl", "0.02", "--output-tokens", "5")
    (tmp_path / "overloaded.py").write_text(OVERLOADED_LOCUSTFILE)
    locust = start_locust(
        "-f", "overloaded.py", "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS),
        "--think-time-scale", "0", "--client-engine", "fast", "--autostart", "-u", "3", "-r", "3",
        "--html", "report.html",
    )  # fmt: skip
    page = browser.new_page()
    page.goto(locust.url + "/?tab=llm")
    warning = page.locator("#bagstress-llm-charts .bagstress-warning")
    warning.wait_for(timeout=30_000)  # once the self-check's 2-s warm-up is over and a report has come in
    assert WARNING in warning.inner_text() and "--processes" in warning.inner_text()
    final = locust.get("/bagstress/llm")["summary"]["load_generator"]
    assert final["inflated"] is True and final["workers"]["local"]["inflated"] is True
    assert locust.interrupt() == 0, locust.output()
    report_html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert WARNING in report_html and 'class="bagstress-load-generator"' in report_html


def test_an_api_key_typed_in_the_form_is_used_and_never_shown(
    tmp_path: Path, start_simulator, start_locust, browser
) -> None:
    simulator = start_simulator("--ttft", "0.02", "--itl", "0.002", "--output-tokens", "5", "--api-key", SECRET)
    locust = start_locust(
        "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS), "--think-time-scale", "0",
        "--model", "sim-small",
    )  # fmt: skip  # no OPENAI_API_KEY: the form is the only place the key comes from
    page = browser.new_page()
    bodies: list[bytes] = []

    def record(route: Any) -> None:
        response = route.fetch()
        bodies.append(response.body())
        route.fulfill(response=response)

    page.route("**/*", record)
    page.goto(locust.url + "/")
    form = page.locator("form")
    key_field = form.locator("input[name=apiKey]")
    assert key_field.get_attribute("type") == "password" and key_field.input_value() == ""
    form.get_by_text("Custom parameters").click()  # our options are folded away under this heading
    key_field.fill(SECRET)
    form.locator("input[name=userCount]").fill("2")
    form.locator("input[name=spawnRate]").fill("2")
    form.get_by_role("button", name="Start").click()
    wait_until(lambda: simulator.stats()["completions_served"] >= 5, "messages sent with the typed key")
    page.get_by_role("button", name="Stop").click()
    wait_until(lambda: locust.get("/stats/requests")["state"] == "stopped", "the run to stop")
    page.goto(locust.url + "/")  # the UI as the next person to open it sees it (the form's defaults too)
    assert SECRET not in page.content() and SECRET not in page.evaluate("JSON.stringify(window.templateArgs)")
    assert simulator.stats()["rejected"] == {}  # every request carried the key
    assert all(SECRET.encode() not in body for body in bodies)
    assert SECRET not in locust.output()


def test_the_key_option_is_refused_on_the_command_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [*LOCUST, "--headless", "-t", "2s", "--api-key", SECRET, "--conversations-dir", str(CONVERSATIONS)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "--api-key is only for the web UI's form" in completed.stderr + completed.stdout


def test_master_ui_shows_the_workers_merged_figures(tmp_path: Path, start_simulator, start_locust) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10")
    master_port = str(free_port())
    master = start_locust(
        "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", master_port,
        "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS), "--think-time-scale", "0",
        "--stop-timeout", "3",
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", master_port],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        wait_until(lambda: master.get("/worker-count")["worker_count"] == 2, "two workers")
        assert master.post("/swarm", user_count="4", spawn_rate="4")["success"]
        wait_until(lambda: len(simulator.stats()["served_by_client"]) == 2, "both workers to send messages")
        assert master.post("/stop")["success"]
        wait_until(lambda: master.get("/stats/requests")["state"] == "stopped", "the run to stop")
        truth = simulator.stats()

        # Workers report every 3 s: wait for the last report, then every figure is the exact sum.
        def merged() -> dict[str, Any] | None:
            llm = master.get("/bagstress/llm")
            return llm if llm["summary"]["messages"]["total"] == truth["completions_served"] else None

        llm = wait_until(merged, "the master to have every worker's messages")
        tab = next(e for e in master.get("/stats/requests")["extended_stats"] if e["key"] == "llm")["data"]

        # A new run from the UI starts the LLM figures afresh, as Locust does its own.
        def workers_ready() -> bool:
            return [w["state"] for w in master.get("/stats/requests")["workers"]] == ["ready", "ready"]

        wait_until(workers_ready, "the workers to be ready again (after --stop-timeout)")
        assert master.post("/swarm", user_count="2", spawn_rate="2")["success"]
        first = llm["summary"]["messages"]["total"]
        wait_until(lambda: master.get("/bagstress/llm")["summary"]["messages"]["total"] < first, "a fresh start")
        assert master.post("/stop")["success"]
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    report = llm["summary"]
    assert report["messages"]["failed"] == 0
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["tokens"]["output"] == truth["completion_tokens_served"]
    assert {m: f["messages"] for m, f in report["models"].items()} == truth["served_by_model"]
    assert {w: f["messages"] for w, f in report["workers"].items()} == truth["served_by_client"]
    rows = {row["name"]: row for row in llm["rows"]}
    assert rows["Aggregated"]["messages"] == truth["completions_served"]
    assert {m: rows[m]["messages"] for m in truth["served_by_model"]} == truth["served_by_model"]
    # The tab's rows (what the UI polls) are the same merged figures.
    assert {row["name"]: row["messages"] for row in tab} == {name: row["messages"] for name, row in rows.items()}
