"""The deployment files agree with the code: services, images, ports, environment, commands.

No Docker engine, cluster or Slurm runs here, so what is checked is what can
be: every file parses, and what it names exists and means what the code expects.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hpo.cli import parser
from hpo.storage import parse_url

ROOT = Path(__file__).parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _expand(value: str) -> str:
    """Compose's ${VAR:?msg} and ${VAR:-default}, with a placeholder for required ones."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", "secret", value)
    return re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value)


def test_compose_services_and_health():
    services = _compose()["services"]
    assert set(services) == {"db", "dashboard", "worker"}
    assert "healthcheck" in services["db"] and services["db"]["volumes"]
    for name in ("dashboard", "worker"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"


def test_compose_publishes_only_on_loopback():
    for service in _compose()["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_storage_url_is_valid_and_reaches_the_db_service():
    compose = _compose()
    for name in ("dashboard", "worker"):
        url = _expand(compose["services"][name]["environment"]["HPO_STORAGE"])
        parsed = parse_url(url)
        assert parsed.host == "db" and parsed.get_backend_name() == "postgresql"
        assert parsed.database == compose["services"]["db"]["environment"]["POSTGRES_DB"]
        assert parsed.username == compose["services"]["db"]["environment"]["POSTGRES_USER"]


def test_compose_worker_reserves_a_gpu_and_runs_a_real_command():
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"] and devices["count"] == 1
    command = [_expand(part) for part in worker["command"]]
    args = parser().parse_args(command)  # the image's entrypoint is `hpo`
    assert args.command == "launch" and (ROOT / args.study).is_file()


def test_dockerfile_installs_the_package_and_enters_hpo():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("hpo", "objectives", "studies"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert 'ENTRYPOINT ["hpo"]' in dockerfile and "pip install" in dockerfile


def test_kubernetes_job_is_indexed_one_gpu_per_pod_with_secret_storage():
    job = yaml.safe_load((ROOT / "deploy/kubernetes/job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["HPO_STORAGE"]["valueFrom"], "the password must come from a secret"
    args = parser().parse_args(container["args"])
    assert args.command == "launch" and (ROOT / args.study).is_file()


def test_slurm_array_asks_for_one_gpu_and_a_warning_signal():
    script = (ROOT / "deploy/slurm/array.sbatch").read_text()
    assert "#SBATCH --array=" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --signal=TERM@" in script
    launch = re.search(r"^exec hpo (launch \S+)", script, re.M)
    assert launch, "exec keeps hpo the process that receives SIGTERM"
    args = parser().parse_args(launch.group(1).split())
    assert (ROOT / args.study).is_file()
