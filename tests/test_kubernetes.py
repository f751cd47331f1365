"""The Kubernetes manifests (deploy/kubernetes/) as a cluster's API server would take them: RayJob and
its RayCluster against KubeRay's own CRD schemas (v1.7.0's, vendored in tests/data/kuberay by
tools/vendor_kuberay_crds.py), every Kubernetes object and pod template against Kubernetes' schemas
(kubernetes-validate, strict), and what the search needs of them (volumes, /dev/shm, no exposure)."""

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "data" / "kuberay"


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def strict(schema):
    """A CRD's structural schema as `kubectl apply --validate=strict` reads it: a field no `properties` names
    is an error (the API server would drop it), unless the schema keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


def crd_errors(doc: dict, plural: str) -> list[str]:
    schema = strict(json.loads((CRDS / f"{plural}.schema.json").read_text()))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_vendored_schemas_are_kuberays_and_catch_a_wrong_field():
    for plural, kind in (("rayjobs", "RayJob"), ("rayclusters", "RayCluster")):
        source = json.loads((CRDS / f"{plural}.schema.json").read_text())["x-source"]
        assert source["kind"] == kind and source["tag"] == "v1.7.0" and len(source["sha256"]) == 64
    (job,) = documents("rayjob.yaml")
    broken = json.loads(json.dumps(job))
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # KubeRay: strings only
    broken["spec"]["backofLimit"] = 3  # a misspelt field
    errors = crd_errors(broken, "rayjobs")
    assert any("num-cpus" in e for e in errors) and any("backofLimit" in e for e in errors), errors


def test_the_rayjob_and_its_raycluster_pass_kuberays_crd_schemas():
    (job,) = documents("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert crd_errors(job, "rayjobs") == []
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "tuner-app"},
               "spec": job["spec"]["rayClusterSpec"]}  # the same cluster, as a RayCluster of its own
    assert crd_errors(cluster, "rayclusters") == []


def test_every_kubernetes_object_and_pod_template_passes_kubernetes_schemas():
    for name in ("volumes.yaml", "networkpolicy.yaml", "mnist-loader.yaml"):
        for doc in documents(name):
            k8s_validate(doc)
    (job,) = documents("rayjob.yaml")
    spec = job["spec"]["rayClusterSpec"]
    templates = [job["spec"]["submitterPodTemplate"], spec["headGroupSpec"]["template"],
                 *[g["template"] for g in spec["workerGroupSpecs"]]]
    for template in templates:
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})


def test_the_job_resumes_what_it_searched_and_mounts_what_the_search_needs():
    (job,) = documents("rayjob.yaml")
    search, retrain = (command.split() for command in job["spec"]["entrypoint"].split("&&"))
    assert search[:2] == ["tuner-app", "search"] and retrain[:2] == ["tuner-app", "retrain-best"]
    assert "--overwrite" not in search + retrain  # a retried driver resumes
    assert {"--ray", "--device", "--gpus-per-task"} <= set(search) and search[search.index("--device") + 1] == "gpu"
    assert retrain[retrain.index("--device") + 1] == "cpu"  # the head has no GPU
    for command in (search, retrain):
        assert command[command.index("--directory") + 1] == "/work/tuning_dirs"
        assert command[command.index("--project") + 1] == "mnist"
    entry = search
    assert job["spec"]["backoffLimit"] >= 1
    spec = job["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    assert entry[entry.index("--directory") + 1] == "/work/tuning_dirs" in mounts
    assert entry[entry.index("--data") + 1].startswith("/data/") and mounts["/data"]["readOnly"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in head["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {d["metadata"]["name"] for d in documents("volumes.yaml")}
    (loader,) = documents("mnist-loader.yaml")
    assert loader["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "tuner-app-mnist"
    assert not loader["spec"]["containers"][0]["volumeMounts"][0].get("readOnly")  # the one that fills it
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        shm = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory"  # Ray's object store, not a 64 MB /dev/shm
        assert "/dev/shm" in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "tuner-app"
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    for worker in spec["workerGroupSpecs"]:
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
        assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert [f"ray>={spec['rayVersion'].removesuffix('.0')}"] == extra  # the Ray the image installs


def test_the_head_is_not_exposed_beyond_the_search():
    (job,) = documents("rayjob.yaml")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP" and spec["authOptions"]["mode"] == "token"
    assert "dashboard-host" not in spec["headGroupSpec"]["rayStartParams"]
    (policy,) = documents("networkpolicy.yaml")
    label = {"app.kubernetes.io/name": "tuner-app"}
    assert policy["spec"]["podSelector"]["matchLabels"] == label and policy["spec"]["policyTypes"] == ["Ingress"]
    ours, operator = policy["spec"]["ingress"]
    assert ours == {"from": [{"podSelector": {"matchLabels": label}}]}
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]  # the operator follows the job on the dashboard
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert job["spec"]["submitterPodTemplate"]["metadata"]["labels"] == label  # it reaches the head's dashboard
