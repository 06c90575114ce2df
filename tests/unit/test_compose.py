"""The production-shaped stack: docker-compose.yml, .env.example, Dockerfile and the ClickHouse users.

No Docker engine is needed: these read the files and check what `docker compose up` relies on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
INIT_USERS = ROOT / "deploy" / "clickhouse-users" / "init-users.sh"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, or $VAR; `$$` is a literal dollar
VARIABLE = re.compile(
    r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))"
)
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")


def _load(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed in the test environment: add `pyyaml` to the dev extras")
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env_example() -> dict[str, tuple[str, list[str]]]:
    """.env.example: name -> (value, comment lines right above it)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif not line.strip():
            comments = []
        else:
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            assert name not in entries, f".env.example lists {name} twice"
            entries[name.strip()] = (value.strip(), comments)
            comments = []
    return entries


def _variables() -> list[re.Match[str]]:
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    return list(VARIABLE.finditer(text))


def _volume_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            sources.append(volume.split(":", 1)[0])
        elif volume.get("type", "bind") == "bind" or "source" in volume:
            sources.append(volume["source"])
    return sources


def test_compose_parses(compose: dict[str, Any]) -> None:
    assert {"kafka", "clickhouse", "migrate", "worker", "sink", "prometheus", "alertmanager", "grafana"} <= set(
        compose["services"]
    )
    assert set(compose.get("volumes", {})) >= {"kafka-data", "clickhouse-data", "prometheus-data", "grafana-data"}


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: neither image nor build"
            continue
        assert "$" not in image, f"{name}: image {image!r} from a variable"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag of {image!r} names no version"


def test_expected_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["prometheus"]["image"] == "prom/prometheus:v2.55.1"
    assert services["alertmanager"]["image"] == "prom/alertmanager:v0.27.0"
    assert services["grafana"]["image"] == "grafana/grafana:11.3.0"


def test_published_ports_bind_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} published on every interface"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} published on every interface"
        assert service.get("network_mode") != "host", f"{name}: host networking bypasses the port bindings"


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs a condition for each service"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = (spec or {}).get("condition")
            other = services[target]
            if condition == "service_healthy":
                test = other.get("healthcheck", {}).get("test")
                assert test and not other["healthcheck"].get("disable"), f"{name} waits for {target}'s health: none"
            elif condition == "service_completed_successfully":
                assert other.get("restart") in ("no", None), f"{target} is awaited as a one-shot job but restarts"
                assert other.get("restart") == "no", f"{target}: a one-shot job needs restart: 'no'"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r}; use service_healthy")


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"


def test_local_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source in _volume_sources(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repository"
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context).is_dir(), f"{name}: build context {context} missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context / dockerfile).is_file(), f"{name}: {dockerfile} missing"
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            required = isinstance(env_file, str) or env_file.get("required", True)
            assert not required or (ROOT / path).exists(), f"{name}: env_file {path} missing"


def test_variables_are_listed_in_env_example() -> None:
    listed = _env_example()
    used = {m.group("braced") or m.group("plain") for m in _variables()}
    assert used, "docker-compose.yml uses no variable: where do the passwords come from?"
    assert used - set(listed) == set(), "variables missing from .env.example"
    assert set(listed) - used == set(), ".env.example lists variables docker-compose.yml does not use"


def test_env_example_documents_every_variable_without_secrets() -> None:
    for name, (value, comments) in _env_example().items():
        assert comments, f".env.example: {name} has no comment above it"
        if SECRET.search(name):
            assert value == "", f".env.example: {name} must be empty, not a default secret"


def test_no_default_passwords(services: dict[str, dict[str, Any]]) -> None:
    for m in _variables():
        name = m.group("braced") or m.group("plain")
        if SECRET.search(name):
            assert m.group("op") in (":?", "?"), f"${{{name}}} needs :? (required), not a default"
    for service_name, service in services.items():
        env = service.get("environment", {})
        items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
        for key, value in items:
            if SECRET.search(key):
                assert isinstance(value, str) and VARIABLE.fullmatch(value), (
                    f"{service_name}: {key} must come from .env, not a literal"
                )


def test_workers_scale(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale worker=N"
    assert "ports" not in worker, "a published host port prevents --scale worker=N"
    assert "hostname" not in worker
    assert "6066" in worker["command"], "Prometheus scrapes the workers on port 6066"
    replicas = str(worker.get("deploy", {}).get("replicas", "1"))
    assert replicas.startswith("${RIPPLE_WORKERS"), "the worker count comes from RIPPLE_WORKERS"


def test_only_the_sink_and_migrations_get_clickhouse_credentials(services: dict[str, dict[str, Any]]) -> None:
    with_dsn = {name for name, s in services.items() if "RIPPLE_CLICKHOUSE" in (s.get("environment") or {})}
    assert with_dsn == {"migrate", "sink"}
    for name in with_dsn:
        dsn = services[name]["environment"]["RIPPLE_CLICKHOUSE"]
        assert dsn.startswith("http://ripple:"), f"{name}: Ripple must connect as the least-privilege user `ripple`"


def test_monitoring_mounts_match_the_configs(services: dict[str, dict[str, Any]]) -> None:
    def mounts(name: str) -> dict[str, str]:
        out = {}
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            out[target] = source
        return out

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == "./deploy/prometheus/rules"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    alertmanager = mounts("alertmanager")
    assert alertmanager["/etc/alertmanager/alertmanager.yml"] == "./deploy/alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "./deploy/grafana/dashboards"
    env = services["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GRAFANA_CLICKHOUSE_PASSWORD"].startswith("${GRAFANA_CLICKHOUSE_PASSWORD:?")
    assert "grafana-clickhouse-datasource" in env["GF_INSTALL_PLUGINS"]


def test_the_collector_trusts_the_proxy_in_front_of_it(services: dict[str, dict[str, Any]]) -> None:
    # without it every shopper behind the TLS proxy has the proxy's address: one ip_hash,
    # one rate-limit bucket, click_flood for everyone
    env = services["collector"]["environment"]
    assert env["RIPPLE_COLLECTOR_PROXIES"] == "${RIPPLE_COLLECTOR_PROXIES:-1}"
    assert services["collector"]["ports"] == ["127.0.0.1:8090:8090"]  # reached only through that proxy


def test_prometheus_targets_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = _load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    ports = {"worker": "6066", "sink": "8081", "alertmanager": "9093", "collector": "8090"}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                assert host in services, f"{job['job_name']}: {host} is no compose service"
                assert str(sd["port"]) == ports[host]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                if host == "localhost":
                    continue
                assert host in services, f"{job['job_name']}: {host} is no compose service"
                assert port == ports[host], f"{job['job_name']}: {target}"


def test_clickhouse_users_script() -> None:
    assert os.access(INIT_USERS, os.X_OK), "init-users.sh must be executable (docker-entrypoint-initdb.d)"
    sql = INIT_USERS.read_text()
    assert re.search(r"CREATE USER IF NOT EXISTS ripple\b", sql)
    assert re.search(r"CREATE USER IF NOT EXISTS grafana\b", sql)
    grants: dict[str, list[str]] = {}
    for privileges, target, user in re.findall(r"GRANT ([A-Z ,]+?) ON (\S+) TO (\w+);", sql):
        assert target == "ripple.*", f"{user} gets {privileges} beyond database ripple: {target}"
        grants.setdefault(user, []).extend(p.strip() for p in privileges.split(","))
    assert grants["grafana"] == ["SELECT"], "grafana is read-only"
    assert re.search(r"readonly\s*=\s*[12]\b", sql), "grafana's profile sets readonly"
    ripple = set(grants["ripple"])
    assert {"SELECT", "INSERT", "CREATE TABLE"} <= ripple
    forbidden = {"ALL", "DROP", "DROP TABLE", "TRUNCATE", "ALTER", "ALTER DELETE", "ALTER UPDATE", "ACCESS MANAGEMENT"}
    assert not ripple & forbidden, f"ripple needs none of {sorted(ripple & forbidden)}"
    assert "GRANT OPTION" not in sql


def test_clickhouse_gets_the_users_script_and_passwords(services: dict[str, dict[str, Any]]) -> None:
    clickhouse = services["clickhouse"]
    assert any(
        v.startswith("./deploy/clickhouse-users/init-users.sh:/docker-entrypoint-initdb.d/")
        for v in clickhouse["volumes"]
    )
    env = clickhouse["environment"]
    for name in ("CLICKHOUSE_PASSWORD", "RIPPLE_CLICKHOUSE_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD"):
        assert name in env, f"init-users.sh reads {name}"
    assert str(env.get("CLICKHOUSE_USER")) != "default"


def test_dockerfile_copies_what_the_image_reads() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert base and ":" in base.group(1) and not base.group(1).endswith(":latest"), "pin the base image"
    copied = set()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
            copied.add(source.rstrip("/"))
    # read at run time beside the packages (streams/events.py, sinks/clickhouse.py, streams/fraud/config.py)
    for needed in ("ripple", "streams", "sinks", "schemas", "deploy/clickhouse", "deploy/fraud"):
        assert needed in copied, f"the image lacks {needed}"
    assert re.search(r"^USER (?!root)\S+", text, flags=re.MULTILINE), "run as a non-root user"
