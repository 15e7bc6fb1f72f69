"""The admission webhooks on a test cluster: a real Manager serving them, called by the real API server.

:class:`AdmissionHarness` runs a :class:`~localcache.runtime.manager.Manager` in-process with
:func:`localcache.controllers.admission.register_admission`, its webhook server on a free loopback
port with a serving certificate from a :class:`~localcache.testing.certs.TinyCA`, and registers the
webhook configurations *shipped* in ``manifests/base/webhook`` with only ``clientConfig`` replaced
(``url: https://127.0.0.1:<port>/<path>`` and the CA bundle). The rules, object selectors, failure
policies and timeouts the API server applies are therefore the shipped ones, unless a test overrides
them on purpose (``failure_policy``, ``timeout_seconds``, ``namespace_selector``).

Configurations get a unique name suffix, so several harnesses (say, a second one scoped to one
namespace to be stopped for a failure-policy test) can share a cluster. :meth:`AdmissionHarness.stop_server`
stops the manager but leaves the configurations registered: what the API server sees when the
webhook is down.

The API server loads webhook configurations asynchronously; :func:`until_admitted` retries a write
until the webhook's effect is visible, instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from localcache.controllers.admission import PATHS, parse_disabled, register_admission
from localcache.runtime import errors
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.resources import Resource
from localcache.runtime.webhook import WebhookServer
from localcache.testing.certs import TinyCA
from localcache.testing.envtest import REPO_ROOT

__all__ = [
    "MUTATING_WEBHOOK_CONFIGURATIONS",
    "VALIDATING_WEBHOOK_CONFIGURATIONS",
    "WEBHOOK_MANIFESTS",
    "AdmissionHarness",
    "shipped_configurations",
    "until_admitted",
]

log = logging.getLogger(__name__)

WEBHOOK_MANIFESTS = REPO_ROOT / "manifests" / "base" / "webhook"
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)
VALIDATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    False,
)
_RESOURCES = {
    "MutatingWebhookConfiguration": MUTATING_WEBHOOK_CONFIGURATIONS,
    "ValidatingWebhookConfiguration": VALIDATING_WEBHOOK_CONFIGURATIONS,
}


def shipped_configurations(
    *,
    base_url: str,
    ca_bundle: bytes,
    suffix: str,
    paths: Iterable[str],
    namespace_selector: dict[str, Any] | None = None,
    failure_policy: str | None = None,
    timeout_seconds: int | None = None,
    manifests: Path = WEBHOOK_MANIFESTS,
) -> list[dict[str, Any]]:
    """The shipped Mutating/ValidatingWebhookConfigurations, pointed at ``base_url``, for ``paths`` only."""
    wanted = set(paths)
    out: list[dict[str, Any]] = []
    for file in sorted(manifests.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in _RESOURCES:
                continue
            config = copy.deepcopy(doc)
            hooks = []
            for hook in config.get("webhooks") or []:
                path = ((hook.get("clientConfig") or {}).get("service") or {}).get("path")
                if path not in wanted:
                    continue
                hook["clientConfig"] = {
                    "url": f"{base_url}{path}",
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                }
                if namespace_selector is not None:
                    hook["namespaceSelector"] = copy.deepcopy(namespace_selector)
                if failure_policy is not None:
                    hook["failurePolicy"] = failure_policy
                if timeout_seconds is not None:
                    hook["timeoutSeconds"] = timeout_seconds
                hooks.append(hook)
            if hooks:
                config["webhooks"] = hooks
                config["metadata"] = {
                    "name": f"{config['metadata']['name']}-{suffix}",
                    "labels": dict(
                        config["metadata"].get("labels") or {}, **{"localcache.test/harness": suffix}
                    ),
                }
                out.append(config)
    return out


class AdmissionHarness:
    """A Manager serving the admission webhooks, and the configurations that make the API server call it."""

    def __init__(
        self,
        client: Any,
        *,
        config_namespace: str,
        disabled: Iterable[str] = (),
        namespace_selector: dict[str, Any] | None = None,
        failure_policy: str | None = None,
        timeout_seconds: int | None = None,
        cert_dir: Path | None = None,
        config_client: Any | None = None,
        cert_poll_interval: float = 10.0,
    ) -> None:
        self.client = client
        #: registers the webhook configurations; the manager's own identity need not be allowed to
        self.config_client = config_client or client
        self.config_namespace = config_namespace
        self.disabled = parse_disabled(disabled)
        self.namespace_selector = namespace_selector
        self.failure_policy = failure_policy
        self.timeout_seconds = timeout_seconds
        self.suffix = secrets.token_hex(3)
        self.ca = TinyCA(f"localcache-webhook-ca-{self.suffix}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cert_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="localcache-webhook-")
            cert_dir = Path(self._tmp.name)
        self.cert_dir = cert_dir
        self.ca.serving(["127.0.0.1"]).write(cert_dir, "tls")
        self.server = WebhookServer(
            host="127.0.0.1", port=0, cert_dir=cert_dir, cert_poll_interval=cert_poll_interval
        )
        options = ManagerOptions(
            metrics_bind_address="0",
            health_probe_bind_address="0",
            webhook_server=self.server,
            handle_signals=False,
            loop_lag_interval=0,
            graceful_shutdown_timeout=10,
        )
        self.manager = Manager(client, options)
        register_admission(self.manager, config_namespace=config_namespace, disabled=self.disabled)
        self.configurations: list[dict[str, Any]] = []
        self._run: asyncio.Task[None] | None = None

    def rotate_certificate(self) -> None:
        """Write a new serving pair from the same CA, as cert-manager renews a Secret (key, then cert)."""
        pair = self.ca.serving(["127.0.0.1"])
        key, cert = self.cert_dir / "tls.key", self.cert_dir / "tls.crt"
        for path, data in ((key, pair.key_pem), (cert, pair.cert_pem)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)

    @property
    def paths(self) -> list[str]:
        return [path for name, path in PATHS.items() if name not in self.disabled]

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def start(self, *, sync_timeout: float = 30.0) -> None:
        """Run the manager, wait for the webhook server and the informers, register the configurations."""
        self._run = asyncio.get_running_loop().create_task(
            self.manager.run(), name=f"admission-{self.suffix}"
        )
        waiter = asyncio.ensure_future(self.server.wait_started())
        done, _ = await asyncio.wait(
            {waiter, self._run}, timeout=sync_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self._run in done:
            waiter.cancel()
            self._run.result()  # raises the manager's error
            raise RuntimeError("admission manager ended before its webhook server started")
        if waiter not in done:
            waiter.cancel()
            raise TimeoutError(f"webhook server not listening within {sync_timeout}s")
        if not await self.manager.cache.wait_for_sync(sync_timeout):
            raise TimeoutError(f"admission informers not synced within {sync_timeout}s")
        for config in shipped_configurations(
            base_url=self.base_url,
            ca_bundle=self.ca.cert_pem,
            suffix=self.suffix,
            paths=self.paths,
            namespace_selector=self.namespace_selector,
            failure_policy=self.failure_policy,
            timeout_seconds=self.timeout_seconds,
        ):
            created = await self.config_client.create(_RESOURCES[config["kind"]], config)
            self.configurations.append(created)
        log.info("admission harness started", extra={"url": self.base_url, "paths": self.paths})

    async def stop_server(self) -> None:
        """Stop the manager (webhook server, informers, pod-gate controller); keep the configurations."""
        if self._run is None:
            return
        self.manager.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._run), 30)
        finally:
            if not self._run.done():
                self._run.cancel()
                await asyncio.gather(self._run, return_exceptions=True)
            self._run = None

    async def close(self) -> None:
        """Delete the configurations first (so nothing calls a dead server), then stop."""
        for config in self.configurations:
            await self.config_client.delete(
                _RESOURCES[config["kind"]], config["metadata"]["name"], missing_ok=True
            )
        self.configurations.clear()
        await self.stop_server()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> AdmissionHarness:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def until_admitted(
    write: Callable[[int], Awaitable[dict[str, Any]]],
    effect: Callable[[dict[str, Any]], bool],
    *,
    within: float = 30.0,
    cleanup: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
    expect_error: bool = False,
) -> Any:
    """Repeat ``write(attempt)`` until the API server applies the webhook: ``effect(result)`` is true,
    or (with ``expect_error``) the write raises an :class:`~localcache.runtime.errors.ApiError`, which
    is returned. Writes without the effect are passed to ``cleanup``. Raises AssertionError on timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    last: Any = None
    while True:
        attempt += 1
        try:
            last = await write(attempt)
        except errors.ApiError as exc:
            if expect_error:
                return exc
            raise
        if not expect_error and effect(last):
            return last
        if cleanup is not None:
            await cleanup(last)
        if loop.time() > deadline:
            raise AssertionError(f"webhook effect not seen within {within}s; last result: {last!r}")
        await asyncio.sleep(0.2)
