"""kubernetes_asyncio without its generated classes up front, and still whole on demand.

Each case runs in a fresh interpreter: the stand-ins only go in before the first import."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import localcache.runtime
loaded = sorted(m for m in sys.modules if m.startswith("kubernetes_asyncio"))
print(len(loaded), any(".models." in m or ".client.api." in m for m in loaded))
from kubernetes_asyncio.client import CoreV1Api, V1Pod
import kubernetes_asyncio
from kubernetes_asyncio.watch import Watch
print(CoreV1Api.__name__, V1Pod(metadata={"name": "p"}).metadata["name"], Watch.__name__)
print(kubernetes_asyncio.client.models.V1ObjectMeta.__name__, kubernetes_asyncio.client.__version__ != "")
"""


def probe(**env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env={**_env(), **env}
    )
    return out.stdout.split("\n")


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "LOCALCACHE_EAGER_K8S"}


def test_the_runtime_loads_a_handful_of_modules_and_everything_else_on_demand() -> None:
    first, names, models = probe()[:3]
    count, generated = first.split()
    assert int(count) < 30 and generated == "False", first
    assert names == "CoreV1Api p Watch"
    assert models == "V1ObjectMeta True"


def test_eager_flag_loads_the_real_packages() -> None:
    first = probe(LOCALCACHE_EAGER_K8S="1")[0]
    count, generated = first.split()
    assert int(count) > 500 and generated == "True", first
