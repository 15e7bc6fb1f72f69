"""An async Kubernetes client that speaks raw JSON for any group/version/kind, CRDs included.

Why not the generated ``kubernetes_asyncio`` APIs: their model deserialisation costs about 5x the CPU
of ``json.loads`` and their ``Watch`` helper re-watches expired resourceVersions. This client keeps
``kubernetes_asyncio`` for what it does well (``Configuration``, kubeconfig / in-cluster loading, token
refresh, its TLS-configured aiohttp session) and sends requests itself, returning plain dicts.

Stable interface (the manager, leader election, events and webhook code rely on it)::

    client = await Client.from_kubeconfig(path=None, context=None)   # None: $KUBECONFIG, ~/.kube/config
    client = await Client.from_config(in_cluster=None)                # auto: in-cluster if available
    client = Client(api_client)                                       # wrap an existing ApiClient
    async with client: ...                                            # or: await client.close()

    await client.get(res, name, namespace=None)                        -> dict
    await client.list(res, namespace=None, label_selector=, field_selector=, resource_version=,
                      resource_version_match=, limit=, continue_=)      -> dict (one page: items + metadata)
    await client.list_all(res, ...)                                    -> (items, resourceVersion), paged
    async with client.watch(res, namespace=None, resource_version=, allow_watch_bookmarks=True,
                            timeout_seconds=, send_initial_events=, ...) as events:
        async for event_type, obj in events: ...
    await client.create(res, obj, namespace=None)
    await client.update(res, obj)            # PUT, optimistic concurrency on metadata.resourceVersion
    await client.update_status(res, obj)     # PUT /status
    await client.patch(res, name, patch, namespace=None, patch_type="merge"|"strategic"|"json"|"apply",
                       field_manager=, force=, subresource=)
    await client.delete(res, name, namespace=None, uid=, resource_version=, propagation_policy=,
                        grace_period_seconds=)                         -> dict | None (None when absent
                                                                          and ``missing_ok=True``)
    await client.resource_for(api_version, kind)                       -> Resource (discovery, cached)

Every call has a request timeout (``request_timeout``, default 30 s; watches use a read-inactivity
timeout instead). Failures raise the typed errors of :mod:`localcache.runtime.errors`. Every request
is counted in the ``rest_client_*`` metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp

from localcache.runtime import errors, jsoncodec, metrics
from localcache.runtime.lazyk8s import k8s_client as k8s
from localcache.runtime.lazyk8s import k8s_config
from localcache.runtime.resources import Resource, split_api_version

__all__ = ["PATCH_CONTENT_TYPES", "Client", "WatchEvent", "WatchStream"]

log = logging.getLogger(__name__)

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}

WatchEvent = tuple[str, dict[str, Any]]
JsonDecoder = Callable[[bytes], Any]

METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
DEFAULT_REQUEST_TIMEOUT = 30.0
#: No bytes for this long on a watch means a half-open connection (bookmarks come about every minute).
DEFAULT_WATCH_IDLE_TIMEOUT = 90.0


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _ssl_context(cfg: k8s.Configuration) -> ssl.SSLContext:
    """The same TLS setup ``kubernetes_asyncio``'s REST client builds, for our dedicated watch pool."""
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if getattr(cfg, "disable_strict_ssl_verification", False):
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


#: Connections for ordinary requests (kubernetes_asyncio's default is 100). Over HTTP/1.1 each
#: request in flight holds one TLS connection, and each costs about 0.4 MiB (asyncio's 256 KiB SSL
#: buffer, OpenSSL's and aiohttp's): a manager writing to fifty nodes at once filled all 100. An API
#: server gains nothing from more parallel requests from one client than it has cores to serve them
#: (client-go multiplexes everything over one HTTP/2 connection); the rest wait their turn in the pool.
DEFAULT_MAX_CONNECTIONS = 32


def _pooled(cfg: k8s.Configuration) -> k8s.Configuration:
    cfg.connection_pool_maxsize = DEFAULT_MAX_CONNECTIONS
    return cfg


class Client:
    """Raw-JSON client over a ``kubernetes_asyncio.client.ApiClient``; see the module docstring."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        watch_idle_timeout: float = DEFAULT_WATCH_IDLE_TIMEOUT,
        max_watch_connections: int = 200,
        owns_api_client: bool = False,
        decoder: JsonDecoder = jsoncodec.loads,
    ) -> None:
        self.api_client = api_client
        self.configuration: k8s.Configuration = api_client.configuration
        self.request_timeout = request_timeout
        self.watch_idle_timeout = watch_idle_timeout
        self.decoder = decoder
        self._owns_api_client = owns_api_client
        self._max_watch_connections = max_watch_connections
        self._watch_session: aiohttp.ClientSession | None = None
        self._host = self.configuration.host.rstrip("/")
        self._host_label = urlsplit(self._host).netloc or self._host
        self._discovery: dict[str, dict[str, Resource]] = {}
        self._discovery_lock = asyncio.Lock()

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    async def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None, **kw: Any
    ) -> Self:
        """Load a kubeconfig: ``path``, else ``$KUBECONFIG`` (first entry), else ``~/.kube/config``."""
        cfg = k8s.Configuration()
        if path is None:
            env = os.environ.get("KUBECONFIG", "")
            first = next((p for p in env.split(os.pathsep) if p), "")
            path = first or Path.home() / ".kube" / "config"
        await k8s_config.load_kube_config(
            config_file=str(path), context=context, client_configuration=cfg, persist_config=False
        )
        return cls(k8s.ApiClient(_pooled(cfg)), owns_api_client=True, **kw)

    @classmethod
    async def from_config(
        cls,
        configuration: k8s.Configuration | None = None,
        *,
        in_cluster: bool | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        **kw: Any,
    ) -> Self:
        """From a ready ``Configuration``, or in-cluster config, or a kubeconfig.

        ``in_cluster=None`` picks in-cluster when ``KUBERNETES_SERVICE_HOST`` is set and no kubeconfig
        was named, as controller-runtime's ``GetConfig`` does (minus its flag handling).
        """
        if configuration is not None:
            return cls(k8s.ApiClient(configuration), owns_api_client=True, **kw)
        if in_cluster is None:
            in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        if in_cluster:
            cfg = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=cfg)
            return cls(k8s.ApiClient(_pooled(cfg)), owns_api_client=True, **kw)
        return await cls.from_kubeconfig(kubeconfig, context=context, **kw)

    async def close(self) -> None:
        if self._watch_session is not None:
            await self._watch_session.close()
            self._watch_session = None
        if self._owns_api_client:
            await self.api_client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing ----------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self._host

    def _session(self) -> aiohttp.ClientSession:
        return self.api_client.rest_client.pool_manager

    def _watches(self) -> aiohttp.ClientSession:
        """A dedicated connection pool so long-lived watches never starve ordinary requests."""
        if self._watch_session is None or self._watch_session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_watch_connections, ssl=_ssl_context(self.configuration)
            )
            self._watch_session = aiohttp.ClientSession(
                connector=connector, trust_env=True, read_bufsize=2**21
            )
        return self._watch_session

    async def _headers(
        self, content_type: str | None = None, accept: str = "application/json"
    ) -> dict[str, str]:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        ua = getattr(self.api_client, "user_agent", None)
        if ua:
            headers["User-Agent"] = ua
        for setting in (await self.configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        if self.configuration.username and self.configuration.password:
            headers["Authorization"] = self.configuration.get_basic_auth_token()
        return headers

    def _request_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.configuration.proxy:
            kw["proxy"] = self.configuration.proxy
        if getattr(self.configuration, "tls_server_name", None):
            kw["server_hostname"] = self.configuration.tls_server_name
        return kw

    def _record(self, verb: str, code: str, started: float, req_size: int, resp_size: int | None) -> None:
        host = self._host_label
        metrics.rest_client_requests_total.labels(code, verb, host).inc()
        metrics.rest_client_request_duration_seconds.labels(verb, host).observe(time.monotonic() - started)
        metrics.rest_client_request_size_bytes.labels(verb, host).observe(req_size)
        if resp_size is not None:
            metrics.rest_client_response_size_bytes.labels(verb, host).observe(resp_size)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
        accept: str = "application/json",
    ) -> Any:
        """Send one request; return the decoded JSON body; raise a typed error for any non-2xx."""
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else jsoncodec.dumps(body)
        headers = await self._headers(content_type if data is not None else None, accept)
        t = self.request_timeout if request_timeout is None else request_timeout
        started = time.monotonic()
        try:
            async with self._session().request(
                method,
                self._host + path,
                params=list(params),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=t),
                **self._request_kwargs(),
            ) as resp:
                raw = await resp.read()
                self._record(method, str(resp.status), started, len(data or b""), len(raw))
                if resp.status >= 400:
                    raise errors.from_response(resp.status, raw, resp.headers)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            self._record(method, "<error>", started, len(data or b""), None)
            raise errors.Timeout(f"{method} {path}: no response within {t}s", status=0) from exc
        except aiohttp.ClientError as exc:
            self._record(method, "<error>", started, len(data or b""), None)
            raise errors.ConnectionFailed(f"{method} {path}: {exc}") from exc
        return self.decoder(raw) if raw else None

    # --- reads -------------------------------------------------------------------------------------
    async def get(
        self, resource: Resource, name: str, namespace: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        self._check_ns(resource, namespace, name)
        return await self.request("GET", resource.path(namespace, name), **kw)

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        request_timeout: float | None = None,
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        """One LIST page: the raw ``*List`` body (``items``, ``metadata.resourceVersion``/``continue``).

        ``metadata_only``: items are ``PartialObjectMetadata`` (apiVersion/kind/metadata only), a cheap
        way to cache what only needs names, labels and owner references.
        """
        params: list[tuple[str, str]] = []
        if label_selector:
            params.append(("labelSelector", label_selector))
        if field_selector:
            params.append(("fieldSelector", field_selector))
        if resource_version is not None:
            params.append(("resourceVersion", resource_version))
        if resource_version_match:
            params.append(("resourceVersionMatch", resource_version_match))
        if limit:
            params.append(("limit", str(limit)))
        if continue_:
            params.append(("continue", continue_))
        page = await self.request(
            "GET",
            resource.path(namespace),
            params=params,
            request_timeout=request_timeout,
            accept=METADATA_LIST_ACCEPT if metadata_only else "application/json",
        )
        # the server leaves apiVersion/kind off list items; fill them in (as client-go's unstructured
        # decoding does) so an object looks the same whether it came from a LIST or a watch event
        list_kind = page.get("kind") or ""
        if list_kind.endswith("List"):
            kind = list_kind[:-4]
            api_version = page.get("apiVersion") or resource.api_version
            for item in page.get("items") or ():
                if "kind" not in item:
                    item["kind"] = kind
                    item["apiVersion"] = api_version
        return page

    async def list_all(
        self, resource: Resource, namespace: str | None = None, *, page_size: int = 500, **kw: Any
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item across pages, and the list's resourceVersion (that of the first page)."""
        items: list[dict[str, Any]] = []
        rv = ""
        cont: str | None = None
        while True:
            page = await self.list(resource, namespace, limit=page_size, continue_=cont, **kw)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            cont = meta.get("continue") or None
            if not cont:
                return items, rv
            kw.pop("resource_version", None)  # the continue token pins the snapshot
            kw.pop("resource_version_match", None)

    def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        allow_watch_bookmarks: bool = True,
        timeout_seconds: int | None = None,
        send_initial_events: bool | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        idle_timeout: float | None = None,
        raise_errors: bool = True,
        metadata_only: bool = False,
    ) -> WatchStream:
        """A watch stream; use as ``async with client.watch(...) as w: async for t, obj in w``."""
        params: list[tuple[str, str]] = [("watch", "true")]
        if resource_version is not None:
            params.append(("resourceVersion", resource_version))
        if resource_version_match:
            params.append(("resourceVersionMatch", resource_version_match))
        if allow_watch_bookmarks:
            params.append(("allowWatchBookmarks", "true"))
        if timeout_seconds is not None:
            params.append(("timeoutSeconds", str(int(timeout_seconds))))
        if send_initial_events is not None:
            params.append(("sendInitialEvents", _bool(send_initial_events)))
        if label_selector:
            params.append(("labelSelector", label_selector))
        if field_selector:
            params.append(("fieldSelector", field_selector))
        return WatchStream(
            self,
            resource.path(namespace),
            params,
            idle_timeout=self.watch_idle_timeout if idle_timeout is None else idle_timeout,
            total_timeout=(timeout_seconds + 30.0) if timeout_seconds else None,
            raise_errors=raise_errors,
            accept=METADATA_ACCEPT if metadata_only else "application/json",
        )

    # --- writes ------------------------------------------------------------------------------------
    @staticmethod
    def _meta(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise ValueError(f"object of kind {obj.get('kind')!r} has no metadata")
        return meta

    @staticmethod
    def _check_ns(resource: Resource, namespace: str | None, name: str | None) -> None:
        if resource.namespaced and not namespace:
            raise ValueError(f"{resource.kind} {name!r}: namespace is required for a namespaced resource")

    def _obj_ns_name(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None
    ) -> tuple[str | None, str]:
        meta = self._meta(obj)
        name = meta.get("name")
        if not name:
            raise ValueError(f"{resource.kind}: metadata.name is required")
        ns = (namespace or meta.get("namespace")) if resource.namespaced else None
        self._check_ns(resource, ns, name)
        return ns, name

    @staticmethod
    def _write_params(dry_run: bool, field_manager: str | None) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if dry_run:
            params.append(("dryRun", "All"))
        if field_manager:
            params.append(("fieldManager", field_manager))
        return params

    async def create(
        self,
        resource: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        meta = self._meta(obj)
        ns = (namespace or meta.get("namespace")) if resource.namespaced else None
        self._check_ns(resource, ns, meta.get("name") or meta.get("generateName"))
        return await self.request(
            "POST", resource.path(ns), params=self._write_params(dry_run, field_manager), body=obj
        )

    async def update(
        self,
        resource: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """PUT the whole object; a stale ``metadata.resourceVersion`` raises :class:`Conflict`."""
        ns, name = self._obj_ns_name(resource, obj, namespace)
        return await self.request(
            "PUT", resource.path(ns, name), params=self._write_params(dry_run, field_manager), body=obj
        )

    async def update_status(
        self,
        resource: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """PUT the ``/status`` subresource: only ``.status`` changes on the server."""
        ns, name = self._obj_ns_name(resource, obj, namespace)
        return await self.request(
            "PUT",
            resource.path(ns, name, "status"),
            params=self._write_params(dry_run, field_manager),
            body=obj,
        )

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
        field_manager: str | None = None,
        force: bool | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH with ``merge`` / ``strategic`` / ``json`` (a list of ops) / ``apply`` (server-side apply).

        Server-side apply needs ``field_manager``; ``force=True`` takes over conflicting fields.
        """
        try:
            ctype = PATCH_CONTENT_TYPES[patch_type]
        except KeyError:
            raise ValueError(
                f"patch_type must be one of {sorted(PATCH_CONTENT_TYPES)}, not {patch_type!r}"
            ) from None
        if patch_type == "apply" and not field_manager:
            raise ValueError(f"{resource.kind} {name!r}: server-side apply needs a field_manager")
        if patch_type == "json" and not isinstance(patch, list):
            raise ValueError(f"{resource.kind} {name!r}: a JSON patch is a list of operations")
        self._check_ns(resource, namespace, name)
        params = self._write_params(dry_run, field_manager)
        if force is not None:
            params.append(("force", _bool(force)))
        return await self.request(
            "PATCH",
            resource.path(namespace if resource.namespaced else None, name, subresource),
            params=params,
            body=patch,
            content_type=ctype,
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """DELETE, optionally only if ``uid``/``resource_version`` still match (else :class:`Conflict`).

        ``propagation_policy``: ``Foreground``, ``Background`` or ``Orphan``. Returns the server's answer
        (the object while finalizers run, or a Status); ``None`` if absent and ``missing_ok``.
        """
        self._check_ns(resource, namespace, name)
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        pre: dict[str, str] = {}
        if uid:
            pre["uid"] = uid
        if resource_version:
            pre["resourceVersion"] = resource_version
        if pre:
            options["preconditions"] = pre
        if propagation_policy:
            if propagation_policy not in ("Foreground", "Background", "Orphan"):
                raise ValueError(
                    f"propagation_policy {propagation_policy!r} is not Foreground/Background/Orphan"
                )
            options["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if dry_run:
            options["dryRun"] = ["All"]
        try:
            return await self.request(
                "DELETE", resource.path(namespace if resource.namespaced else None, name), body=options
            )
        except errors.NotFound:
            if missing_ok:
                return None
            raise

    # --- discovery ---------------------------------------------------------------------------------
    async def resource_for(self, api_version: str, kind: str) -> Resource:
        """The :class:`Resource` serving ``kind`` in ``api_version``, via discovery (cached per GV).

        A miss refreshes that group-version once (a CRD may have just been installed).
        """
        group, version = split_api_version(api_version)
        for refresh in (False, True):
            kinds = await self._discover(group, version, refresh=refresh)
            if kind in kinds:
                return kinds[kind]
        raise errors.NotFound(f"no resource for kind {kind!r} in {api_version}", reason="NotFound")

    async def _discover(self, group: str, version: str, *, refresh: bool) -> dict[str, Resource]:
        key = f"{group}/{version}"
        async with self._discovery_lock:
            if refresh or key not in self._discovery:
                path = f"/apis/{group}/{version}" if group else f"/api/{version}"
                try:
                    doc = await self.request("GET", path)
                except errors.NotFound:
                    doc = {"resources": []}
                found: dict[str, Resource] = {}
                for r in doc.get("resources") or []:
                    if "/" in r.get("name", ""):
                        continue  # subresource
                    found.setdefault(
                        r["kind"], Resource(group, version, r["name"], r["kind"], bool(r.get("namespaced")))
                    )
                self._discovery[key] = found
            return self._discovery[key]


class WatchStream:
    """One watch request: an async context manager and async iterator of ``(type, object)``.

    Reads the chunked body itself and splits lines without a length limit (one event can be
    megabytes), holding at most one partial line in memory. No bytes for ``idle_timeout`` seconds
    raises :class:`errors.Timeout` (the half-open-connection watchdog). An ``ERROR`` event raises
    the typed error it carries (``Gone`` for an expired resourceVersion) unless ``raise_errors`` is
    False, in which case it is yielded as ``("ERROR", status)``. Ends normally when the server
    closes the stream (e.g. ``timeoutSeconds`` elapsed).
    """

    def __init__(
        self,
        client: Client,
        path: str,
        params: list[tuple[str, str]],
        *,
        idle_timeout: float,
        total_timeout: float | None,
        raise_errors: bool,
        accept: str = "application/json",
    ) -> None:
        self._client = client
        self._path = path
        self._params = params
        self._idle = idle_timeout
        self._total = total_timeout
        self._raise = raise_errors
        self._accept = accept
        self._resp: aiohttp.ClientResponse | None = None
        self._lines: AsyncIterator[bytes] | None = None
        self._done = False
        self.bytes_read = 0

    async def open(self) -> None:
        c = self._client
        headers = await c._headers(accept=self._accept)
        started = time.monotonic()
        try:
            resp = await c._watches().get(
                c.host + self._path,
                params=self._params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=self._total, sock_connect=c.request_timeout, sock_read=self._idle
                ),
                **c._request_kwargs(),
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            c._record("WATCH", "<error>", started, 0, None)
            raise errors.Timeout(f"WATCH {self._path}: no response", status=0) from exc
        except aiohttp.ClientError as exc:
            c._record("WATCH", "<error>", started, 0, None)
            raise errors.ConnectionFailed(f"WATCH {self._path}: {exc}") from exc
        c._record("WATCH", str(resp.status), started, 0, None)
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            raise errors.from_response(resp.status, raw, resp.headers)
        self._resp = resp
        self._lines = self._iter_lines(resp)

    async def _iter_lines(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        async for lines in self._iter_line_batches(resp):
            for line in lines:
                yield line

    async def _iter_line_batches(self, resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
        """Complete lines per network read; at most one partial line is held between reads."""
        buf = b""
        content = resp.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise errors.Timeout(f"WATCH {self._path}: no data for {self._idle}s", status=0) from exc
            except aiohttp.ClientError as exc:
                raise errors.ConnectionFailed(f"WATCH {self._path}: {exc}") from exc
            if not chunk:
                if buf.strip():
                    yield [buf]
                return
            self.bytes_read += len(chunk)
            if b"\n" not in chunk:
                buf += chunk
                continue
            parts = (buf + chunk).split(b"\n")
            buf = parts.pop()
            yield [line for line in parts if line]

    async def batches(self) -> AsyncIterator[list[WatchEvent]]:
        """Events grouped per network read: the reflector's fast path (one await per read, not per event).

        Same semantics as iterating the stream: an ERROR event raises its typed error after the
        events before it were yielded; malformed JSON raises :class:`errors.ApiError`.
        """
        if self._done:
            return
        if self._resp is None:
            await self.open()
        assert self._resp is not None
        decode = self._client.decoder
        try:
            async for lines in self._iter_line_batches(self._resp):
                out: list[WatchEvent] = []
                for line in lines:
                    try:
                        event = decode(line)
                        etype = event["type"]
                        obj = event["object"]
                    except (ValueError, KeyError, TypeError) as exc:
                        if out:
                            yield out
                        raise errors.ApiError(f"WATCH {self._path}: malformed event {line[:200]!r}") from exc
                    if etype == "ERROR" and self._raise:
                        if out:
                            yield out
                        code = obj.get("code") if isinstance(obj, dict) else None
                        raise errors.from_status(int(code or 500), obj)
                    out.append((etype, obj))
                if out:
                    yield out
        finally:
            self._done = True
            await self.close()

    async def close(self) -> None:
        if self._lines is not None:
            await self._lines.aclose()  # type: ignore[attr-defined]
            self._lines = None
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    aclose = close

    def abort(self) -> None:
        """Close the connection under a reader in another task (it sees the stream end)."""
        if self._resp is not None:
            self._resp.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._done:
            raise StopAsyncIteration
        if self._lines is None:
            await self.open()
        assert self._lines is not None
        decode = self._client.decoder
        try:
            line = await self._lines.__anext__()
        except BaseException:
            self._done = True
            await self.close()
            raise
        try:
            event = decode(line)
            etype = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError) as exc:
            self._done = True
            await self.close()
            raise errors.ApiError(f"WATCH {self._path}: malformed event {line[:200]!r}") from exc
        if etype == "ERROR" and self._raise:
            self._done = True
            await self.close()
            code = obj.get("code") if isinstance(obj, dict) else None
            raise errors.from_status(int(code or 500), obj)
        return etype, obj
