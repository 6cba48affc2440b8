"""The cluster files in infra/ are checked against the real tools that will read them.

Nothing here reaches a cloud: the AWS launcher config goes through Ray's own schema and
defaults, `ray start` / `mlflow server` flags through their installed command parsers,
the RayJob runtime environment through Ray's RuntimeEnv, MLflow's allowed hosts through
MLflow's own host check, and every `python -m pipelines.<step> --config <preset>` through
the project's modules and config loader. The RayJob runs exactly the documented line.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
AWS_CLUSTER = INFRA / "aws" / "cluster.yaml"
DOCS = [ROOT / "README.md"]  # where the mini cluster and the cluster job are documented
PRODUCTION_PRESET = "configs/lsun-bedroom-64.yaml"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> dict[str, Requirement]:
    return {Requirement(r).name: Requirement(r) for r in _project()["dependencies"]}


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def _one(kind: str) -> dict:
    found = [d for d in _k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in infra/k8s, found {len(found)}"
    return found[0]


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def _pod_specs() -> list[dict]:
    specs = []
    for doc in _k8s_docs():
        spec = doc.get("spec", {})
        if doc["kind"] == "RayCluster":
            specs.append(spec["headGroupSpec"]["template"]["spec"])
            specs += [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
        elif "template" in spec:
            specs.append(spec["template"]["spec"])
    return specs


def _check_pipeline_command(command: str) -> None:
    """`python -m pipelines.<step> --config <yaml> [k=v ...]`: the module runs as a script and the config loads."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    module = argv[2]
    assert module.startswith("pipelines."), command
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{command}: no module {module}"
    assert 'if __name__ == "__main__"' in Path(spec.origin).read_text(), f"{module} does not run with python -m"
    rest = argv[3:]
    assert rest[0] == "--config", command
    preset, overrides = rest[1], [a for a in rest[2:] if "$" not in a]  # $VAR: the user's shell fills it in
    assert (ROOT / preset).is_file(), f"{command}: {preset} does not exist"
    load_config(ROOT / preset, overrides)  # raises ConfigError on a wrong key or value


def _documented_submit_lines() -> list[str]:
    lines = []
    for doc in DOCS:
        if doc.exists():
            lines += [ln.strip() for ln in doc.read_text().splitlines() if ln.strip().startswith("ray job submit")]
    return lines


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).parts[0] for f in files} >= {"aws", "k8s"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f
    for doc in _k8s_docs():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc


def test_cluster_configs_carry_no_keys():
    # A cluster gets S3 through roles; keys in these files would end up in git and in pods' specs.
    keys = re.compile(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AKIA[0-9A-Z]{16}|secretKey", re.I)
    for f in INFRA.rglob("*.yaml"):
        assert not keys.search(f.read_text()), f"{f} names S3 keys; use an IAM role (instance profile / IRSA)"


def test_aws_cluster_is_a_valid_ray_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(AWS_CLUSTER.read_text())
    config = prepare_config(raw)  # Ray's own defaults for the aws provider, offline
    validate_config(config)  # Ray's JSON schema: a misspelt key fails here

    head = config["available_node_types"][config["head_node_type"]]
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head is a CPU node"
    gpu = [w for w in workers.values() if w["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(w["min_workers"] == 0 < w["max_workers"] for w in gpu), "GPU workers autoscale from zero"
    wanted = load_config(ROOT / PRODUCTION_PRESET).scaling.num_workers
    assert sum(w["max_workers"] for w in gpu) >= wanted, "the paper's run must fit the cluster"
    for node in config["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), "S3 via an instance role"


def test_aws_cluster_installs_this_checkout_and_knows_the_tracking_server():
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    # `ray up` runs from the repository root, so "." is this checkout.
    remote_repo = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert len(remote_repo) == 1, config["file_mounts"]
    assert any(re.search(rf"pip install .*{re.escape(remote_repo[0])}\b", c) for c in config["setup_commands"])
    assert not {".venv", "runs"} - set(config["rsync_exclude"]), "never copy the local venv or run outputs"
    run_options = " ".join(config["docker"]["run_options"])
    uri = re.search(r"MLFLOW_TRACKING_URI=(\S+)", run_options)
    assert uri and urlparse(uri.group(1)).scheme in ("http", "https")


def test_aws_ray_start_commands_use_real_flags():
    from ray.scripts.scripts import start

    config = yaml.safe_load(AWS_CLUSTER.read_text())
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        for part in command.split(";"):
            argv = shlex.split(part)
            if argv[:2] == ["ray", "start"]:
                params = start.make_context("start", argv[2:]).params  # unknown flags raise
                if params["head"]:
                    assert params["dashboard_host"] == "127.0.0.1", "reach the job API through `ray dashboard`"


def _image_versions() -> list[tuple[str, str]]:
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    images = [config["docker"]["head_image"], config["docker"]["worker_image"]]
    images += [c["image"] for spec in _pod_specs() for c in _containers(spec)]
    return [tuple(image.rsplit(":", 1)) for image in images]


def test_images_are_official_and_match_the_project_versions():
    import mlflow
    import ray

    requirements = _requirements()
    python_tag = "py311"
    seen = set()
    for repo, tag in _image_versions():
        seen.add(repo)
        if repo == "rayproject/ray":
            # Ray's tag grammar: <version>-py<XY>[-gpu|-cu<XYZ>]; a job's Ray must equal the cluster's.
            m = re.fullmatch(r"(\d+\.\d+\.\d+)-(py3\d+)(-gpu|-cu\d+)?", tag)
            assert m, f"rayproject/ray:{tag} is not an official tag form"
            assert m.group(1) == ray.__version__, f"cluster Ray {m.group(1)} != the project's Ray {ray.__version__}"
            assert Version(m.group(1)) in requirements["ray"].specifier
            assert m.group(2) == python_tag
        elif repo == "ghcr.io/mlflow/mlflow":
            m = re.fullmatch(r"v(\d+\.\d+\.\d+)(-full)?", tag)
            assert m, f"ghcr.io/mlflow/mlflow:{tag} is not an official tag form"
            assert m.group(2), "the S3 artifact store needs boto3: use the -full image"
            assert Version(m.group(1)) in requirements["mlflow"].specifier
            assert Version(m.group(1)).major == Version(mlflow.__version__).major
        else:
            pytest.fail(f"unexpected image {repo}:{tag}")
    assert seen == {"rayproject/ray", "ghcr.io/mlflow/mlflow"}
    gpu_images = [tag for repo, tag in _image_versions() if tag.endswith("-gpu")]
    assert gpu_images, "GPU workers need a -gpu image"


def test_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    cluster = _one("RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups
    wanted = load_config(ROOT / PRODUCTION_PRESET).scaling.num_workers
    for g in gpu_groups:
        assert g["minReplicas"] == 0 < g["maxReplicas"]
    assert sum(g["maxReplicas"] for g in gpu_groups) >= wanted


def test_every_pod_uses_the_declared_service_account_and_tracking_server():
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in _k8s_docs() if d["kind"] == "ServiceAccount"}
    service = _one("Service")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    port = service["spec"]["ports"][0]["port"]
    cluster = _one("RayCluster")
    for spec in _pod_specs():
        assert spec.get("serviceAccountName"), "every pod gets S3 through a service account's IAM role"
    namespace = cluster["metadata"]["namespace"]
    for spec in _pod_specs():
        assert (namespace, spec["serviceAccountName"]) in accounts
    ray_specs = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for spec in ray_specs:
        env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI") == f"http://{host}:{port}"


def test_mlflow_server_flags_exist_and_allow_the_service_name():
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = _one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"] + container.get("args", [])
    assert argv[:2] == ["mlflow", "server"]
    params = server.make_context("server", argv[2:]).params  # unknown flags raise
    assert params["host"] == "0.0.0.0", "MLflow 3 serves localhost only unless told otherwise"
    assert str(params["workers"]) == "1", "one worker on a SQLite backend"
    assert params["backend_store_uri"].startswith("sqlite:////")
    mount = container["volumeMounts"][0]["mountPath"]
    assert params["backend_store_uri"].startswith(f"sqlite:///{mount}/"), "the database lives on the volume"
    assert params["artifacts_destination"].startswith("s3://")
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert "*" not in allowed, "allowing every Host header reopens DNS rebinding"
    service = _one("Service")
    name, ns, port = service["metadata"]["name"], service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    for host in (f"{name}.{ns}.svc.cluster.local:{port}", f"{name}:{port}", f"localhost:{port}"):
        assert is_allowed_host_header(allowed, host), f"MLflow would reject Host: {host}"
    assert not is_allowed_host_header(allowed, f"{name}.attacker.example:{port}")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    probe_port = container["readinessProbe"]["httpGet"]["port"]
    assert probe_port in {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}


def test_rayjob_runs_the_documented_command_on_the_raycluster():
    job = _one("RayJob")["spec"]
    cluster = _one("RayCluster")
    assert job["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert _one("RayJob")["metadata"]["namespace"] == cluster["metadata"]["namespace"]

    entrypoint = job["entrypoint"]
    _check_pipeline_command(entrypoint)
    assert PRODUCTION_PRESET in entrypoint

    production = [ln for ln in _documented_submit_lines() if PRODUCTION_PRESET in ln]
    assert production, f"README.md must show the `ray job submit` line for {PRODUCTION_PRESET}"
    for line in production:
        assert " -- " in line, line
        submit, command = line.split(" -- ", 1)
        assert "--working-dir ." in submit
        assert command == entrypoint, f"documented: {command!r}\nRayJob:     {entrypoint!r}"


def test_every_documented_submit_line_runs_a_real_step_and_preset():
    lines = _documented_submit_lines()
    assert lines
    for line in lines:
        _check_pipeline_command(line.split(" -- ", 1)[1])


def test_rayjob_runtime_env_is_valid_and_installs_the_project_dependencies():
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(_one("RayJob")["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's validation: field names, working_dir URI form
    assert runtime_env["working_dir"].startswith("s3://") and runtime_env["working_dir"].endswith(".zip")
    installed = {Requirement(p).name: Requirement(p) for p in runtime_env["pip"]["packages"]}
    wanted = {name: req for name, req in _requirements().items() if name != "ray"}  # the image brings Ray
    assert "ray" not in installed, "the job must use the image's Ray, the same as the cluster's"
    assert set(installed) == set(wanted), f"missing {set(wanted) - set(installed)}, extra {set(installed) - set(wanted)}"
    for name, req in wanted.items():
        assert installed[name].specifier == req.specifier, f"{name}: {installed[name]} != pyproject's {req}"


def test_local_scripts_are_valid_bash():
    import subprocess

    for script in (INFRA / "local").glob("*.sh"):
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
