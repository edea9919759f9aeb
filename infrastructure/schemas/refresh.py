"""Re-vendor the JSON schemas under infrastructure/schemas/ from the PyPI packages that ship them.

Offline tests validate our manifests against these copies; nothing here runs during tests.

    pip download --no-deps -d /tmp/wheels check-jsonschema==0.39.0 kubernetes-validate==1.37.0
    python infrastructure/schemas/refresh.py /tmp/wheels

Copies compose-spec.json (+ its Apache-2.0 licence) from check-jsonschema, and for Kubernetes the
strict per-kind schemas of K8S_VERSION plus a _definitions.json pruned to the definitions those kinds
reach (the full file is 1.4 MB) from kubernetes-validate.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.33.0"
K8S_KINDS = (
    "configmap-v1",
    "deployment-apps-v1",
    "horizontalpodautoscaler-autoscaling-v2",
    "job-batch-v1",
    "namespace-v1",
    "poddisruptionbudget-policy-v1",
    "secret-v1",
    "service-v1",
)
REF = re.compile(r'"\$ref":\s*"[^"#]*#/\$defs/([^"]+)"')


def _wheel(folder: Path, prefix: str) -> zipfile.ZipFile:
    (path,) = sorted(folder.glob(f"{prefix}-*.whl"))[-1:]
    return zipfile.ZipFile(path)


def _reachable(defs: dict[str, Any], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(REF.findall(json.dumps(defs[name])))
    return seen


def main(folder: Path) -> None:
    with _wheel(folder, "check_jsonschema") as whl:
        vendor = "check_jsonschema/builtin_schemas/vendor/"
        (HERE / "compose-spec.json").write_bytes(whl.read(vendor + "compose-spec.json"))
        (HERE / "LICENSE.compose-spec").write_bytes(whl.read(vendor + "licenses/LICENSE.compose-spec"))
    out = HERE / f"k8s-{K8S_VERSION}"
    out.mkdir(exist_ok=True)
    with _wheel(folder, "kubernetes_validate") as whl:
        src = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/"
        roots: set[str] = set()
        for kind in K8S_KINDS:
            text = whl.read(src + kind + ".json").decode()
            (out / f"{kind}.json").write_text(text)
            roots.update(REF.findall(text))
        full = json.loads(whl.read(src + "_definitions.json"))
        keep = _reachable(full["$defs"], roots)
        full["$defs"] = {k: v for k, v in sorted(full["$defs"].items()) if k in keep}
        (out / "_definitions.json").write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
        licence = next(n for n in whl.namelist() if n.endswith("licenses/LICENSE"))
        (out / "LICENSE").write_bytes(whl.read(licence))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
