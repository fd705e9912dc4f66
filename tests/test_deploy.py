"""The deployment files agree with the code: services, images, ports, environment, commands.

No Docker engine, cluster or Slurm runs here, so what is checked is what can
be: every file parses, and what it names exists and means what the code expects.
"""

from __future__ import annotations

import re
import shlex
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


# --- one trial across nodes: torchrun on every node, hpo launch on every rank ------------------------


def _torchrun(argv: list[str]):
    """torchrun's options as torchrun itself parses them, and the hpo command it runs on every rank."""
    from torch.distributed.run import get_args_parser

    options = get_args_parser().parse_args(argv)
    assert options.module and options.training_script == "hpo", "torchrun -m hpo: the same hpo on every rank"
    args = parser().parse_args(options.training_script_args)
    assert args.command == "launch" and args.storage is None, "the storage URL must not be on a command line"
    assert args.gpus is None and args.workers is None, "torchrun places the processes"
    return options, args


def _processes_per_trial(study: str) -> int:
    from hpo.spec import load_spec

    assert (ROOT / study).is_file(), study
    return load_spec(ROOT / study).runtime.processes_per_trial


def test_slurm_multinode_runs_torchrun_once_per_node_with_the_head_node_as_rendezvous():
    script = (ROOT / "deploy/slurm/multinode.sbatch").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.M))
    assert sbatch["ntasks-per-node"] == "1" and sbatch["export"] == "ALL" and sbatch["signal"].startswith("TERM@")
    nodes, gpus = int(sbatch["nodes"]), int(sbatch["gpus-per-node"])
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in code
    assert ': "${HPO_STORAGE:?' in script and not any("postgresql" in line for line in code)
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in code
    srun = shlex.split(re.search(r"^srun .*?(?<!\\)$", "\n".join(code), re.M | re.S).group(0).replace("\\\n", " "))
    assert "--ntasks-per-node=1" in srun and "--kill-on-bad-exit=1" in srun
    options, args = _torchrun(srun[srun.index("torchrun") + 1:])
    assert options.nnodes == str(nodes) and options.nproc_per_node == str(gpus)
    assert options.rdzv_backend == "c10d" and options.rdzv_endpoint.startswith("${head_node}:")
    assert options.max_restarts >= 1
    assert _processes_per_trial(args.study) == nodes * gpus


def test_kubernetes_multinode_job_finds_its_rendezvous_through_a_headless_service():
    service, job = yaml.safe_load_all((ROOT / "deploy/kubernetes/multinode-job.yaml").read_text())
    assert service["kind"] == "Service" and job["kind"] == "Job"
    name = job["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": name}
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["torchrun"]
    options, args = _torchrun(container["args"])
    assert options.nnodes == str(spec["completions"])
    assert options.nproc_per_node == str(container["resources"]["limits"]["nvidia.com/gpu"])
    host, port = options.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{name}-0.{service['metadata']['name']}", "pod 0's stable name under the Service"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert options.rdzv_backend == "c10d" and options.max_restarts >= 1
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["HPO_STORAGE"]["valueFrom"], "the password must come from a secret"
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"]["value"] == "1"
    assert _processes_per_trial(args.study) == spec["completions"] * int(options.nproc_per_node)
