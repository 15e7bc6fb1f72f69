"""Every derived name and key, defined once: storage key, URI matching, status keys, PV/PVC/Job names.

KServe builds names by joining user names with ``-``, which collides between a cluster cache and a
namespace cache of the same name (reference §8.B-2) and overflows Kubernetes length limits. The rules
here (documented in docs/api.md):

* Cluster-scope names are KServe's, byte for byte, whenever they fit, so disks, PVs and PVCs made by
  KServe are reused after a swap.
* Namespace-scope names are KServe's name, then ``-`` and 10 hex digits of a SHA-256 over the scope,
  the purpose and every component (namespace, cache, group, ...). They can therefore never equal a
  namespace-scope name of another cache, and equal a cluster-scope name only if a cache or group name
  itself ends in that exact digest.
* Any name longer than its limit is cut and given the same digest suffix, so it stays unique.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from localcache.api.constants import (
    JOB_LABEL_MODEL,
    JOB_LABEL_MODEL_NAMESPACE,
    JOB_LABEL_NODE,
    MODELS_DIR,
)

__all__ = [
    "CACHE_NAME_MAX_LENGTH",
    "DNS_SUBDOMAIN_MAX_LENGTH",
    "GENERATE_NAME_MAX_LENGTH",
    "LABEL_VALUE_MAX_LENGTH",
    "bounded_name",
    "download_pv_name",
    "download_pvc_name",
    "job_generate_name",
    "job_labels",
    "job_selector",
    "job_status_key",
    "label_value",
    "match_storage_uri",
    "model_dir",
    "parse_status_key",
    "pvc_storage_uri",
    "serving_pv_name",
    "serving_pvc_name",
    "status_key",
    "storage_key",
]

DNS_SUBDOMAIN_MAX_LENGTH = 253
LABEL_VALUE_MAX_LENGTH = 63
# The API server appends 5 random characters to generateName and cuts the prefix to 58.
GENERATE_NAME_MAX_LENGTH = 58
# Cache names become label values (internal.serving.kserve.io/localmodel=<name>, Job label model=<name>).
CACHE_NAME_MAX_LENGTH = LABEL_VALUE_MAX_LENGTH
DIGEST_LENGTH = 10


# ---- storage key and URI matching (byte-compatible with KServe) ---------------------------------
def storage_key(uri: str) -> str:
    """The on-disk folder of a model: the first 16 hex digits of SHA-256 of the exact URI string."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def model_dir(uri: str) -> str:
    """The model's folder relative to the models root volume: ``models/<storage key>``."""
    return f"{MODELS_DIR}/{storage_key(uri)}"


def _strip_one_slash(uri: str) -> str:
    return uri[:-1] if uri.endswith("/") else uri


def match_storage_uri(cached_uri: str, storage_uri: str) -> bool:
    """Whether a cache for ``cached_uri`` serves ``storage_uri``.

    One trailing ``/`` is ignored on each side; a match is equality or ``cached_uri`` followed by ``/``
    (so ``gs://b/model`` serves ``gs://b/model/x.pt`` but not ``gs://b/model2``).
    """
    cached = _strip_one_slash(cached_uri)
    wanted = _strip_one_slash(storage_uri)
    if cached == wanted:
        return True
    return wanted.startswith(cached) and wanted[len(cached) : len(cached) + 1] == "/"


def pvc_storage_uri(pvc_name: str, cached_uri: str, storage_uri: str) -> str:
    """The ``pvc://`` URI a serving pod is rewritten to (reference §4.3).

    The part of ``storage_uri`` after ``cached_uri`` is kept as a sub-path with a leading ``/``; when
    ``cached_uri`` is not a prefix the whole ``storage_uri`` is kept, as KServe does.
    """
    sub_path = storage_uri[len(cached_uri) :] if storage_uri.startswith(cached_uri) else storage_uri
    if not sub_path.startswith("/"):
        sub_path = "/" + sub_path
    return f"pvc://{pvc_name}/{MODELS_DIR}/{storage_key(cached_uri)}{sub_path}"


# ---- status keys ----------------------------------------------------------------------------------
def status_key(model_name: str, namespace: str | None) -> str:
    """The key in ``LocalModelNode.status.modelStatus``: ``name`` (cluster) or ``namespace/name``."""
    return f"{namespace}/{model_name}" if namespace else model_name


def parse_status_key(key: str) -> tuple[str, str]:
    """``(namespace, name)`` of a status key; namespace is "" for cluster caches."""
    namespace, _, name = key.rpartition("/")
    return namespace, name


# ---- bounded, collision-free names ---------------------------------------------------------------
def _digest(identity: tuple[str, ...]) -> str:
    return hashlib.sha256("\x1f".join(identity).encode()).hexdigest()[:DIGEST_LENGTH]


def bounded_name(readable: str, identity: tuple[str, ...], limit: int, *, always_hash: bool = False) -> str:
    """``readable`` if it fits in ``limit`` (and ``always_hash`` is off), else a cut prefix plus a digest.

    The digest is over ``identity`` (every component that makes the object distinct), so two objects
    with different identities get different names even when their readable prefixes agree.
    """
    if not always_hash and len(readable) <= limit:
        return readable
    suffix = _digest(identity)
    head = readable[: max(limit - len(suffix) - 1, 0)].rstrip("-.")
    return f"{head}-{suffix}" if head else suffix


def _scoped(readable: str, purpose: str, namespace: str | None, *parts: str) -> str:
    scope = "namespace" if namespace else "cluster"
    identity = (scope, purpose, namespace or "", *parts)
    return bounded_name(readable, identity, DNS_SUBDOMAIN_MAX_LENGTH, always_hash=bool(namespace))


def download_pv_name(cache_name: str, cache_namespace: str | None, node_group: str) -> str:
    """Cluster-scoped PV the download Jobs write through.

    KServe: ``<c>-<g>-download`` (cluster cache), ``<c>-<g>-<ns>-download`` (namespace cache).
    """
    if cache_namespace:
        readable = f"{cache_name}-{node_group}-{cache_namespace}-download"
    else:
        readable = f"{cache_name}-{node_group}-download"
    return _scoped(readable, "download-pv", cache_namespace, cache_name, node_group)


def download_pvc_name(cache_name: str, cache_namespace: str | None, node_group: str) -> str:
    """PVC in the job namespace that the download Jobs mount.

    KServe: ``<c>-<g>`` (cluster cache), ``<c>-<g>-<ns>-download`` (namespace cache).
    """
    if cache_namespace:
        readable = f"{cache_name}-{node_group}-{cache_namespace}-download"
    else:
        readable = f"{cache_name}-{node_group}"
    return _scoped(readable, "download-pvc", cache_namespace, cache_name, node_group)


def serving_pv_name(
    cache_name: str, cache_namespace: str | None, node_group: str, consumer_namespace: str
) -> str:
    """Cluster-scoped PV bound to the serving PVC in ``consumer_namespace``.

    KServe: ``<c>-<g>-<consumerNs>``; for a namespace cache the consumer namespace is its own.
    """
    readable = f"{cache_name}-{node_group}-{consumer_namespace}"
    return _scoped(readable, "serving-pv", cache_namespace, cache_name, node_group, consumer_namespace)


def serving_pvc_name(cache_name: str, cache_namespace: str | None, node_group: str) -> str:
    """PVC in the InferenceService's namespace that serving pods mount; also the value of the
    ``internal.serving.kserve.io/localmodel-pvc-name`` annotation. KServe: ``<c>-<g>``."""
    readable = f"{cache_name}-{node_group}"
    return _scoped(readable, "serving-pvc", cache_namespace, cache_name, node_group)


# ---- download Jobs -------------------------------------------------------------------------------
def label_value(value: str) -> str:
    """A name made safe as a label value (at most 63 characters), unchanged when it already fits."""
    return bounded_name(value, ("label", value), LABEL_VALUE_MAX_LENGTH)


def job_generate_name(model_name: str, node_name: str) -> str:
    """``generateName`` of a download Job: KServe's ``<model>-<node>`` (no trailing dash), cut to 58
    characters with a digest so the API server does not cut it blindly."""
    return bounded_name(f"{model_name}-{node_name}", ("job", model_name, node_name), GENERATE_NAME_MAX_LENGTH)


def job_labels(model_name: str, model_namespace: str | None, node_name: str) -> dict[str, str]:
    """Labels of a download Job: ``model``, ``node`` and, for namespace caches, ``modelNamespace``."""
    labels = {JOB_LABEL_MODEL: label_value(model_name), JOB_LABEL_NODE: label_value(node_name)}
    if model_namespace:
        labels[JOB_LABEL_MODEL_NAMESPACE] = model_namespace
    return labels


def job_selector(model_name: str, model_namespace: str | None, node_name: str) -> str:
    """A label selector matching exactly the Jobs of one (model, node).

    Unlike KServe's ``{model, node}`` selector, a cluster model's selector excludes namespace models
    of the same name (``!modelNamespace``).
    """
    labels = job_labels(model_name, model_namespace, node_name)
    terms = [f"{k}={v}" for k, v in labels.items()]
    if not model_namespace:
        terms.append(f"!{JOB_LABEL_MODEL_NAMESPACE}")
    return ",".join(terms)


def job_status_key(labels: Mapping[str, str]) -> str | None:
    """The status key a download Job belongs to, from its labels; None if it has no ``model`` label."""
    model = labels.get(JOB_LABEL_MODEL)
    if not model:
        return None
    return status_key(model, labels.get(JOB_LABEL_MODEL_NAMESPACE))
