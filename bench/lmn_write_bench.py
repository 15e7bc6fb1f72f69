"""What one LocalModelNode write costs the API server, by object size and CRD schema variant.

The control-plane benchmark at 1,000 caches is bound by API-server CPU spent on LocalModelNode writes
(spec entries by the manager, status by the agent). This isolates one write: a real kube-apiserver, one
LocalModelNode holding ``MODELS`` entries with every model Downloaded, and ``WRITES`` writes of each
kind, shaped exactly as the manager and agent send them (a JSON patch ``test``+``add`` of
``spec.localModels``; one ``add /status`` on the subresource). It reports API-server CPU per write,
the object's size with and without ``managedFields``, for each variant of the CRD:

- ``granular``: ``status.modelStatus`` and ``status.modelStatusDetails`` as plain maps, so the API
  server tracks ownership of every key (managedFields lists each model, per writer);
- ``atomic``: the same maps marked ``x-kubernetes-map-type: atomic``, so each is one field to the
  field manager. The JSON on the wire is the same; only server-side-apply merge granularity differs.

Run: ``make bench-lmn-write`` (``BENCH_MODELS``, ``BENCH_WRITES``); writes
``bench/results/lmn_write.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS_DIR, Results, proc_cpu_seconds

from localcache.testing.envtest import ControlPlane

log = logging.getLogger("bench.lmn_write")

CRD_FILE = (
    Path(__file__).resolve().parents[1] / "manifests" / "crds" / "serving.kserve.io_localmodelnodes.yaml"
)
BASE = "/apis/serving.kserve.io/v1alpha1/localmodelnodes"
MAP_FIELDS = ("modelStatus", "modelStatusDetails")


def spec_entries(n: int) -> list[dict[str, Any]]:
    return [
        {
            "sourceModelUri": f"hf://bench-org/model-{i:04d}",
            "modelName": f"model-{i:04d}",
            "nodeGroup": "gpu",
        }
        for i in range(n)
    ]


def status(n: int, bump: int = 0) -> dict[str, Any]:
    t = datetime(2026, 12, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "modelStatus": {f"model-{i:04d}": "ModelDownloaded" for i in range(n)},
        "modelStatusDetails": {
            f"model-{i:04d}": {
                "bytes": 1_000_000 + i + (bump if i == 0 else 0),
                "startTime": t,
                "completionTime": t,
            }
            for i in range(n)
        },
    }


def crd_variant(doc: dict[str, Any], variant: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    props = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for name in MAP_FIELDS:
        if variant == "atomic":
            props[name]["x-kubernetes-map-type"] = "atomic"
        else:
            props[name].pop("x-kubernetes-map-type", None)
    return doc


def measure(plane: ControlPlane, results: Results, variant: str, models: int, writes: int) -> None:
    crd = crd_variant(yaml.safe_load(CRD_FILE.read_text()), variant)
    plane._apply_crd(crd)  # the harness's own create-or-replace
    plane.install_crds([])
    name = f"bench-{variant}"
    plane.request("POST", BASE, {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
        "metadata": {"name": name}, "spec": {"localModels": []},
    })  # fmt: skip
    apiserver = next(p for p in plane.pids if Path(f"/proc/{p}/comm").read_text().strip() == "kube-apiserver")
    entries = spec_entries(models)
    current: list[dict[str, Any]] = []
    scenario = f"{models}models-{variant}"

    # spec: grow to `models` entries in `writes` steps, as the manager's batches do
    step = max(1, models // writes)
    cpu0, t0 = proc_cpu_seconds(apiserver) or 0.0, time.monotonic()
    n_spec = 0
    while len(current) < models:
        new = entries[: len(current) + step]
        ops = [{"op": "test", "path": "/spec/localModels", "value": current},
               {"op": "add", "path": "/spec/localModels", "value": new}]  # fmt: skip
        plane.request("PATCH", f"{BASE}/{name}", ops, "application/json-patch+json")
        current, n_spec = new, n_spec + 1
    spec_cpu = (proc_cpu_seconds(apiserver) or 0.0) - cpu0
    results.add(scenario, "spec_growth_cpu_ms_per_write", 1000 * spec_cpu / n_spec, "ms")
    results.add(scenario, "spec_growth_writes", n_spec, "writes")

    # status: every model reported, then `writes` rewrites of the whole status (one value changes)
    body = [{"op": "add", "path": "/status", "value": status(models)}]
    plane.request("PATCH", f"{BASE}/{name}/status", body, "application/json-patch+json")
    time.sleep(1)  # let the watch cache settle before timing
    cpu0, t0 = proc_cpu_seconds(apiserver) or 0.0, time.monotonic()
    for i in range(writes):
        body = [{"op": "add", "path": "/status", "value": status(models, bump=i + 1)}]
        plane.request("PATCH", f"{BASE}/{name}/status", body, "application/json-patch+json")
    status_cpu = (proc_cpu_seconds(apiserver) or 0.0) - cpu0
    status_wall = time.monotonic() - t0

    # full-size spec rewrites (one entry changes each time)
    cpu0 = proc_cpu_seconds(apiserver) or 0.0
    for i in range(writes):
        new = [dict(e) for e in current]
        new[0]["nodeGroup"] = f"gpu-{i}"
        ops = [{"op": "test", "path": "/spec/localModels", "value": current},
               {"op": "add", "path": "/spec/localModels", "value": new}]  # fmt: skip
        plane.request("PATCH", f"{BASE}/{name}", ops, "application/json-patch+json")
        current = new
    full_spec_cpu = (proc_cpu_seconds(apiserver) or 0.0) - cpu0

    obj = plane.request("GET", f"{BASE}/{name}")
    total = len(json.dumps(obj, separators=(",", ":")))
    managed = len(json.dumps(obj["metadata"].get("managedFields") or [], separators=(",", ":")))
    results.add(scenario, "status_write_cpu_ms", 1000 * status_cpu / writes, "ms")
    results.add(scenario, "status_write_wall_ms", 1000 * status_wall / writes, "ms")
    results.add(scenario, "spec_write_cpu_ms", 1000 * full_spec_cpu / writes, "ms")
    results.add(scenario, "object_kib", total / 1024, "KiB")
    results.add(scenario, "managed_fields_kib", managed / 1024, "KiB")
    plane.request("DELETE", f"{BASE}/{name}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    models = [int(m) for m in os.environ.get("BENCH_MODELS", "100,1000").split(",")]
    writes = int(os.environ.get("BENCH_WRITES", "20"))
    results = Results()
    with ControlPlane(controllers=None) as plane:
        for n in models:
            for variant in ("granular", "atomic"):
                measure(plane, results, variant, n, writes)
    for r in results.rows:
        log.info("%s %s = %s %s", r.scenario, r.metric, r.value, r.unit)
    out = Path(os.environ.get("BENCH_OUT", RESULTS_DIR / "lmn_write.json"))
    results.write(out, extra={"parameters": {"models": models, "writes": writes}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
