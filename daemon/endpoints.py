"""Where the daemon listens and who may talk to it: endpoints, permissions, the one-daemon lock, CURVE keys.

Security model, in order of preference:
  1. `ipc://` in the user's runtime directory (the default): the directory is 0700 and the socket 0600, so only
     the same user reaches it. No keys needed.
  2. `tcp://127.0.0.1:PORT` (loopback): reachable by every local user; allowed for tools that cannot use ipc.
  3. Any other TCP address: refused unless CURVE is configured (a server key pair plus a folder of the client
     public keys allowed in); then the traffic is encrypted and unknown clients are rejected by the ZAP handler.

No zmq socket is created here (server.py and client.py do that); this module only resolves and checks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from filelock import FileLock, Timeout
from platformdirs import user_log_dir, user_runtime_dir

log = logging.getLogger(__name__)

APP_NAME = "mot-cuda"
ENDPOINT_ENV = "MOT_DAEMON_ENDPOINT"
SOCKET_NAME = "daemon.sock"
# sun_path is 108 bytes on Linux (104 on macOS), NUL included.
MAX_IPC_PATH_BYTES = 103


class EndpointError(ValueError):
    """An endpoint that cannot or may not be used; the message says why and what to do instead."""


class DaemonAlreadyRunning(RuntimeError):
    """Another daemon holds the endpoint's lock."""

    def __init__(self, message: str, *, pid: int | None):
        super().__init__(message)
        self.pid = pid


# ---------------------------------------------------------------------------------------------------- directories


def runtime_dir() -> Path:
    """The user's runtime directory for the daemon (XDG_RUNTIME_DIR/mot-cuda on Linux)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp/runtime-UID; we check that
        # directory's owner and mode ourselves (ensure_private_dir), so the fallback is safe.
        warnings.simplefilter("ignore")
        return Path(user_runtime_dir(APP_NAME))


def log_dir() -> Path:
    """Where the daemon's log file goes (the user's log/state directory)."""
    return Path(user_log_dir(APP_NAME))


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700, or check an existing one is ours, a real directory, and 0700.

    An existing directory owned by someone else is refused (on a shared /tmp another user could have made it to
    catch our socket); one of ours with looser permissions is tightened.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
    except OSError as e:
        raise EndpointError(f"cannot create the directory {path}: {e}") from e
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise EndpointError(f"{path} must be a real directory (it is a link or a file); remove it and retry")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise EndpointError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); another user may be trying to "
            f"intercept the daemon's socket. Set XDG_RUNTIME_DIR to a private directory or pass --endpoint"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


# ---------------------------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. `address` is what zmq binds/connects; `ipc_path` is set for ipc endpoints."""

    address: str
    transport: str  # "ipc" | "tcp"
    ipc_path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_loopback(self) -> bool:
        return self.transport == "ipc" or (self.host is not None and _is_loopback_host(self.host))

    @property
    def lock_path(self) -> Path:
        """The lock file that makes this endpoint one daemon's: next to the socket, or in the runtime dir."""
        if self.ipc_path is not None:
            return self.ipc_path.with_name(self.ipc_path.name + ".lock")
        safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in str(self.host))
        return runtime_dir() / f"tcp-{safe_host}-{self.port}.lock"

    def __str__(self) -> str:
        return self.address


def default_endpoint() -> str:
    """$MOT_DAEMON_ENDPOINT, else ipc://<runtime dir>/daemon.sock."""
    env = os.environ.get(ENDPOINT_ENV)
    if env:
        return env
    return f"ipc://{runtime_dir() / SOCKET_NAME}"


def parse_endpoint(address: str | None) -> Endpoint:
    """Parse and check an endpoint string (None: the default). Raises EndpointError with the reason."""
    if address is None:
        address = default_endpoint()
    if not isinstance(address, str):
        raise EndpointError(f"an endpoint must be a string like ipc:///path or tcp://127.0.0.1:5555, got {address!r}")
    if address.startswith("ipc://"):
        raw = address[len("ipc://") :]
        if not raw or raw.startswith("@"):
            raise EndpointError(
                f"{address!r}: give a filesystem path (ipc:///run/user/1000/mot.sock); abstract sockets have no "
                "permissions and are not allowed"
            )
        path = Path(raw).expanduser().absolute()
        if len(str(path).encode()) > MAX_IPC_PATH_BYTES:
            raise EndpointError(
                f"the ipc path {path} is {len(str(path).encode())} bytes long; the limit is {MAX_IPC_PATH_BYTES}. "
                "Use a shorter path (set XDG_RUNTIME_DIR or pass --endpoint ipc:///short/path.sock)"
            )
        return Endpoint(address=f"ipc://{path}", transport="ipc", ipc_path=path)
    if address.startswith("tcp://"):
        rest = address[len("tcp://") :]
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"{address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise EndpointError(f"{address!r}: the port {port_text!r} is not a number") from None
        if not 1 <= port <= 65535:
            raise EndpointError(f"{address!r}: the port must be in 1..65535, got {port}")
        shown = f"[{host}]" if ":" in host else host
        return Endpoint(address=f"tcp://{shown}:{port}", transport="tcp", host=host, port=port)
    raise EndpointError(
        f"unsupported endpoint {address!r}: use ipc:///path/to/socket (default, private to your user) or "
        "tcp://127.0.0.1:PORT (tcp://HOST:PORT on other interfaces needs CURVE keys)"
    )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an interface (eth0, *): treated as reachable from outside


def check_server_security(endpoint: Endpoint, curve_configured: bool) -> None:
    """Refuse a non-loopback TCP endpoint without CURVE: anybody on the network could run or stop translations."""
    if endpoint.transport == "tcp" and not endpoint.is_loopback and not curve_configured:
        raise EndpointError(
            f"refusing to listen on {endpoint.address}: it is not a loopback address and no CURVE keys are "
            "configured, so anyone who can reach it could use or stop the daemon. Use tcp://127.0.0.1:PORT, the "
            "default ipc endpoint, or pass --curve-dir DIR (create one with `mot-daemon keys DIR`)"
        )


def prepare_ipc_directory(endpoint: Endpoint) -> None:
    """Make the socket's directory: 0700 and ours for the runtime dir or a directory we create.

    A user-chosen existing directory elsewhere (say /tmp) is not re-permissioned, but the socket itself is still
    made 0600 by the server.
    """
    if endpoint.ipc_path is None:
        return
    parent = endpoint.ipc_path.parent
    if parent == runtime_dir() or not parent.exists():
        ensure_private_dir(parent)


# ---------------------------------------------------------------------------------------------------- the lock


class EndpointLock:
    """An exclusive lock per endpoint, held for the daemon's life.

    ZeroMQ lets a second bind of an ipc path silently replace the first daemon's socket, so the lock is taken
    before binding. It is an OS lock (fcntl via filelock): a daemon killed with -9 releases it, and the next one
    removes the stale socket file and starts normally. The holder's pid is written next to it for messages.
    """

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.path = endpoint.lock_path
        self.info_path = self.path.with_name(self.path.name + ".json")
        self._lock = None

    def acquire(self) -> "EndpointLock":
        if self.endpoint.ipc_path is None:
            ensure_private_dir(self.path.parent)
        lock = FileLock(str(self.path), timeout=0, thread_local=False, fallback_to_soft=False)
        try:
            lock.acquire()
        except Timeout:
            holder = read_lock_holder(self.endpoint)
            who = f"pid {holder}" if holder else "another process"
            raise DaemonAlreadyRunning(
                f"another mot-daemon ({who}) is already serving {self.endpoint.address} (lock {self.path}); "
                f"stop it with `mot-daemon stop --endpoint {self.endpoint.address}` or choose another --endpoint",
                pid=holder,
            ) from None
        self._lock = lock
        tmp = self.info_path.with_name(self.info_path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "endpoint": self.endpoint.address}))
        os.replace(tmp, self.info_path)
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            if read_lock_holder(self.endpoint) == os.getpid():
                self.info_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "EndpointLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock_holder(endpoint: Endpoint) -> int | None:
    """The pid recorded by the daemon holding (or last holding) the endpoint's lock, if readable."""
    info = endpoint.lock_path.with_name(endpoint.lock_path.name + ".json")
    try:
        return int(json.loads(info.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_is_held(endpoint: Endpoint) -> bool:
    """Whether a live process holds the endpoint's lock (without taking it for long)."""
    if not endpoint.lock_path.exists():
        return False
    lock = FileLock(str(endpoint.lock_path), timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


# ---------------------------------------------------------------------------------------------------- CURVE keys


@dataclass(frozen=True)
class CurveServerKeys:
    """The daemon's key pair and the folder of client public keys allowed in (zmq.auth certificate files)."""

    public: bytes
    secret: bytes
    authorized_clients_dir: Path


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs: the daemon's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes


SERVER_SECRET_FILE = "server.key_secret"
SERVER_PUBLIC_FILE = "server.key"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"


def load_server_keys(curve_dir: str | Path) -> CurveServerKeys:
    """Read DIR/server.key_secret and check DIR/authorized_clients/ holds at least one client key."""
    curve_dir = Path(curve_dir)
    secret_file = curve_dir / SERVER_SECRET_FILE
    if not secret_file.exists():
        raise EndpointError(f"no {SERVER_SECRET_FILE} in {curve_dir}; create keys with `mot-daemon keys {curve_dir}`")
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if not secret:
        raise EndpointError(f"{secret_file} holds no secret key")
    authorized = curve_dir / AUTHORIZED_DIR
    keys = sorted(authorized.glob("*.key")) if authorized.is_dir() else []
    if not keys:
        raise EndpointError(
            f"no client public keys (*.key) in {authorized}: nobody could connect. Copy each client's .key there"
        )
    return CurveServerKeys(public=public, secret=secret, authorized_clients_dir=authorized)


def load_client_keys(server_public_file: str | Path, client_secret_file: str | Path) -> CurveClientKeys:
    server_public, _ = zmq.auth.load_certificate(str(server_public_file))
    public, secret = zmq.auth.load_certificate(str(client_secret_file))
    if not secret:
        raise EndpointError(f"{client_secret_file} holds no secret key (pass the .key_secret file, not the .key)")
    return CurveClientKeys(server_public=server_public, public=public, secret=secret)


def create_keys(curve_dir: str | Path, client_names: list[str]) -> dict[str, Path]:
    """Create a server key pair, one key pair per client, and allow those clients in. Returns the files made."""
    curve_dir = ensure_private_dir(Path(curve_dir))
    made: dict[str, Path] = {}
    if (curve_dir / SERVER_SECRET_FILE).exists():
        log.info("keeping the existing server key in %s", curve_dir)
    else:
        zmq.auth.create_certificates(str(curve_dir), "server")
    made["server_public"] = curve_dir / SERVER_PUBLIC_FILE
    made["server_secret"] = curve_dir / SERVER_SECRET_FILE
    clients = ensure_private_dir(curve_dir / CLIENTS_DIR)
    authorized = ensure_private_dir(curve_dir / AUTHORIZED_DIR)
    for name in client_names:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise EndpointError(f"client key name {name!r} may hold only letters, digits, '-', '_' and '.'")
        if not (clients / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(clients), name)
        shutil.copyfile(clients / f"{name}.key", authorized / f"{name}.key")
        made[f"client:{name}"] = clients / f"{name}.key_secret"
    for p in curve_dir.rglob("*_secret"):
        os.chmod(p, 0o600)
    return made


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (somebody else's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
