"""localcache: KServe-compatible Local Model Cache for Kubernetes, with an asyncio controller-runtime."""

__version__ = "0.1.0"
