"""The deployment (infra/, the Dockerfile, constraints.txt) is checked against the real tools that will read it.

Nothing here reaches a cloud or builds an image: Kubernetes manifests go through
Kubernetes' own schemas (kubernetes-validate; KubeRay's kinds through their pod
templates plus field checks), the AWS launcher config through Ray's own schema and
defaults, `ray start` / `mlflow server` / `pip install` flags through their installed
parsers, the Dockerfile through the official BuildKit parser, MLflow's auth config through
MLflow's reader, the RayJob runtime environment through Ray's RuntimeEnv, and every
`python -m pipelines.<step> --config <preset>` through the project's modules and config
loader. Requests are held against the named instance types' allocatable; the image's pins
against the versions these tests run with.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
AWS_CLUSTER = INFRA / "aws" / "cluster.yaml"
DOCS = [ROOT / "README.md"]  # where the mini cluster and the cluster job are documented
PRODUCTION_PRESET = "lsun-bedroom-64"  # a preset name (pipelines/presets, package data)
PROJECT_IMAGE_REPO = "123456789012.dkr.ecr.us-west-2.amazonaws.com/dcgan-ray"  # the Dockerfile's image, pushed
# Node types the pods are pinned to: (vCPUs, memory GiB, max pods with the VPC CNI).
INSTANCE_TYPES = {"g5.4xlarge": (16, 64, 234), "m6i.2xlarge": (8, 32, 58)}
MEMORY_REPORTED = 0.96  # a kubelet reports less memory than the instance's nominal size
MLFLOW_ADMIN_SECRET, MLFLOW_JOB_SECRET = "mlflow-auth", "mlflow-job"  # the MLflow admin's; the user jobs log as
DAEMONSET_CPU, DAEMONSET_MEMORY = 0.5, 1 * 2**30  # aws-node, kube-proxy, CSI, device plugin, log agent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


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


def _one_named(kind: str, name: str) -> dict:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in infra/k8s, found {len(found)}"
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
    """`python -m pipelines.<step> --config <preset> [k=v ...]`: the module runs as a script and the config loads."""
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
    load_config(preset, overrides)  # a preset name or a file; raises ConfigError if missing, on a wrong key or value


def _documented_submit_lines() -> list[str]:
    lines = []
    for doc in DOCS:
        if doc.exists():
            lines += [ln.strip() for ln in doc.read_text().splitlines() if ln.strip().startswith("ray job submit")]
    return lines


def _image_refs() -> list[tuple[str, str]]:
    """(where, image) for every container image the deployment names."""
    refs = [("infra/aws/cluster.yaml docker.image", yaml.safe_load(AWS_CLUSTER.read_text())["docker"]["image"])]
    for doc in _k8s_docs():
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = doc.get("spec", {})
        templates = []
        if doc["kind"] == "RayCluster":
            templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        elif doc["kind"] == "RayJob":
            templates = [spec["submitterPodTemplate"]]
        elif "template" in spec:
            templates = [spec["template"]]
        for t in templates:
            refs += [(name, c["image"]) for c in _containers(t["spec"])]
    return refs


def _project_image() -> str:
    return f"{PROJECT_IMAGE_REPO}:{_project()['version']}"


def _dockerfile():
    import dockerfile  # the official (BuildKit) Dockerfile parser, compiled into the wheel

    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def _quantity(value) -> float:
    """A Kubernetes quantity in base units (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m and (not m.group(2) or m.group(2) in units), f"not a quantity: {value!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def _allocatable(instance_type: str) -> tuple[float, float]:
    """(CPU cores, memory bytes) a node of this type offers pods on EKS: capacity less the
    kubelet's reservation (the EKS AMI's formula) and the hard eviction threshold."""
    vcpus, memory_gib, max_pods = INSTANCE_TYPES[instance_type]
    reserved_m = 0.0
    for core in range(vcpus):  # 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest
        reserved_m += 60 if core == 0 else 10 if core == 1 else 5 if core < 4 else 2.5
    capacity_memory = memory_gib * 2**30 * MEMORY_REPORTED  # the kubelet sees less than the nominal size
    reserved_memory = (255 + 11 * max_pods + 100) * 2**20   # kube-reserved + eviction-hard
    return vcpus - reserved_m / 1000, capacity_memory - reserved_memory


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).parts[0] for f in files} >= {"aws", "k8s"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f
    for doc in _k8s_docs():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc


def test_manifests_validate_against_the_kubernetes_schemas():
    """Built-in kinds against Kubernetes' own OpenAPI schemas (kubernetes-validate bundles
    them; strict: unknown fields fail). KubeRay publishes no schema on PyPI, so the pod
    templates inside RayCluster and RayJob are validated as Kubernetes PodTemplates, and
    their own fields are checked by the tests below."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in _k8s_docs():
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("ray.io/"):
            spec = doc["spec"]
            templates = ([spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
                         if doc["kind"] == "RayCluster" else [spec["submitterPodTemplate"]])
            for template in templates:
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": doc["metadata"]["name"]},
                           "template": template}
                kubernetes_validate.validate(wrapped, version, strict=True)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
    assert {"Deployment", "StatefulSet", "NetworkPolicy", "RayCluster", "RayJob"} <= kinds

    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x", "imagePullPolicy": 3}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a wrong manifest
        kubernetes_validate.validate(broken, version, strict=True)


def test_cluster_configs_carry_no_secrets():
    # A cluster gets S3 through roles and its passwords and tokens from Secrets created
    # outside git; values in these files would end up in git and in pods' specs.
    keys = re.compile(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AKIA[0-9A-Z]{16}|\bsecretKey\b", re.I)
    for f in list(INFRA.rglob("*.yaml")) + [ROOT / "Dockerfile"]:
        assert not keys.search(f.read_text()), f"{f} names S3 keys; use an IAM role (instance profile / IRSA)"
    for doc in _k8s_docs():
        assert doc["kind"] != "Secret", f"Secret {doc['metadata']['name']} is committed; create it outside git"
    for spec in _pod_specs() + [_one("RayJob")["spec"]["submitterPodTemplate"]["spec"]]:
        for c in _containers(spec):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET", e["name"]):
                    assert "value" not in e and e["valueFrom"]["secretKeyRef"], f"{e['name']} must come from a Secret"


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
    wanted = load_config(PRODUCTION_PRESET).scaling.num_workers
    assert sum(w["max_workers"] for w in gpu) >= wanted, "the paper's run must fit the cluster"
    for node in config["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), "S3 via an instance role"


def test_aws_cluster_runs_the_image_on_a_pinned_ami_and_installs_nothing():
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    docker = config["docker"]
    assert docker["image"] == _project_image() and not {"head_image", "worker_image"} & set(docker)
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not config.get(key), f"{key}: nodes install nothing at start; bake it into the image"
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not [c for c in commands if re.search(r"\b(pip|conda|uv)\b", c)]
    # Only secrets travel from the laptop; the code is the image's.
    assert set(config["file_mounts"].values()) == {"~/.ray/auth_token", "~/.dcgan/mlflow.env"}
    run_options = " ".join(docker["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    uri = re.search(r"MLFLOW_TRACKING_URI=(\S+)", run_options)
    assert uri and urlparse(uri.group(1)).scheme in ("http", "https")
    assert all(". ~/.dcgan/mlflow.env" in c for c in commands if "ray start" in c), "Ray needs the MLflow credentials"

    text = AWS_CLUSTER.read_text()
    for node in config["available_node_types"].values():
        assert re.fullmatch(r"ami-[0-9a-f]{17}", node["node_config"]["ImageId"]), "pin the AMI: ImageId"
    # The comment says which AMI, where, which driver, and how to pin the current build.
    for fact in ("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)", config["provider"]["region"],
                 "driver", "infra/aws/pin-ami.sh"):
        assert fact in text, f"cluster.yaml does not name {fact!r} beside the ImageId"
    pin = INFRA / "aws" / "pin-ami.sh"
    assert pin.stat().st_mode & 0o111
    assert "base-oss-nvidia-driver-gpu-ubuntu-22.04" in pin.read_text()


def test_aws_ray_start_commands_use_real_flags():
    from ray.scripts.scripts import start

    config = yaml.safe_load(AWS_CLUSTER.read_text())
    seen = 0
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        for part in command.split(";"):
            argv = shlex.split(part)
            if argv[:2] == ["ray", "start"]:
                seen += 1
                params = start.make_context("start", argv[2:]).params  # unknown flags raise
                if params["head"]:
                    assert params["dashboard_host"] == "127.0.0.1", "reach the job API through `ray dashboard`"
    assert seen == 2


def test_every_image_is_the_projects_one_pinned_image():
    import ray

    for where, image in _image_refs():
        if image.startswith("postgres:"):
            # The database's own image, pinned to a patch release (a tag like 15 would move).
            assert re.fullmatch(r"postgres:\d+\.\d+(-\w+)?", image), f"{where}: pin postgres to a release: {image}"
        else:
            assert image == _project_image(), f"{where} runs {image}, not the project's image {_project_image()}"
    assert sum(image == _project_image() for _, image in _image_refs()) >= 5  # launcher, head, GPU, submitter, MLflow
    assert _one("RayCluster")["spec"]["rayVersion"] == ray.__version__

    base = [c for c in _dockerfile() if c.cmd.upper() == "FROM"]
    assert len(base) == 1 and base[0].value[0] == f"rayproject/ray:{ray.__version__}-py311-gpu", base
    assert f"py{sys.version_info.major}{sys.version_info.minor}" == "py311", "the tests run the image's Python"


def test_dockerfile_installs_the_project_with_the_constraints():
    from pip._internal.commands.install import InstallCommand

    commands = list(_dockerfile())
    copied: set[str] = set()
    workdir = None
    installs = 0
    for c in commands:
        op = c.cmd.upper()
        if op == "WORKDIR":
            workdir = c.value[0]
        elif op == "COPY":
            sources = c.value[:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
                copied.add(src.rstrip("/"))
        elif op == "RUN":
            script = c.value[0]
            subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell
            for command in re.split(r"&&|\|\||;|\{|\}", script):
                argv = shlex.split(command)
                if not argv:
                    continue
                assert argv[0] in {"test", "echo", "exit", "python"}, f"RUN uses {argv[0]!r}, not known in the base image"
                if argv[:4] == ["python", "-m", "pip", "install"]:
                    installs += 1
                    options, args = InstallCommand("install", "").parse_args(argv[4:])  # pip's own parser
                    # (options.constraints also holds any this machine's pip configuration adds)
                    assert "constraints.txt" in options.constraints, "install with -c constraints.txt"
                    assert "constraints.txt" in copied, "constraints.txt must be copied before the install"
                    assert not options.editables, "the image installs the project as a package, not editable"
                    for target in args:
                        req = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
                        assert req, f"pip install {target}: the image installs the project only"
                        for extra in filter(None, (req.group(1) or "").split(",")):
                            assert extra in _project()["optional-dependencies"], f"no extra {extra!r}"
                            _assert_pinned(extra)
                elif "pip" in argv:
                    pytest.fail(f"a pip command without the constraints: {command}")
    assert installs == 1
    assert workdir and {"pyproject.toml", "gan", "pipelines", "tune"} <= copied
    # The commit: a build argument the build refuses to run without, kept in the environment.
    args = [c for c in commands if c.cmd.upper() == "ARG"]
    assert any(c.value[0] == "DCGAN_GIT_COMMIT" for c in args), "ARG DCGAN_GIT_COMMIT (no default)"
    runs = " ".join(c.value[0] for c in commands if c.cmd.upper() == "RUN")
    assert 'test -n "$DCGAN_GIT_COMMIT"' in runs
    env = {c.value[i]: c.value[i + 1] for c in commands if c.cmd.upper() == "ENV" for i in range(0, len(c.value), 2)}
    assert env.get("DCGAN_GIT_COMMIT") == "${DCGAN_GIT_COMMIT}"
    version = [c for c in commands if c.cmd.upper() == "LABEL" and "org.opencontainers.image.version" in c.value]
    assert version and f'"{_project()["version"]}"' in version[0].value


def _assert_pinned(extra: str) -> None:
    """Every package of an extra the image installs has its version in constraints.txt."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from tests.pins import read_constraints

    pins = read_constraints()
    for row in _project()["optional-dependencies"][extra]:
        name = canonicalize_name(Requirement(row).name)
        assert name in pins, f"the image installs the '{extra}' extra, but {name} is not pinned in constraints.txt"


def test_tests_run_the_versions_the_image_ships():
    """Every package the project needs is pinned in constraints.txt, at exactly the version
    installed in the environment running these tests."""
    from tests.pins import installed_closure, read_constraints

    pins = read_constraints()
    installed = installed_closure()
    assert set(installed) <= set(pins), f"not pinned: {sorted(set(installed) - set(pins))}"
    drift = {name: (installed[name], pins[name]) for name in installed if installed[name] != pins[name]}
    assert not drift, f"installed != constraints.txt (install with -c constraints.txt): {drift}"
    for name in ("ray", "torch", "mlflow", "psycopg2-binary"):
        assert name in pins


def test_readme_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    installs = [ln for ln in (readme + "\n" + ci).splitlines() if re.search(r"pip install\b", ln)]
    assert installs
    for line in installs:
        for command in re.findall(r"pip install[^&|;]*", line):
            assert "-c constraints.txt" in command, f"install without the pins: {line.strip()}"
    assert "CI_REQUIRE_LSUN=1" in ci and "CI_REQUIRE_POSTGRES=1" in ci and "postgresql" in ci


def test_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    cluster = _one("RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups
    wanted = load_config(PRODUCTION_PRESET).scaling.num_workers
    for g in gpu_groups:
        assert g["minReplicas"] == 0 < g["maxReplicas"]
    assert sum(g["maxReplicas"] for g in gpu_groups) >= wanted


def test_ray_api_demands_the_token_from_a_secret():
    cluster = _one("RayCluster")["spec"]
    assert cluster["authOptions"]["mode"] == "token"
    secret = cluster["authOptions"]["secretName"]
    submitter = _containers(_one("RayJob")["spec"]["submitterPodTemplate"]["spec"])[0]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    # The Secret is made by the documented command, with the key both sides read.
    assert re.search(rf"kubectl create secret generic {secret} -n dcgan --from-literal=auth_token=",
                     (K8S / "namespace.yaml").read_text())


def test_pod_requests_fit_the_instance_types_with_headroom():
    cluster = _one("RayCluster")["spec"]
    preset = load_config(PRODUCTION_PRESET)
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in groups:
        spec = group["template"]["spec"]
        instance_type = spec.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        assert instance_type in INSTANCE_TYPES, f"{name}: pin the node type (nodeSelector) to one of {list(INSTANCE_TYPES)}"
        cpu, memory = _allocatable(instance_type)
        requests = {"cpu": 0.0, "memory": 0.0}
        for c in _containers(spec):
            res = c["resources"]
            for key in requests:
                requests[key] += _quantity(res["requests"][key])
                assert res["limits"].get(key) in (None, res["requests"][key]) or key == "memory", (name, key)
            if "nvidia.com/gpu" in res.get("limits", {}):
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1
                assert instance_type.startswith(("g", "p")), f"{name} asks for a GPU on {instance_type}"
                assert requests["cpu"] >= preset.scaling.cpus_per_worker, "a trainer worker must fit its CPUs"
        assert requests["cpu"] <= cpu - DAEMONSET_CPU, \
            f"{name}: {requests['cpu']} CPU requested, {instance_type} allocates {cpu:.2f} less {DAEMONSET_CPU} for daemonsets"
        assert requests["memory"] <= memory - DAEMONSET_MEMORY, \
            f"{name}: {requests['memory'] / 2**30:.1f} GiB requested, {instance_type} allocates {memory / 2**30:.1f} GiB less daemonsets"
    # The arithmetic bites: the whole machine (the old 16 CPU / 64 Gi on a g5.4xlarge) does not fit.
    assert 16 > _allocatable("g5.4xlarge")[0] and 64 * 2**30 > _allocatable("g5.4xlarge")[1]


def test_every_pod_uses_the_declared_service_account_and_tracking_server():
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in _k8s_docs() if d["kind"] == "ServiceAccount"}
    service = _one_named("Service", "mlflow")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    port = service["spec"]["ports"][0]["port"]
    cluster = _one("RayCluster")
    namespace = cluster["metadata"]["namespace"]
    ray_specs = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for spec in ray_specs + [_one("Deployment")["spec"]["template"]["spec"]]:
        assert (namespace, spec.get("serviceAccountName")) in accounts, "S3 through the service account's IAM role"
    for spec in ray_specs:
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{host}:{port}"
        for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": MLFLOW_JOB_SECRET, "key": key}


def _secret_refs(pod_spec: dict) -> set[str]:
    return {e["valueFrom"]["secretKeyRef"]["name"] for c in _containers(pod_spec) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_jobs_log_as_the_job_user_and_only_the_mlflow_pod_holds_the_admin():
    """Least privilege: the admin's Secret is in the MLflow server's pod alone; Ray pods get the job
    user's, and the MLflow pod sets that user up (pipelines/records/job_user.py, the command
    infra/local/start.sh runs and tests/test_mlflow_job_user.py checks on a real server)."""
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    from pipelines.records.job_user import build_parser

    mlflow_pod = _one("Deployment")["spec"]["template"]["spec"]
    holders = [spec for spec in _pod_specs() + [_one("RayJob")["spec"]["submitterPodTemplate"]["spec"]]
               if MLFLOW_ADMIN_SECRET in _secret_refs(spec)]
    assert holders == [mlflow_pod], "the MLflow admin's Secret belongs in the MLflow server's pod only"
    assert MLFLOW_JOB_SECRET in _secret_refs(mlflow_pod)

    container = mlflow_pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    script = container["lifecycle"]["postStart"]["exec"]["command"]
    assert script[:2] == ["sh", "-c"]
    words = shlex.split(script[2])
    assignments = dict(w.split("=", 1) for w in words[:words.index("exec")])
    argv = words[words.index("exec") + 1:]
    assert argv[:3] == ["python", "-m", "pipelines.records.job_user"]
    args = build_parser().parse_args(argv[3:])  # unknown flags exit
    assert args.wait >= 60, "the hook runs as the server starts: it must wait for it"
    assert load_config(PRODUCTION_PRESET).tracking.experiment in args.experiment
    # The job user's credentials from the job Secret, the admin's as the server reads them.
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        source = re.search(rf'\b{name}="\$(\w+)"', script[2])  # from a variable, quoted; no value on a command line
        assert source, f"{name}: set it from the job Secret's variable"
        assert env[source.group(1)]["valueFrom"]["secretKeyRef"] == {"name": MLFLOW_JOB_SECRET, "key": key}
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == MLFLOW_ADMIN_SECRET
    uri = urlparse(assignments["MLFLOW_TRACKING_URI"])
    port = container["ports"][0]["containerPort"]
    assert uri.hostname == "127.0.0.1" and uri.port == port
    params = server.make_context("server", container["command"][2:]).params
    assert is_allowed_host_header([h.strip() for h in params["allowed_hosts"].split(",")], uri.netloc)
    # The Secret is made by the documented command, with the keys both sides read.
    assert re.search(rf"kubectl create secret generic {MLFLOW_JOB_SECRET} -n dcgan --from-literal=username=\S+ \\\n"
                     r"#\s+--from-literal=password=", (K8S / "namespace.yaml").read_text())


def test_mlflow_server_runs_basic_auth_on_postgres(tmp_path, monkeypatch):
    from mlflow.cli import server
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    argv = container["command"] + container.get("args", [])
    assert argv[:2] == ["mlflow", "server"]
    params = server.make_context("server", argv[2:]).params  # unknown flags raise
    assert params["app_name"] == "basic-auth"
    assert params["host"] == "0.0.0.0", "MLflow 3 serves localhost only unless told otherwise"
    assert urlparse(params["backend_store_uri"]).scheme == "postgresql+psycopg2"
    assert params["artifacts_destination"].startswith("s3://")
    env = {e["name"]: e for e in container["env"]}
    # Who the server is: everything secret from Secrets, the database through libpq's variables.
    for name, (secret, key) in {"MLFLOW_AUTH_ADMIN_USERNAME": ("mlflow-auth", "username"),
                                "MLFLOW_AUTH_ADMIN_PASSWORD": ("mlflow-auth", "password"),
                                "MLFLOW_FLASK_SERVER_SECRET_KEY": ("mlflow-auth", "flask-secret-key"),
                                "PGHOST": ("mlflow-db", "host"), "PGPORT": ("mlflow-db", "port"),
                                "PGUSER": ("mlflow-db", "username"), "PGPASSWORD": ("mlflow-db", "password")}.items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}, name
    assert "@" not in params["backend_store_uri"], "no user or password in the URI"
    # The auth app's configuration, read by MLflow's own reader from the mounted ConfigMap.
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}
    config_path = PurePosixPath(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    (volume_name,) = [n for n, p in mount.items() if PurePosixPath(p) == config_path.parent]
    configmap = _one_named("ConfigMap", volume[volume_name]["configMap"]["name"])
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(configmap["data"][config_path.name])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    auth = read_auth_config()
    assert urlparse(auth.database_uri).scheme == "postgresql+psycopg2" and auth.auth_cache_ttl_seconds > 0

    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert "*" not in allowed, "allowing every Host header reopens DNS rebinding"
    service = _one_named("Service", "mlflow")
    name, ns, port = service["metadata"]["name"], service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    ingress_host = _one("Ingress")["spec"]["rules"][0]["host"]
    for host in (f"{name}.{ns}.svc.cluster.local:{port}", f"{name}:{port}", f"localhost:{port}", ingress_host):
        assert is_allowed_host_header(allowed, host), f"MLflow would reject Host: {host}"
    assert not is_allowed_host_header(allowed, f"{name}.attacker.example:{port}")
    probe_port = container["readinessProbe"]["httpGet"]["port"]
    assert probe_port in {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health", "the one route the auth app leaves open"


def test_only_ray_pods_and_the_ingress_reach_mlflow_and_only_mlflow_reaches_postgres():
    policies = {d["metadata"]["name"]: d["spec"] for d in _k8s_docs() if d["kind"] == "NetworkPolicy"}
    deployment = _one("Deployment")
    mlflow_labels = deployment["spec"]["template"]["metadata"]["labels"]
    cluster_name = _one("RayCluster")["metadata"]["name"]

    def selecting(labels):
        return [p for p in policies.values() if p["podSelector"]["matchLabels"].items() <= labels.items()]

    (policy,) = selecting(mlflow_labels)
    assert policy["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"ray.io/cluster": cluster_name}}} in sources  # KubeRay labels its pods so
    ingress_peers = [p for p in sources if "namespaceSelector" in p]
    assert len(sources) == 2 and len(ingress_peers) == 1 and "podSelector" in ingress_peers[0]
    ingress = _one("Ingress")
    assert ingress["spec"]["ingressClassName"] in \
        ingress_peers[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "mlflow"

    statefulset = _one("StatefulSet")
    (db_policy,) = selecting(statefulset["spec"]["template"]["metadata"]["labels"])
    assert [peer for rule in db_policy["ingress"] for peer in rule["from"]] == [{"podSelector": {"matchLabels": mlflow_labels}}]
    db_env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert "CREATE DATABASE mlflow_auth" in _one_named("ConfigMap", "mlflow-postgres-init")["data"]["10-mlflow-auth.sql"]


def test_rayjob_runs_the_documented_command_on_the_raycluster():
    job = _one("RayJob")["spec"]
    cluster = _one("RayCluster")
    assert job["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert _one("RayJob")["metadata"]["namespace"] == cluster["metadata"]["namespace"]

    entrypoint = job["entrypoint"]
    _check_pipeline_command(entrypoint)
    assert PRODUCTION_PRESET in entrypoint

    # The pipeline's line (a resume of training alone is documented too, and is not the RayJob's).
    production = [ln for ln in _documented_submit_lines() if PRODUCTION_PRESET in ln and "pipelines.steps.run" in ln]
    assert production, f"README.md must show the `ray job submit` line for {PRODUCTION_PRESET}"
    for line in production:
        assert " -- " in line, line
        submit, command = line.split(" -- ", 1)
        assert "--working-dir ." in submit
        assert command == entrypoint, f"documented: {command!r}\nRayJob:     {entrypoint!r}"


def test_the_rayjob_retries_a_named_run():
    """A retry after a lost head or driver continues the preset's named run, never starts over."""
    from pipelines.config import load_config

    assert _one("RayJob")["spec"]["backoffLimit"] > 0
    assert load_config(PRODUCTION_PRESET).train.run_name, f"{PRODUCTION_PRESET} must name its run (train.run_name)"


def test_every_documented_submit_line_runs_a_real_step_and_preset():
    lines = _documented_submit_lines()
    assert lines
    for line in lines:
        _check_pipeline_command(line.split(" -- ", 1)[1])


def test_rayjob_installs_nothing_is_bounded_and_carries_the_commit():
    from ray.runtime_env import RuntimeEnv

    job = _one("RayJob")["spec"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert not {"pip", "conda", "uv", "py_modules"} & set(runtime_env), "no install at job start: the image has it all"
    workdir = next(c.value[0] for c in _dockerfile() if c.cmd.upper() == "WORKDIR")
    assert runtime_env["working_dir"] == workdir, "the job runs the image's copy of the project"
    # Ray's validation (field names, values); the image's folder is this checkout here.
    RuntimeEnv(**(runtime_env | {"working_dir": str(ROOT)}))
    assert 3600 <= job["activeDeadlineSeconds"] <= 7 * 86400
    # The commit: the image's DCGAN_GIT_COMMIT (a required build argument), which the job
    # must not override with something else.
    assert "DCGAN_GIT_COMMIT" not in runtime_env.get("env_vars", {})
    env = {c.value[i]: c.value[i + 1] for c in _dockerfile() if c.cmd.upper() == "ENV" for i in range(0, len(c.value), 2)}
    assert "DCGAN_GIT_COMMIT" in env
    assert _containers(job["submitterPodTemplate"]["spec"])[0]["image"] == _project_image()


def test_no_reference_to_a_missing_file():
    path = re.compile(r"(?<![\w/.$-])((?:docs|infra|configs|tests|pipelines|gan|tune|benchmarks|\.ci)/[\w./-]*\w)")
    files = sorted(INFRA.rglob("*")) + [ROOT / "Dockerfile", ROOT / "README.md", ROOT / ".ci" / "run"]
    checked = 0
    for f in files:
        if not f.is_file():
            continue
        for ref in path.findall(f.read_text()):
            if ref.startswith(("infra/k8s/", "infra/aws/", "infra/local/", "configs/", "docs/", "tests/", ".ci/")) \
                    or "." in PurePosixPath(ref).name:
                checked += 1
                assert (ROOT / ref).exists(), f"{f.relative_to(ROOT)} names {ref}, which does not exist"
    assert checked >= 10


def test_local_scripts_are_valid_bash():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert {s.name for s in scripts} >= {"start.sh", "stop.sh", "pin-ami.sh"}
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)


# NVIDIA's minimum driver per CUDA major under minor version compatibility ("CUDA Toolkit 11.x,
# 12.x, and 13.x Minimum and Maximum Required Driver Versions",
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
MIN_DRIVER_FOR_CUDA_MAJOR = {11: 450, 12: 525, 13: 580}
CUDA_NOTE = re.compile(r"torch (\S+) \(PyPI wheel\) brings its own CUDA (\d+)\.(\d+) runtime; "
                       r"nodes need an NVIDIA driver >= (\d+)")


def _wheel_cuda(requirements: list[str]) -> tuple[int, int]:
    """The CUDA (major, minor) a torch wheel was built with, from the CUDA runtime it requires:
    cuda-toolkit==13.0.x (CUDA 13 wheels) or nvidia-cuda-runtime-cu12==12.8.x (CUDA 12 wheels)."""
    for req in requirements:
        m = re.match(r"(?:cuda-toolkit|nvidia-cuda-runtime(?:-cu\d+)?)\b[^=;]*==(\d+)\.(\d+)", req)
        if m:
            return int(m.group(1)), int(m.group(2))
    raise AssertionError(f"torch's metadata names no CUDA runtime: {requirements}")


def test_the_image_states_the_cuda_and_driver_of_its_torch_wheel():
    """The Dockerfile, the RayCluster and the README say which CUDA the pinned torch wheel
    brings and the driver it needs; a torch bump to another CUDA without updating them fails."""
    import importlib.metadata

    from tests.pins import read_constraints

    pinned = read_constraints()["torch"]
    installed = importlib.metadata.version("torch")
    assert installed.split("+")[0] == pinned, "the tests run the pinned torch (install with -c constraints.txt)"
    major, minor = _wheel_cuda(importlib.metadata.requires("torch") or [])
    assert _wheel_cuda(["nvidia-cuda-runtime-cu12==12.8.90; platform_system == 'Linux'"]) == (12, 8)
    for path in (ROOT / "Dockerfile", K8S / "raycluster.yaml", ROOT / "README.md"):
        notes = CUDA_NOTE.findall(path.read_text().replace("\n# ", " ").replace("\n", " "))
        assert notes, f"{path.relative_to(ROOT)} must state: torch X (PyPI wheel) brings its own CUDA M.N runtime; ..."
        for version, m, n, driver in notes:
            assert version == pinned, f"{path.relative_to(ROOT)} names torch {version}, constraints.txt pins {pinned}"
            assert (int(m), int(n)) == (major, minor), \
                f"{path.relative_to(ROOT)} says CUDA {m}.{n}; torch {pinned}'s wheel requires CUDA {major}.{minor}"
            assert int(driver) == MIN_DRIVER_FOR_CUDA_MAJOR[major], \
                f"{path.relative_to(ROOT)}: CUDA {major}.x needs driver >= {MIN_DRIVER_FOR_CUDA_MAJOR[major]}, not {driver}"
    assert "cuda-compatibility/minor-version-compatibility" in (ROOT / "Dockerfile").read_text(), "cite the source"
