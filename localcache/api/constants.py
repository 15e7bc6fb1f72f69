"""Wire strings shared with KServe: group, labels, annotations, finalizers, defaults.

Every string here is matched byte for byte by KServe's controllers, webhooks or users' tooling
(reference §1.6), so they are defined once and never spelled out elsewhere.
"""

from __future__ import annotations

__all__ = [
    "ANNOTATION_DISABLE_LOCAL_MODEL",
    "ANNOTATION_LOCAL_MODEL_PVC_NAME",
    "ANNOTATION_LOCAL_MODEL_SOURCE_URI",
    "ANNOTATION_NODE_GROUP",
    "ANNOTATION_READONLY",
    "ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI",
    "API_GROUP",
    "API_VERSION",
    "DEFAULT_CONFIG_NAMESPACE",
    "DEFAULT_JOB_IMAGE",
    "DEFAULT_JOB_NAMESPACE",
    "DOWNLOAD_CONTAINER_NAME",
    "DOWNLOAD_VOLUME_NAME",
    "FINALIZER_LOCAL_MODEL_CACHE",
    "FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE",
    "GROUP_VERSION",
    "INFERENCE_SERVICE_CONFIG_NAME",
    "ISVC_API_VERSION",
    "JOB_LABEL_MODEL",
    "JOB_LABEL_MODEL_NAMESPACE",
    "JOB_LABEL_NODE",
    "LABEL_LOCAL_MODEL",
    "LABEL_LOCAL_MODEL_NAMESPACE",
    "MODELS_DIR",
    "MOUNT_PATH",
]

API_GROUP = "serving.kserve.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
ISVC_API_VERSION = f"{API_GROUP}/v1beta1"

# Labels and annotations on InferenceServices and their pods (set by the defaulter).
LABEL_LOCAL_MODEL = "internal.serving.kserve.io/localmodel"
LABEL_LOCAL_MODEL_NAMESPACE = "internal.serving.kserve.io/localmodel-namespace"
ANNOTATION_LOCAL_MODEL_SOURCE_URI = "internal.serving.kserve.io/localmodel-sourceuri"
ANNOTATION_LOCAL_MODEL_PVC_NAME = "internal.serving.kserve.io/localmodel-pvc-name"
# Set by users.
ANNOTATION_NODE_GROUP = "serving.kserve.io/nodegroup"
ANNOTATION_DISABLE_LOCAL_MODEL = "serving.kserve.io/disable-localmodel"  # presence only
ANNOTATION_READONLY = "storage.kserve.io/readonly"
# Set by KServe's ISVC controller on the predictor pod template.
ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI = "internal.serving.kserve.io/storage-initializer-sourceuri"

FINALIZER_LOCAL_MODEL_CACHE = "localmodel.kserve.io/finalizer"
FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE = "localmodelnamespacecache.kserve.io/finalizer"

# Labels on download Jobs (agent).
JOB_LABEL_MODEL = "model"
JOB_LABEL_NODE = "node"
JOB_LABEL_MODEL_NAMESPACE = "modelNamespace"

# Download Job and serving-pod mount shape.
MOUNT_PATH = "/mnt/models"
MODELS_DIR = "models"
DOWNLOAD_VOLUME_NAME = "kserve-pvc-source"
DOWNLOAD_CONTAINER_NAME = "kserve-localmodel-download"
DEFAULT_JOB_IMAGE = "kserve/storage-initializer:latest"

# Configuration.
INFERENCE_SERVICE_CONFIG_NAME = "inferenceservice-config"
DEFAULT_CONFIG_NAMESPACE = "kserve"
DEFAULT_JOB_NAMESPACE = "kserve-localmodel-jobs"
