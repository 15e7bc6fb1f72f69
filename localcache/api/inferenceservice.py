"""The subset of KServe's InferenceService (``serving.kserve.io/v1beta1``) this project reads and mutates.

The defaulter reads the predictor's storage URI and the node-group/disable annotations, and writes
labels and annotations; everything else is KServe's and passes through untouched (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from localcache.api.base import ApiModel, CrdInfo, KubeObject
from localcache.api.constants import (
    ANNOTATION_DISABLE_LOCAL_MODEL,
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_NODE_GROUP,
    API_GROUP,
    ISVC_API_VERSION,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
)

__all__ = [
    "PREDICTOR_FRAMEWORKS",
    "InferenceService",
    "InferenceServiceSpec",
    "ModelFormat",
    "PredictorImplementation",
    "PredictorSpec",
]

# PredictorSpec members that are predictor implementations, in KServe's GetPredictorImplementations order.
PREDICTOR_FRAMEWORKS = (
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
    "model",
)


class ModelFormat(ApiModel):
    """The model's format (e.g. huggingface)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    name: str | None = Field(default=None, description="Name of the model format.")
    version: str | None = Field(default=None, description="Version of the model format.")


class PredictorImplementation(ApiModel):
    """A predictor implementation (``model`` or a framework such as ``sklearn``); only storageUri is read."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    storage_uri: str | None = Field(
        default=None, description="Where the model is stored, e.g. hf://org/model."
    )
    model_format: ModelFormat | None = Field(default=None, description="The model's format.")
    runtime: str | None = Field(default=None, description="The ServingRuntime to use.")


class PredictorSpec(ApiModel):
    """The predictor; only its implementation's storageUri is read."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    model: PredictorImplementation | None = None
    sklearn: PredictorImplementation | None = None
    xgboost: PredictorImplementation | None = None
    tensorflow: PredictorImplementation | None = None
    pytorch: PredictorImplementation | None = None
    triton: PredictorImplementation | None = None
    onnx: PredictorImplementation | None = None
    huggingface: PredictorImplementation | None = None
    pmml: PredictorImplementation | None = None
    lightgbm: PredictorImplementation | None = None
    paddle: PredictorImplementation | None = None
    containers: list[dict[str, Any]] | None = None

    def storage_uri(self) -> str | None:
        """The storage URI of the predictor implementation, as KServe's defaulter finds it.

        Framework and ``model`` implementations carry ``storageUri``; a custom predictor carries it as
        the ``STORAGE_URI`` env var of its first container.
        """
        for framework in PREDICTOR_FRAMEWORKS:
            implementation = getattr(self, framework)
            if implementation is not None:
                return implementation.storage_uri or None
        for container in self.containers or []:
            for env in container.get("env") or []:
                if isinstance(env, dict) and env.get("name") == "STORAGE_URI" and env.get("value"):
                    return str(env["value"])
            break
        return None


class InferenceServiceSpec(ApiModel):
    """The InferenceService spec; only the predictor is read."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    predictor: PredictorSpec | None = Field(default=None, description="The predictor.")


class InferenceService(KubeObject):
    """A KServe InferenceService (only the fields the local model cache reads are typed)."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version="v1beta1",
        kind="InferenceService",
        plural="inferenceservices",
        singular="inferenceservice",
        namespaced=True,
        status_subresource=True,
        short_names=("isvc",),
        printer_columns=(
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )

    api_version: str = Field(default=ISVC_API_VERSION, description="serving.kserve.io/v1beta1")
    kind: str = Field(default="InferenceService", description="InferenceService")
    spec: InferenceServiceSpec = Field(default_factory=InferenceServiceSpec)
    status: dict[str, Any] | None = None

    @property
    def storage_uri(self) -> str | None:
        return self.spec.predictor.storage_uri() if self.spec.predictor else None

    @property
    def node_group(self) -> str | None:
        """The ``serving.kserve.io/nodegroup`` annotation, if present."""
        return self.annotations.get(ANNOTATION_NODE_GROUP)

    @property
    def local_model_disabled(self) -> bool:
        """``serving.kserve.io/disable-localmodel`` is present (any value, even "false")."""
        return ANNOTATION_DISABLE_LOCAL_MODEL in self.annotations

    @property
    def local_model_cache(self) -> tuple[str, str] | None:
        """``(namespace, name)`` of the cache the defaulter bound this service to; namespace "" for a
        cluster cache; None when unbound."""
        name = self.labels.get(LABEL_LOCAL_MODEL)
        if not name:
            return None
        return self.labels.get(LABEL_LOCAL_MODEL_NAMESPACE, ""), name

    def set_local_model(
        self, cache_name: str, cache_namespace: str | None, source_uri: str, pvc_name: str
    ) -> None:
        """Bind to a cache: the two labels and two annotations of reference §9.1.4."""
        labels = dict(self.labels)
        annotations = dict(self.annotations)
        labels[LABEL_LOCAL_MODEL] = cache_name
        if cache_namespace:
            labels[LABEL_LOCAL_MODEL_NAMESPACE] = cache_namespace
        else:
            labels.pop(LABEL_LOCAL_MODEL_NAMESPACE, None)
        annotations[ANNOTATION_LOCAL_MODEL_SOURCE_URI] = source_uri
        annotations[ANNOTATION_LOCAL_MODEL_PVC_NAME] = pvc_name
        self.metadata.labels = labels
        self.metadata.annotations = annotations

    def clear_local_model(self) -> None:
        """Unbind: remove both labels and both annotations (KServe's deleteLocalModelMetadata)."""
        if self.metadata.labels:
            for key in (LABEL_LOCAL_MODEL, LABEL_LOCAL_MODEL_NAMESPACE):
                self.metadata.labels.pop(key, None)
        if self.metadata.annotations:
            for key in (ANNOTATION_LOCAL_MODEL_SOURCE_URI, ANNOTATION_LOCAL_MODEL_PVC_NAME):
                self.metadata.annotations.pop(key, None)
