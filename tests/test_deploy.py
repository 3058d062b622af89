"""The deploy files checked by the tools and loaders that will read them.

Kubernetes: ``kubectl kustomize`` builds the base and the multi-replica overlay offline, every
resource is validated against the Kubernetes API schemas (kubernetes-validate, strict: unknown
fields fail), the pieces agree with each other (selectors, ports, grace periods), and every
embedded ratatoskr configuration passes the daemon's own loader and preflight as ``serve`` runs
them.  systemd: ``systemd-analyze verify`` and ``security --offline``.  Docker: the Dockerfile's
stages and instructions, and its HEALTHCHECK and the unit's ExecReload run against a real daemon.
No image is built and no cluster is reached: neither exists here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.keys import new_token
from ratatoskr_server.preflight import Level, check_settings
from tests.conftest import REPO, DaemonProcess, clean_env

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
#: The oldest Kubernetes with GA gRPC probes, and the newest schemas the validator ships.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
GRPC_PORT = 9741


# ------------------------------------------------------------------------------ Kubernetes
def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    run = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(K8S / "base")


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "multi-replica")


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_resource_validates_against_the_kubernetes_schemas(which: str, request: pytest.FixtureRequest) -> None:
    resources: list[dict[str, Any]] = request.getfixturevalue(which)
    assert resources
    for version in K8S_VERSIONS:
        for resource in resources:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{which}: {resource['kind']}/{resource['metadata']['name']} on {version}: {err.message}")


def test_the_validator_refuses_what_a_cluster_would(base: list[dict[str, Any]]) -> None:
    """The schema check above can fail: a misspelt field and a wrong type are caught."""
    deployment = one(base, "Deployment", "ratatoskr")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[0], strict=True)
    probe = {**_container(deployment)["startupProbe"], "grpc": {"port": "grpc"}}  # gRPC probes take a number
    container = {**_container(deployment), "startupProbe": probe}
    spec = {**deployment["spec"]["template"]["spec"], "containers": [container]}
    broken = {
        **deployment,
        "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"], "spec": spec}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_the_base_pieces_agree_with_each_other(base: list[dict[str, Any]]) -> None:
    kinds = sorted(r["kind"] for r in base)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    deployment = one(base, "Deployment", "ratatoskr")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        one(base, "Service", "ratatoskr")["spec"]["selector"],
        one(base, "PodDisruptionBudget", "ratatoskr")["spec"]["selector"]["matchLabels"],
        one(base, "NetworkPolicy", "ratatoskr")["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    target = one(base, "HorizontalPodAutoscaler", "ratatoskr")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ratatoskr")

    container = _container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORT}, probe  # grpc.health.v1, no exec
    config = tomllib.loads(one(base, "ConfigMap", "ratatoskr-config")["data"]["config.toml"])
    assert config["server"]["tcp_port"] == GRPC_PORT and config["server"]["tcp_enabled"]
    service_ports = {p["name"]: p for p in one(base, "Service", "ratatoskr")["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == GRPC_PORT and service_ports["grpc"]["appProtocol"] == "grpc"
    policy_ports = [
        p["port"] for rule in one(base, "NetworkPolicy", "ratatoskr")["spec"]["ingress"] for p in rule["ports"]
    ]
    assert GRPC_PORT in policy_ports

    # Kubernetes' SIGKILL comes after preStop plus the drain, with room for unloading.
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config["server"]["shutdown_grace_s"]
    # The config and secret reach the pod under the names the generator and the Secret have.
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "ratatoskr-config"  # fixed, so edits reach running pods
    assert container["envFrom"][0]["secretRef"]["name"] == "ratatoskr-secrets"
    # The Dockerfile's user, non-root, read-only root.
    user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "docker" / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.group(1)) and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_overlay_shares_state_through_its_redis(overlay: list[dict[str, Any]]) -> None:
    config = tomllib.loads(one(overlay, "ConfigMap", "ratatoskr-config")["data"]["config.toml"])
    assert config["state"]["backend"] == "redis"
    url = re.fullmatch(r"redis://:\$\{(\w+)\}@([\w-]+):(\d+)/0", config["state"]["url"])
    assert url, config["state"]["url"]
    redis_service = one(overlay, "Service", url.group(2))
    assert redis_service["spec"]["ports"][0]["port"] == int(url.group(3))
    redis = one(overlay, "StatefulSet", url.group(2))
    assert redis_service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    # One password, from the Secret the daemon also reads.
    assert url.group(1) in one(overlay, "Secret", "ratatoskr-secrets")["stringData"]
    (env,) = _container(redis)["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "ratatoskr-secrets", "key": url.group(1)}
    assert "noeviction" in _container(redis)["args"]  # the budget ledger is never evicted
    # Gateway pods may reach Redis and nothing else may.
    to_redis = one(overlay, "NetworkPolicy", "ratatoskr-to-redis")["spec"]["egress"][0]
    assert to_redis["ports"][0]["port"] == int(url.group(3))
    allowed = one(overlay, "NetworkPolicy", url.group(2))["spec"]["ingress"][0]["from"][0]["podSelector"]
    pod_labels = one(overlay, "Deployment", "ratatoskr")["spec"]["template"]["metadata"]["labels"]
    assert allowed["matchLabels"].items() <= pod_labels.items()
    assert one(overlay, "HorizontalPodAutoscaler", "ratatoskr")["spec"]["minReplicas"] > 1


def _embedded(resources: list[dict[str, Any]], tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """The ConfigMap's config.toml as a file, and the Secret's variables filled in as an operator would."""
    path = tmp_path / f"{name}.toml"
    path.write_text(one(resources, "ConfigMap", "ratatoskr-config")["data"]["config.toml"])
    secret = one(resources, "Secret", "ratatoskr-secrets")["stringData"]
    assert set(secret.values()) == {""}, "no value is committed to the Secret"
    filled = {key: "0123456789abcdef" for key in secret}
    filled["RATATOSKR_CALLER_APP"] = str(new_token()[1])
    return path, filled


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_embedded_configurations_pass_the_daemons_loader_and_preflight(
    which: str, request: pytest.FixtureRequest, model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``serve`` checks them, with the image's model directory standing in for /models."""
    if which == "overlay" and "state" not in Settings.model_fields:
        pytest.skip("the [state] section (issue 15, part 1: the Redis backend) is not in this build's settings")
    path, env = _embedded(request.getfixturevalue(which), tmp_path, which)
    for key in [k for k in os.environ if k.startswith("RATATOSKR_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RATATOSKR_LOCAL__MODEL_DIR", str(model_root))
    settings = load_settings(path)
    errors = [str(f) for f in check_settings(settings, path) if f.level is Level.ERROR]
    assert not errors, errors
    if which == "overlay":
        url = getattr(settings, "state").url  # noqa: B009  # the section may be missing from this build (skip above)
        text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
        assert ":0123456789abcdef@ratatoskr-redis:6379/" in text  # ${REDIS_PASSWORD} filled in


def test_the_base_and_overlay_configurations_differ_only_by_shared_state() -> None:
    """The overlay's config.toml is the base's plus [state] and the limits it makes exact: kept in step."""
    base = tomllib.loads((K8S / "base" / "config.toml").read_text())
    overlay = tomllib.loads((K8S / "overlays" / "multi-replica" / "config.toml").read_text())
    shared = {"state", "budget", "cache"}
    assert {k: v for k, v in overlay.items() if k not in shared} == {
        **base,
        "callers": {"app": {**base["callers"]["app"], "rpm": overlay["callers"]["app"]["rpm"]}},
    }
    assert shared.isdisjoint(base)


# ------------------------------------------------------------------------------ systemd, launchd
def _unit(name: str, binary: Path) -> str:
    text = (DEPLOY / "systemd" / name).read_text()
    for installed in ("/opt/ratatoskr/bin/ratatoskr", "%h/.local/share/ratatoskr/bin/ratatoskr"):
        text = text.replace(installed, str(binary))
    return text


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["ratatoskr.service", "ratatoskr-user.service"])
def test_units_are_type_notify_with_a_watchdog_and_a_waiting_reload(unit: str) -> None:
    d = _directives((DEPLOY / "systemd" / unit).read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert float(d["WatchdogSec"][0]) > 0
    (reload,) = d["ExecReload"]
    assert shlex.split(reload)[1:] == ["reload"]  # `ratatoskr reload`: fails when refused
    assert float(d["TimeoutStopSec"][0]) > 10  # server.shutdown_grace_s's default
    assert d["RestartPreventExitStatus"] == ["2"]  # a configuration error does not loop
    if unit == "ratatoskr.service":
        for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ProtectHome", "RuntimeDirectory"):
            assert key in d, key
        assert d["ProtectSystem"] == ["strict"]
        (socket_env,) = [e for e in d["Environment"] if e.startswith("RATATOSKR_SERVER__SOCKET_PATH=")]
        assert socket_env.split("=", 1)[1].startswith(f"/run/{d['RuntimeDirectory'][0]}/")


def test_the_system_unit_passes_systemd_analyze_security(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    (tmp_path / "ratatoskr.service").write_text(_unit("ratatoskr.service", VENV_BIN / "ratatoskr"))
    command = [analyze, "security", "--offline=true", "--threshold=25", str(tmp_path / "ratatoskr.service")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    # Exposure at most 2.5 of 10 ("OK"); the hardening lines are what keep it there.
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr


def test_the_launchd_plist_lints() -> None:
    plist = DEPLOY / "launchd" / "dev.ratatoskr.daemon.plist"
    plutil = shutil.which("plutil")
    if plutil is not None:
        run = subprocess.run([plutil, "-lint", str(plist)], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr
    import plistlib

    data = plistlib.loads(plist.read_bytes().replace(b"__HOME__", b"/Users/someone"))
    assert data["ProgramArguments"][1:] == ["serve"]
    assert data["KeepAlive"] == {"SuccessfulExit": False}  # a drained exit 0 stays stopped
    assert data["ExitTimeOut"] > 10  # SIGKILL only after server.shutdown_grace_s


# ------------------------------------------------------------------------------ Docker
def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, [(INSTRUCTION, arguments)]) per FROM, continuation lines joined, comments dropped."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            stages.append((words[2] if len(words) == 3 and words[1].upper() == "AS" else "", []))
        elif stages:
            stages[-1][1].append((instruction, args.strip()))
    return stages


def test_the_dockerfile_is_multi_stage_non_root_with_a_grpc_health_check() -> None:
    stages = dockerfile_stages()
    assert [name for name, _ in stages] == ["build", ""]
    build, runtime = stages[0][1], stages[1][1]
    assert any(i == "RUN" and "make install" in a and "INSTALL_GROUPS=" in a for i, a in build)
    # The runtime stage installs nothing: it copies the built venv and the models from the build stage.
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies and all(a.startswith("--from=build ") for a in copies)
    for instruction, args in runtime:
        if instruction == "RUN":
            assert not re.search(r"\b(apt-get install|pip|uv|make|gcc)\b", args), args
    users = [a for i, a in runtime if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    names = [i for i, _ in runtime]
    assert names.index("USER") < names.index("ENTRYPOINT")
    (health,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert re.search(r'CMD \["ratatoskr", "health"', health)
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("EXPOSE", f"{GRPC_PORT} 9742") in runtime


@pytest.fixture(scope="module")
def daemon(model_root: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(model_root).start()
    yield d
    d.stop()


def test_the_images_health_check_and_the_units_reload_run_against_a_daemon(daemon: DaemonProcess) -> None:
    """The HEALTHCHECK's exact command (address made this daemon's), and ExecReload with the unit's
    socket variable pointed at this daemon: the same commands the image and the unit run."""
    (health,) = [a for i, a in dockerfile_stages()[1][1] if i == "HEALTHCHECK"]
    command = yaml.safe_load(health.split("CMD", 1)[1])  # the exec form is a JSON (so YAML) list
    host, port = daemon.tcp_address().rsplit(":", 1)
    command = [w.replace(f"127.0.0.1:{GRPC_PORT}", f"{host}:{port}") for w in command]
    env = clean_env(PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "SERVING", run.stdout + run.stderr

    (reload,) = _directives((DEPLOY / "systemd" / "ratatoskr.service").read_text())["ExecReload"]
    words = shlex.split(reload.replace("/opt/ratatoskr/bin/ratatoskr", str(VENV_BIN / "ratatoskr")))
    env["RATATOSKR_SERVER__SOCKET_PATH"] = str(daemon.socket)
    run = subprocess.run(words, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and run.stdout.startswith("reloaded (configuration generation 2)"), run.stderr
