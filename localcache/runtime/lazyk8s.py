"""Import ``kubernetes_asyncio`` without loading its 1,600 generated API and model classes up front.

``import kubernetes_asyncio.client`` executes a package ``__init__`` that imports every generated API
class and every model: about 60 MiB of resident memory before the first request, in a process (the
node agent on every GPU node, the manager) that uses none of them. The runtime client needs only the
``Configuration``, the ``ApiClient``'s connection pool and the kubeconfig / in-cluster loaders.

Importing this module calls :func:`install`, which puts light stand-ins for the packages
``kubernetes_asyncio``, ``kubernetes_asyncio.client`` and ``.client.models`` into ``sys.modules``. They
have the real package directories as their ``__path__``, so every submodule imports as usual, and
they resolve a name the real ``__init__`` would have imported (``client.CoreV1Api``,
``client.V1Pod``, ``kubernetes_asyncio.watch``) on first use, from the ``from X import Name`` lines of
that ``__init__``. Code that uses the library the ordinary way keeps working, only later.

It is a no-op when ``kubernetes_asyncio`` was imported already, and ``LOCALCACHE_EAGER_K8S=1``
turns it off. Measured in bench/README.md (agent peak RSS).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

ROOT = "kubernetes_asyncio"
_FROM_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)(?: as (\w+))?\s*$", re.M)
_VERSION = re.compile(r"^__version__ = ['\"]([^'\"]+)['\"]", re.M)


class _LazyPackage(types.ModuleType):
    """A package whose ``__init__`` imports are done on first attribute access."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        self.__path__ = [str(directory)]
        self.__file__ = str(directory / "__init__.py")
        self.__package__ = name
        self.__spec__ = importlib.util.spec_from_file_location(
            name, self.__file__, submodule_search_locations=self.__path__
        )
        text = (directory / "__init__.py").read_text(encoding="utf-8")
        self._names = {alias or attr: module for module, attr, alias in _FROM_IMPORT.findall(text)}
        version = _VERSION.search(text)
        if version:
            self.__version__ = version.group(1)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        module = self._names.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        else:
            try:
                value = importlib.import_module(f"{self.__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.__name__}.{name}":
                    raise
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None
        setattr(self, name, value)
        return value


def install() -> bool:
    """Install the stand-ins; False when the real packages are (or must be) loaded eagerly."""
    if ROOT in sys.modules or os.environ.get("LOCALCACHE_EAGER_K8S") == "1":
        return False
    spec = importlib.util.find_spec(ROOT)
    if spec is None or not spec.submodule_search_locations:
        return False  # not installed: the import that needs it will say so
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, directory in (
        (ROOT, root),
        (f"{ROOT}.client", root / "client"),
        (f"{ROOT}.client.models", root / "client" / "models"),
    ):
        sys.modules[name] = _LazyPackage(name, directory)
    sys.modules[ROOT].client = sys.modules[f"{ROOT}.client"]  # type: ignore[attr-defined]
    sys.modules[f"{ROOT}.client"].models = sys.modules[f"{ROOT}.client.models"]  # type: ignore[attr-defined]
    return True


install()

# What the runtime uses; importing them through this module guarantees install() ran first.
k8s_client = importlib.import_module(f"{ROOT}.client")
k8s_config = importlib.import_module(f"{ROOT}.config")
