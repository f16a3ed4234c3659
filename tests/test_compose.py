"""The container set-up: Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine.

Most tests only read the files (PyYAML for the compose file). One asks the real Compose CLI to
validate the file (``docker compose config`` needs no engine) and is skipped, with the reason, where
neither the ``docker compose`` plugin nor a v2 ``docker-compose`` binary is installed.

``compose_command(service)`` gives a later, distributed test the exact arguments that compose would
run, so that the same master/worker/simulator command lines are exercised as local processes.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCUSTFILE_IN_IMAGE = "/app/locustfile.py"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}, $NAME, $$
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)

# Top-level and service-level properties of the Compose specification (compose-spec.json), for a
# structural check that needs neither the schema file nor the network.
_TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models"}
_SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command",
    "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period",
    "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging", "mac_address",
    "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models", "network_mode", "networks",
    "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop",
    "privileged", "profiles", "provider", "pull_policy", "pull_refresh_after", "read_only", "restart", "runtime",
    "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt",
    "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes", "volumes_from",
    "working_dir",
}  # fmt: skip
_SECRET_LIKE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}|--api-key\b|Bearer\s+\S", re.IGNORECASE)


# ---- reading docker-compose.yml -------------------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    if name not in services:
        raise KeyError(f"docker-compose.yml has no service {name!r} (it has {sorted(services)})")
    return services[name]


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{where} must be a YAML list of strings, got {value!r}")
    return value


def interpolate(text: str, variables: Mapping[str, str] | None = None) -> str:
    """Substitute compose variables as Compose does, from ``variables`` only (by default none: the defaults)."""
    values = variables or {}

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = values.get(name)
        op, arg = match["op"], match["arg"] or ""
        is_set = value is not None
        is_set_and_not_empty = bool(value)
        if op in (":-", "-"):
            use_value = is_set_and_not_empty if op == ":-" else is_set
            return value if use_value else arg
        if op in (":?", "?"):
            if not (is_set_and_not_empty if op == ":?" else is_set):
                raise ValueError(f"compose variable {name} is required: {arg}")
            return value
        if op in (":+", "+"):
            return arg if (is_set_and_not_empty if op == ":+" else is_set) else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _full_command(service: str, variables: Mapping[str, str] | None = None) -> list[str]:
    """The service's entrypoint followed by its command, interpolated."""
    spec = _service(service)
    raw = _as_list(spec.get("entrypoint"), f"{service}.entrypoint") + _as_list(
        spec.get("command"), f"{service}.command"
    )
    return [interpolate(argument, variables) for argument in raw]


def compose_command(service: str, variables: Mapping[str, str] | None = None) -> list[str]:
    """The arguments docker-compose.yml gives ``service`` after its program, compose variables substituted.

    For ``master`` and ``worker`` these are the Locust arguments after ``-f <locustfile>``; for
    ``llm-sim`` the simulator's arguments after ``-m bagstress_locust.simulator``. Each
    ``${NAME:-default}`` becomes its default, never the value in this process's environment or in
    ``.env``, so the result is the same on every machine; pass ``variables`` to set some names
    instead, as ``OPENAI_API_BASE=...`` or ``WORKERS=...`` would for compose.

    A distributed test can run exactly what compose runs as local processes::

        sim = [sys.executable, "-m", "bagstress_locust.simulator", *compose_command("llm-sim")]
        master = ["locust", "-f", LOCUSTFILE, *compose_command("master", {"OPENAI_API_BASE": url, "WORKERS": "2"})]
        worker = ["locust", "-f", LOCUSTFILE, *compose_command("worker")]

    Only the compose network's names and fixed ports need changing there, and the test must change
    them: ``--host 0.0.0.0`` and ``--port 8000`` of llm-sim (bind 127.0.0.1, port 0: load tests here
    stay on loopback), and ``--master-host master`` of a worker (127.0.0.1, with a free
    ``--master-port``/``--master-bind-port`` pair if several tests run at once).
    """
    full = _full_command(service, variables)
    for flag in ("-f", "-m"):
        if flag in full[:-1]:
            return full[full.index(flag) + 2 :]
    raise ValueError(f"{service}: no '-f <locustfile>' or '-m <module>' in {full}")


def _variables_used() -> set[str]:
    names = set()
    for match in _VARIABLE.finditer(COMPOSE_FILE.read_text(encoding="utf-8")):
        if not match["escaped"]:
            names.add(match["braced"] or match["named"])
    return names


def _published_ports(service: str) -> list[dict[str, str]]:
    """Each ``ports`` entry as host_ip/published/target, short syntax parsed, variables at their defaults."""
    result = []
    for entry in _service(service).get("ports") or []:
        if isinstance(entry, dict):
            result.append({key: interpolate(str(entry.get(key, ""))) for key in ("host_ip", "published", "target")})
            continue
        text = interpolate(str(entry)).split("/")[0]
        if text.startswith("["):  # [::1]:8089:8089
            host_ip, _, rest = text[1:].partition("]:")
            published, _, target = rest.rpartition(":")
        else:
            parts = text.split(":")
            host_ip, published, target = (["", "", *parts])[-3:] if len(parts) < 3 else parts[-3:]
        result.append({"host_ip": host_ip, "published": published, "target": target})
    return result


# ---- reading the Dockerfile and .dockerignore --------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in logical.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _copy_sources(arguments: str) -> tuple[list[str], str | None]:
    """The sources of a COPY/ADD and its --from stage (None: the build context)."""
    tokens = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    stage = None
    while tokens and tokens[0].startswith("--"):
        flag = tokens.pop(0)
        if flag.startswith("--from="):
            stage = flag.split("=", 1)[1]
    return tokens[:-1], stage


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    starts = [index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: Go filepath.Match plus ``**``."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[" and "]" in pattern[index:]:
            end = pattern.index("]", index)
            body = pattern[index + 1 : end]
            out, index = out + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the project) out of the build context."""
    excluded = False
    parts = path.split("/")
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = posixpath.normpath(pattern.removeprefix("!").strip()).lstrip("/")
        regex = _ignore_regex(pattern)
        # Like Docker, a pattern that matches a parent directory matches everything under it.
        if any(regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


# ---- docker-compose.yml --------------------------------------------------------------------------------


def _compose_cli() -> tuple[list[str] | None, str]:
    """The Compose v2 CLI to run, or None and why there is none."""
    tried = []
    for command in (["docker", "compose"], ["docker-compose"]):
        try:
            result = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            tried.append(f"`{' '.join(command)}`: {command[0]} not installed")
            continue
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            first_line = output.splitlines()[0] if output else f"exit code {result.returncode}"
            tried.append(f"`{' '.join(command)} version` failed: {first_line}")
            continue
        version = re.search(r"v?(\d+)\.(\d+)\.\d+", output)
        if version and int(version[1]) < 2:
            tried.append(f"`{' '.join(command)}` is Compose {version[0]}, too old for env_file.required (needs v2.24+)")
            continue
        return command, output
    return None, "; ".join(tried)


def test_compose_cli_validates_the_file(tmp_path: Path) -> None:
    """`docker compose config` (no engine needed) parses and checks the file against the Compose schema."""
    cli, why = _compose_cli()
    if cli is None:
        pytest.skip(f"docker compose config unavailable, compose file not validated by Compose itself: {why}")
    # Hermetic: no .env for interpolation and none of the file's variables from this environment, so the
    # CLI resolves the same defaults that compose_command() uses.
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key not in _variables_used()}
    base = [*cli, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE)]
    run = {"cwd": ROOT, "env": environment, "capture_output": True, "text": True, "timeout": 120, "check": False}

    quiet = subprocess.run([*base, "config", "--quiet"], stdin=subprocess.DEVNULL, **run)
    assert quiet.returncode == 0, f"{' '.join(cli)} config rejected docker-compose.yml:\n{quiet.stderr}"

    resolved = subprocess.run([*base, "config", "--format", "json"], stdin=subprocess.DEVNULL, **run)
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    for name in ("llm-sim", "master", "worker"):
        cli_command = (services[name].get("entrypoint") or []) + (services[name].get("command") or [])
        assert cli_command == _full_command(name), f"{name}: Compose resolves {cli_command}"
    # Compose's own reading of the published port agrees: loopback only.
    assert [port.get("host_ip") for port in services["master"]["ports"]] == ["127.0.0.1"]


def test_compose_file_has_the_spec_structure() -> None:
    """The Compose specification's structure, checked by hand: typos and wrong types fail without any tool."""
    compose = _compose()
    assert isinstance(compose, dict)
    unknown_top = {key for key in compose if not key.startswith("x-")} - _TOP_LEVEL_KEYS
    assert not unknown_top, f"not Compose top-level keys: {unknown_top}"
    services = compose["services"]
    assert isinstance(services, dict) and services
    for name, spec in services.items():
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name), name
        assert isinstance(spec, dict), name
        unknown = {key for key in spec if not key.startswith("x-")} - _SERVICE_KEYS
        assert not unknown, f"{name}: not Compose service keys: {unknown}"
        for key in ("entrypoint", "command", "expose"):
            _as_list(spec.get(key), f"{name}.{key}")
        for entry in spec.get("env_file") or []:
            assert isinstance(entry, dict) and set(entry) <= {"path", "required", "format"}, entry
        environment = spec.get("environment") or []
        assert isinstance(environment, list | dict), f"{name}.environment"
        depends_on = spec.get("depends_on") or []
        assert set(depends_on) <= set(services), f"{name} depends on unknown services {depends_on}"
        for port in _published_ports(name):
            assert re.fullmatch(r"\d+(-\d+)?", port["target"]), port
            assert re.fullmatch(r"(\d+(-\d+)?)?", port["published"]), port
    # Every variable has a default: the stack runs with an empty environment and no .env.
    for name in services:
        assert all(argument for argument in _full_command(name)), f"{name}: an argument is empty by default"


def _with_defaults(value: Any) -> Any:
    """The document as compose sees it with an empty environment: every variable at its default."""
    if isinstance(value, str):
        return interpolate(value)
    if isinstance(value, list):
        return [_with_defaults(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_defaults(item) for key, item in value.items()}
    return value


def _validate_with_compose_spec(document: dict[str, Any]) -> Any:
    """Parse with compose_spec, a complete implementation of the Compose specification (the Rust
    crate behind podlet); it knows every key and type, and needs no Docker engine."""
    from compose_spec import PyCompose

    # YAML anchors are already resolved by the loader; the x- blocks that held them are extensions.
    services_only = {key: item for key, item in document.items() if not key.startswith("x-")}
    return PyCompose.from_yaml(yaml.safe_dump(services_only))


def test_compose_file_is_valid_by_the_compose_specification() -> None:
    compose = _validate_with_compose_spec(_with_defaults(_compose()))
    assert set(compose.service_names()) == {"llm-sim", "master", "worker"}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda doc: doc["services"]["master"].update(portz=["8089:8089"]),
        lambda doc: doc["services"]["worker"].update(env_file=[{"path": ".env", "required": "maybe"}]),
        lambda doc: doc["services"]["master"].update(ports=["not-an-ip:8089:8089"]),
    ],
    ids=["unknown key", "bad type", "bad port"],
)
def test_the_specification_check_can_fail(breakage: Any) -> None:
    document = _with_defaults(_compose())
    breakage(document)
    with pytest.raises(ValueError):
        _validate_with_compose_spec(document)


def test_services_and_their_commands() -> None:
    assert {"llm-sim", "master", "worker"} <= set(_compose()["services"])

    master = _full_command("master")
    assert master[0] == "locust"
    assert master[master.index("-f") + 1] == LOCUSTFILE_IN_IMAGE
    assert "--master" in master
    assert "--worker" not in master

    worker = _full_command("worker")
    assert worker[0] == "locust"
    assert worker[worker.index("-f") + 1] == LOCUSTFILE_IN_IMAGE
    assert "--worker" in worker
    assert worker[worker.index("--master-host") + 1] == "master"

    simulator = _full_command("llm-sim")
    assert simulator[:3] == ["python", "-m", "bagstress_locust.simulator"]
    simulator_args = compose_command("llm-sim")
    assert simulator_args[simulator_args.index("--host") + 1] == "0.0.0.0", "llm-sim must listen on the compose network"
    sim_port = simulator_args[simulator_args.index("--port") + 1]
    # Every option compose passes is one the simulator's CLI knows (its --help, without starting it).
    help_text = subprocess.run(
        [sys.executable, "-m", "bagstress_locust.simulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    for option in (argument for argument in simulator_args if argument.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", help_text), f"the simulator has no {option} option"

    # The endpoint is one variable, and its default is the llm-sim service.
    raw_master = _as_list(_service("master")["command"], "master.command")
    raw_host = raw_master[raw_master.index("--host") + 1]
    assert raw_host.startswith("${OPENAI_API_BASE:-"), raw_host
    master_args = compose_command("master")
    host_at = master_args.index("--host") + 1
    assert master_args[host_at] == f"http://llm-sim:{sim_port}/v1"
    real = "https://api.example.test/v1"
    assert compose_command("master", {"OPENAI_API_BASE": real})[host_at] == real
    assert "llm-sim" in (_service("master").get("depends_on") or [])


def test_compose_command_is_what_follows_the_locustfile() -> None:
    assert compose_command("master")[:1] == ["--master"]
    assert compose_command("master", {"WORKERS": "3"})[-2:] == ["--expect-workers", "3"]
    assert compose_command("worker") == ["--worker", "--master-host", "master"]
    assert "-f" not in compose_command("worker")
    assert interpolate("$$HOME ${A:-x} ${A-y} ${B:+z}", {"A": "", "B": "1"}) == "$HOME x  z"


def test_only_the_web_ui_is_published_and_only_on_loopback() -> None:
    ports = _published_ports("master")
    assert ports == [{"host_ip": "127.0.0.1", "published": "8089", "target": "8089"}]
    for name in ("llm-sim", "worker"):
        assert not _service(name).get("ports"), f"{name} must not publish ports"
    # Scalable with --scale worker=N: no fixed name, no host port.
    assert "container_name" not in _service("worker")


def test_no_service_hard_codes_a_key() -> None:
    for name, spec in _compose()["services"].items():
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
        for key, value in environment.items():
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", key):
                assert value is None, f"{name} sets {key} in the compose file: pass it through or use .env"
        for entry in spec.get("env_file") or []:
            path = entry["path"] if isinstance(entry, dict) else entry
            assert path == ".env", f"{name}: unexpected env_file {path}"
            assert isinstance(entry, dict) and entry.get("required") is False, f"{name}: .env must be optional"
    assert not _SECRET_LIKE.search(COMPOSE_FILE.read_text(encoding="utf-8"))


# ---- Dockerfile and .dockerignore -----------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_bakes_in_no_secret() -> None:
    instructions = _dockerfile_instructions()
    stages = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            tokens = [token for token in arguments.split() if not token.startswith("--")]
            image = tokens[0]
            if image not in stages:
                assert image.startswith("python:3.11") and "-slim" in image, f"not a -slim base: {image}"
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                stages.append(tokens[2])

    final = _final_stage()
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"the final stage runs as {users[-1]}"
    assert ("WORKDIR", "/app") in final
    exposed = {port for keyword, arguments in final if keyword == "EXPOSE" for port in arguments.split()}
    assert {"8089", "5557"} <= exposed
    assert any(keyword == "ENTRYPOINT" and "locust" in arguments for keyword, arguments in final)

    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "uv==0.13.9" in runs
    assert re.search(r"uv sync\b[^&;]*--no-dev", runs)

    context_sources = set()
    for keyword, arguments in instructions:
        if keyword in {"COPY", "ADD"}:
            sources, stage = _copy_sources(arguments)
            if stage is None:
                context_sources.update(source.rstrip("/") for source in sources)
        if keyword in {"ENV", "ARG"}:
            secret = re.search(r"OPENAI_API_KEY|_TOKEN|SECRET|PASSWORD", arguments)
            assert not secret, f"the Dockerfile's {keyword} sets {secret[0] if secret else ''}: pass it at run time"
    for source in context_sources:
        assert not posixpath.basename(source).startswith(".env"), f"the Dockerfile copies {source}"
        assert source not in {".", "*", "./"}, "the Dockerfile copies the whole build context"
    needed = {"pyproject.toml", "README.md", "bagstress_locust", "locustfile.py", "conversations"}
    assert needed <= context_sources, f"the Dockerfile does not copy {needed - context_sources}"
    # What the Dockerfile copies must be in the build context.
    for source in context_sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f".dockerignore excludes {source}, which the Dockerfile copies"
    assert not _SECRET_LIKE.search(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        ".env.production",
        "bagstress_locust/.env",
        ".git/config",
        ".venv/bin/python",
        "uv.lock",
        "tests/test_compose.py",
        "bench/run.py",
        "reports/run_stats.csv",
        "run_stats.csv",
        "report.html",
        ".pytest_cache/README.md",
        "bagstress_locust/__pycache__/plugin.cpython-311.pyc",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignore_excludes(path)


def test_dockerignore_keeps_what_the_image_needs() -> None:
    kept = [".env.example", "pyproject.toml", "README.md", "locustfile.py", "bagstress_locust/plugin.py"]
    conversations = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "conversations").glob("*.json"))
    assert conversations, "no conversations to bake in"
    for path in kept + conversations:
        assert not dockerignore_excludes(path), f".dockerignore excludes {path}"
