"""Vendor KubeRay's published CRD schemas as test data: tests/data/kuberay/*.schema.json.

    python tools/vendor_kuberay_crds.py PATH_TO_KUBERAY_CHECKOUT v1.7.0

Reads `ray-operator/config/crd/bases/ray.io_{rayjobs,rayclusters}.yaml` at the given tag (with git),
keeps the `ray.io/v1` version's openAPIV3Schema and drops its `description` texts (a tenth of the
size; validation does not read them), and writes one JSON file per kind with where it came from
(repository, tag, path, the source file's SHA-256). tests/test_kubernetes.py validates the
manifests under deploy/kubernetes/ against them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "kuberay"
KINDS = {"RayJob": "rayjobs", "RayCluster": "rayclusters"}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(checkout: str, tag: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, plural in KINDS.items():
        path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        source = subprocess.run(["git", "-C", checkout, "show", f"{tag}:{path}"], capture_output=True, check=True).stdout
        crd = yaml.safe_load(source)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = {"x-source": {"repository": "https://github.com/ray-project/kuberay", "tag": tag, "path": path,
                               "sha256": hashlib.sha256(source).hexdigest(), "kind": kind, "version": "ray.io/v1"},
                  **_strip(version["schema"]["openAPIV3Schema"])}
        target = OUT / f"{plural}.schema.json"
        target.write_text(json.dumps(schema, indent=None, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"wrote {target.relative_to(OUT.parents[2])} ({target.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
