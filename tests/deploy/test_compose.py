"""docker-compose.yml: the monitoring profile runs Prometheus and Grafana over files that exist, and the
scrape targets are the services and ports the pipeline's processes listen on. ``docker compose config``
checks the whole file where the compose CLI exists; the rest needs only pyyaml."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="pyyaml is not installed: pip install '.[test]'")
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_config_accepts_the_file_with_every_profile():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose CLI is not installed")
    done = subprocess.run(
        [
            docker,
            "compose",
            "--profile",
            "monitoring",
            "--profile",
            "replay",
            "--profile",
            "tools",
            "-f",
            str(COMPOSE),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


def test_the_monitoring_profile_mounts_files_that_exist(compose):
    services = compose["services"]
    monitoring = {name for name, s in services.items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    for name in monitoring:
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_prometheus_scrapes_the_ports_the_services_listen_on(compose):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {sd["names"][0]: sd["port"] for job in config["scrape_configs"] for sd in job["dns_sd_configs"]}
    assert targets == {"worker": 6066, "trainer": 6166, "serve": 6070}  # web port; trainer: + 100; serve port
    for name in targets:
        env = compose["services"][name].get("environment", {})
        assert isinstance(env, dict) and env.get("ATTNFLOW_WEB_HOST") == "0.0.0.0", (
            name
        )  # reachable by Prometheus
