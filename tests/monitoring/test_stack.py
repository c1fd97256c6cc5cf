"""The monitoring stack and compose file, checked without Docker: promtool on the Prometheus
files, the dashboard against the worker's metrics, compose.yaml against the worker's settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.metrics import Metrics
from streamlearner.cli import build_parser
from streamlearner.settings import Settings, setting_specs

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "streamlearner.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("STREAMLEARNER_REQUIRE_PROMETHEUS"):
            pytest.fail("promtool not installed (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


# -- Prometheus files --------------------------------------------------------------------------
def test_promtool_accepts_config_and_rules():
    tool = promtool()
    for args in (["check", "config", str(MON / "prometheus.yml")],
                 ["check", "rules", str(MON / "alerts.yml")]):
        out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rejects_a_broken_rule_file(tmp_path):
    tool = promtool()
    bad = tmp_path / "alerts.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: rate(foo[\n")
    out = subprocess.run([tool, "check", "rules", str(bad)], capture_output=True, timeout=60)
    assert out.returncode != 0


def test_alerts_cover_the_issue_list():
    rules = yaml.safe_load((MON / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    for wanted in ("DriftDetected", "PrequentialAccuracyDrop", "NoModelUpdate",
                   "DeadLetterRate", "ConsumerLag", "ModelRolledBack", "SkippedUpdates",
                   "CheckpointFailing"):
        assert f"Streamlearner{wanted}" in names


# -- dashboard ---------------------------------------------------------------------------------
def registered_names() -> set[str]:
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    for family in Metrics(tasks=["feedback"], topics=["t"]).registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def test_every_dashboard_metric_exists_in_the_worker():
    known = registered_names()
    used = {name for expr in dashboard_exprs()
            for name in re.findall(r"streamlearner_[a-z_]+", expr)}
    assert used and used <= known, sorted(used - known)


def test_dashboard_has_the_issue_panels_on_the_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    text = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("events/s", "dead letters", "loss", "prequential", "forgetting", "drift",
                 "detections", "replay memory", "latency", "freshness", "model version", "lag"):
        assert word in text, word
    ds = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in p["targets"])


# -- compose + Dockerfile ----------------------------------------------------------------------
def test_compose_references_are_defined(compose):
    services, volumes = compose["services"], set(compose["volumes"])
    aliases = {a for s in services.values()
               for net in (s.get("networks") or {}).values() for a in (net or {}).get("aliases", [])}
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for mount in svc.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)
        assert "restart" in svc, name
    for name in ("kafka", "serve", "trainer", "trainer-gpu", "worker", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert {"gpu", "demo", "worker", "tracking"} <= profiles
    assert not services["serve"].get("profiles") and not services["trainer"].get("profiles")
    assert {"checkpoints", "models"} <= volumes
    gpu = services["trainer-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    # As many trainer ranks as reserved GPUs, from one variable (default 1).
    ranks = gpu["command"][gpu["command"].index("--nproc-per-node") + 1]
    assert ranks == gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] \
        == "${STREAMLEARNER_GPUS:-1}"
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert "trainer" in aliases
    # The trainer writes the model store, replicas only read it: the same volume.
    store = {name: next(m for m in services[name]["volumes"] if m.startswith("models:"))
             for name in ("serve", "trainer", "trainer-gpu", "worker")}
    assert store["serve"].endswith(":ro")
    assert len({m.split(":")[1] for m in store.values()}) == 1


def test_compose_env_and_ports_match_the_worker_settings(compose):
    known = {s.env for s in setting_specs()} | {"LOGLEVEL"}
    services = compose["services"]
    prom = yaml.safe_load((MON / "prometheus.yml").read_text())
    [sd] = prom["scrape_configs"][0]["dns_sd_configs"]
    assert set(sd["names"]) == {"serve", "trainer", "worker"}
    for name in ("serve", "trainer", "trainer-gpu", "worker", "topic-init"):
        # As compose interpolates ${VAR:-default} with VAR unset.
        env = {k: re.sub(r"\$\{[A-Za-z_]+:-([^}]*)\}", r"\1", str(v))
               for k, v in services[name]["environment"].items()}
        assert set(env) <= known, set(env) - known
        settings = Settings.from_env(env)   # valid values, or SettingsError
        assert settings.kafka.bootstrap.split(":")[0] in services
        assert settings.metrics.host == "0.0.0.0"
        assert settings.kafka.partitions >= 3        # room for several serving replicas
        if name != "topic-init":
            host_port, container_port = services[name]["ports"][0].rsplit(":", 1)
            assert int(container_port) == settings.metrics.port == sd["port"]
            mounts = [v.split(":")[1] for v in services[name]["volumes"]]
            assert any(settings.checkpoint.dir.startswith(m) for m in mounts)
            assert settings.models.store in mounts
            assert services[name]["command"][0] == {"trainer-gpu": "train",
                                                    "trainer": "train"}.get(name, name)
    feedback = Settings.from_env(dict(services["serve"]["environment"], KAFKA_TASKS="")).kafka
    for demo in ("demo-feedback", "demo-market"):
        cmd = services[demo]["command"]
        assert cmd[1] in (feedback.feedback_topic, feedback.market_topic)
        assert (ROOT / cmd[2]).is_file()


def test_dockerfile_entrypoint_is_the_real_cli(compose):
    text = (ROOT / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry == ["streamlearner"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'streamlearner = "streamlearner.cli:main"' in pyproject
    parser = build_parser()
    parser.parse_args(cmd)
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("streamlearner:"):
            assert "entrypoint" not in svc, name
            # A real subcommand with real flags, as compose interpolates ${VAR:-default}.
            parser.parse_args([re.sub(r"\$\{[A-Za-z_]+:-([^}]*)\}", r"\1", str(a))
                               for a in svc["command"]])


def test_grafana_provisioning_paths_match_the_mounts(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(m.split(":")[:2][::-1] for m in grafana["volumes"])   # target -> source
    provider = yaml.safe_load(
        (MON / "grafana/provisioning/dashboards/streamlearner.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (ROOT / mounts[path] / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "${GRAFANA_ADMIN_PASSWORD" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_the_image_copies_every_package():
    """The Dockerfile installs what pyproject packages: a room left out breaks every role."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in find["include"]}
    docker = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1\s*$", docker, re.M))
    assert packages <= copied, packages - copied
    assert '".[tracking]"' in docker
