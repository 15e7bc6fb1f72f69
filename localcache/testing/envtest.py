"""A real kube-apiserver + etcd (and optionally kube-controller-manager) for tests and the demo.

Same idea as controller-runtime's envtest: the binaries are the real ones, built from Go modules by
``make envtest`` (``hack/envtest/build.sh``) or taken from ``KUBEBUILDER_ASSETS``. Every process is
started with ``PR_SET_PDEATHSIG`` so that even a SIGKILLed test run leaves nothing behind, and in a
session of its own so a terminal's Ctrl-C reaches only us and we stop them in order.

Command line, for people and scripts::

    python -m localcache.testing.envtest up --kubeconfig /tmp/envtest.kubeconfig
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcache.testing.certs import KeyPair, TinyCA, rsa_signing_key
from localcache.testing.faultproxy import ProxyTLS
from localcache.testing.processes import die_with_parent

#: The Kubernetes release that ``hack/envtest/go.mod`` pins; a unit test keeps the two equal.
K8S_VERSION = "1.36.3"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: CRDs every test cluster gets: ours, plus the InferenceService CRD KServe would own on a real cluster.
DEFAULT_CRD_DIRS = (REPO_ROOT / "manifests" / "crds", Path(__file__).parent / "crds")
START_TIMEOUT_S = float(os.environ.get("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT", "30").rstrip("s"))
STOP_TIMEOUT_S = float(os.environ.get("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT", "20").rstrip("s"))
ADMIN_USER = "localcache-admin"


class EnvtestError(RuntimeError):
    """The control plane could not be found, started or talked to; the message says which part."""


def default_assets_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "localcache" / "envtest" / K8S_VERSION


def assets_dir() -> Path:
    """Where the binaries are: ``KUBEBUILDER_ASSETS`` if set, else the ``make envtest`` cache."""
    configured = os.environ.get("KUBEBUILDER_ASSETS")
    directory = Path(configured) if configured else default_assets_dir()
    missing = [b for b in ("etcd", "kube-apiserver") if not (directory / b).is_file()]
    if missing:
        how = "KUBEBUILDER_ASSETS" if configured else "the envtest cache"
        raise EnvtestError(
            f"{', '.join(missing)} not found in {directory} ({how}); run `make envtest` "
            "(needs the Go toolchain) or point KUBEBUILDER_ASSETS at a directory holding envtest binaries"
        )
    return directory


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and that this process has not handed out before.

    The port is only reserved until the caller's child binds it. The kernel may offer a port again as
    soon as its probe socket is closed, so a system that picks ten ports before starting ten
    processes could hand two of them the same one; remembering what was handed out rules that out
    (ports held by other processes are still a race, but not one of our own making).
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free loopback port that was not handed out already")


@dataclass
class _Process:
    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        finally:
            log.close()

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise EnvtestError(
                f"{self.name} exited with code {self.popen.returncode}; last log lines:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _wait_for(what: str, probe: Any, process: _Process, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            if probe():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise EnvtestError(
        f"{what} not ready after {timeout:.0f}s (last error: {last_error}); "
        f"last log lines:\n{process.log_tail()}"
    )


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on free loopback ports.

    Use as a context manager, or ``start()``/``stop()``. ``kubeconfig`` is written with an admin
    identity (``system:masters``); ``user_kubeconfig`` makes one for any other user, for RBAC tests.
    """

    controllers: tuple[str, ...] | None = ("garbagecollector", "job", "namespace", "ttl-after-finished")
    crd_dirs: Iterable[Path] = DEFAULT_CRD_DIRS
    workdir: Path | None = None
    kubeconfig: Path | None = None
    extra_apiserver_args: list[str] = field(default_factory=list)

    url: str = ""
    ca: TinyCA = field(default_factory=TinyCA)
    etcd_url: str = ""
    _processes: list[_Process] = field(default_factory=list)
    _owns_workdir: bool = False
    _admin: KeyPair | None = None
    _admin_ssl: ssl.SSLContext | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        assets = assets_dir()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="localcache-envtest-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_etcd(assets)
            self._start_apiserver(assets)
            if self.controllers and (assets / "kube-controller-manager").is_file():
                self._start_controller_manager(assets)
            self.install_crds(self.crd_dirs)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def has_controller_manager(self) -> bool:
        return any(p.name == "kube-controller-manager" for p in self._processes)

    @property
    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._processes if p.popen is not None]

    # ---- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> _Process:
        assert self.workdir is not None
        process = _Process(name, args, self.workdir / f"{name}.log")
        process.start()
        self._processes.append(process)
        return process

    def _start_etcd(self, assets: Path) -> None:
        assert self.workdir is not None
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        etcd = self._spawn(
            "etcd",
            [
                str(assets / "etcd"),
                "--name=envtest",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=1) as resp:
                return bool(json.load(resp).get("health") == "true")

        _wait_for("etcd", healthy, etcd)

    def _start_apiserver(self, assets: Path) -> None:
        assert self.workdir is not None
        certs = self.workdir / "pki"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(self.ca.cert_pem)
        serving_cert, serving_key = self.ca.serving(["127.0.0.1", "localhost"]).write(certs, "apiserver")
        sa_key = certs / "sa.key"
        sa_key.write_bytes(rsa_signing_key())
        self._admin = self.ca.client(ADMIN_USER, ("system:masters",))
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(assets / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                *self.extra_apiserver_args,
            ],
        )
        self.kubeconfig = self.kubeconfig or self.workdir / "admin.kubeconfig"
        self.write_kubeconfig(self.kubeconfig, self._admin)
        _wait_for("kube-apiserver", lambda: self.request("GET", "/readyz") == "ok", apiserver)

    def _start_controller_manager(self, assets: Path) -> None:
        assert self.workdir is not None and self.kubeconfig is not None
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(assets / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(self.controllers or ())}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--concurrent-gc-syncs=5",
            ],
        )
        time.sleep(0)  # it has no readiness of its own that matters; a dead process is caught below
        kcm.check_alive()

    # ---- talking to it -------------------------------------------------------------------------
    def _ssl_context(self, identity: KeyPair | None = None) -> ssl.SSLContext:
        assert self.workdir is not None
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        identity = identity or self._admin
        if identity is not None:
            with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
                cert, key = identity.write(Path(tmp), "client")
                context.load_cert_chain(cert, key)
        return context

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        """A small admin REST call for the harness itself (CRD install, waits); JSON in and out."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        if self._admin_ssl is None:
            self._admin_ssl = self._ssl_context()
        with urllib.request.urlopen(req, context=self._admin_ssl, timeout=10) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def write_kubeconfig(
        self, path: Path, identity: KeyPair, user: str = ADMIN_USER, server: str | None = None
    ) -> Path:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        cluster = {"server": server or self.url, "certificate-authority-data": b64(self.ca.cert_pem)}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": cluster,
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(identity.cert_pem),
                        "client-key-data": b64(identity.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
            "current-context": "envtest",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomically: processes started a moment ago may be reading the same identity's file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def user_kubeconfig(
        self, path: Path, user: str, groups: tuple[str, ...] = (), server: str | None = None
    ) -> Path:
        """A kubeconfig for ``user`` (e.g. ``system:serviceaccount:ns:name``): RBAC decides what it may do.
        ``server`` points it elsewhere, e.g. at a fault proxy in front of this API server."""
        return self.write_kubeconfig(path, self.ca.client(user, groups), user=user, server=server)

    def proxy_tls(self) -> ProxyTLS:
        """What a ``FaultProxy`` needs to stand in front of this API server."""
        assert self.workdir is not None and self._admin is not None
        return ProxyTLS(ca=self.ca, admin=self._admin, workdir=self.workdir)

    def compact(self) -> int:
        """Compact etcd at its current revision, so every older resourceVersion is gone (410).

        This is what a long-running cluster does every 5 minutes; tests call it to force the
        "too old resource version" path that informers must survive.
        """

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(
                self.etcd_url + path,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.load(resp))

        key = base64.b64encode(b"/").decode()
        revision = int(post("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def restart_apiserver(self, graceful: bool = False) -> None:
        """Kill (or, with ``graceful``, stop) kube-apiserver and start it on the same port and data.

        Its watch cache starts again from the current revision, so a watch from any older, compacted
        resourceVersion now gets 410 Gone, and every open watch connection drops. Until the cache of a
        resource has been filled again the server answers 429 with Retry-After for it, as real ones do.
        """
        apiserver = next(p for p in self._processes if p.name == "kube-apiserver")
        if graceful:
            apiserver.stop()
        elif apiserver.popen is not None:
            apiserver.popen.kill()
            apiserver.popen.wait()
        apiserver.start()
        _wait_for("kube-apiserver", lambda: self.request("GET", "/readyz") == "ok", apiserver)

    # ---- CRDs ----------------------------------------------------------------------------------
    def install_crds(self, sources: Iterable[Path]) -> list[str]:
        """Create or replace every CRD found in the YAML files under ``sources``, then wait until each
        is Established, so a test never races the API server's discovery."""
        names = [self._apply_crd(doc) for doc in _crd_documents(sources)]
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = set(names)
        while pending:
            for name in list(pending):
                crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                status = crd.get("status") or {}
                conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
                if conditions.get("Established") == "True":
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise EnvtestError(f"CRDs not established in time: {sorted(pending)}")
            if pending:
                time.sleep(0.1)
        return names

    def _apply_crd(self, doc: dict[str, Any]) -> str:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        name = doc["metadata"]["name"]
        try:
            self.request("POST", base, doc)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise EnvtestError(f"installing CRD {name}: HTTP {exc.code}: {exc.read().decode()}") from exc
            current = self.request("GET", f"{base}/{name}")
            doc = {
                **doc,
                "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            self.request("PUT", f"{base}/{name}", doc)
        return str(name)


def _crd_documents(sources: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for source in sources:
        files = sorted(source.glob("*.yaml")) if source.is_dir() else [source] if source.exists() else []
        for path in files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


# ---- command line ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcache.testing.envtest", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run a control plane in the foreground until SIGINT/SIGTERM")
    up.add_argument("--kubeconfig", type=Path, required=True, help="where to write the admin kubeconfig")
    up.add_argument(
        "--no-controller-manager", action="store_true", help="do not start kube-controller-manager"
    )
    args = parser.parse_args(argv)

    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    plane = ControlPlane(
        kubeconfig=args.kubeconfig.resolve(),
        controllers=None if args.no_controller_manager else ControlPlane.controllers,
    )
    try:
        plane.start()
    except EnvtestError as exc:
        print(f"envtest: {exc}", file=sys.stderr)
        return 1
    extra = " with kube-controller-manager" if plane.has_controller_manager else ""
    print(f"envtest: ready at {plane.url}{extra}; KUBECONFIG={plane.kubeconfig}", flush=True)
    try:
        while not stopping:
            signal.pause()
    finally:
        plane.stop()
        with contextlib.suppress(OSError):
            args.kubeconfig.unlink()
    print("envtest: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
