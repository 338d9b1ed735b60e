"""The language server's connection to the MoT daemon: connect, autostart, notice outages, reconnect, tell once.

What this module promises the features:

- `state` is one of LinkState; `READY` means the last contact said "ready". Hovers consult it before asking for
  routing, so a daemon that is down or still loading costs a hover nothing.
- Blocking calls (`route`, `status`, `cancel`, the translation streams of `work_client()`) run on the caller's
  thread; the server calls them from worker threads, never from its event loop.
- A supervisor (`supervise()`, an asyncio task) makes a pass every second (and at once when a call failed): for
  an ipc endpoint it first looks whether the socket file exists and whether the pid its daemon recorded still
  runs (a killed daemon is noticed within a second, without waiting for a socket timeout); then it asks `status`
  — which the daemon answers at once even while it loads or translates — every pass while the daemon is not
  ready, and after 5 s of silence while it is. That probe is the only judge of "down": a slow route (a busy
  engine) is not an outage.
- The user is told once per outage (a warning), and once when the daemon is back (info). Autostart failures are
  told with the log file of the daemon we started.
- A daemon this server started (autostart or the restart command; autostart.py) is stopped when the server exits.
  A daemon somebody else started is never stopped, except by the explicit restart command.

The link talks to the daemon only through `daemon.client` (`DaemonClient`) and `daemon.protocol`; it also uses
`daemon.endpoints` (no sockets there) to resolve the default endpoint, find an ipc socket's file and the pid its
daemon recorded, and see when a stopped daemon released its endpoint lock (restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from daemon import protocol as P
from daemon.client import DaemonClient, DaemonError, DaemonUnavailable
from daemon.endpoints import Endpoint, EndpointError, lock_is_held, parse_endpoint, pid_alive, read_lock_holder
from lsprotocol import types

from .autostart import OwnedDaemon, SpawnFailed, Tell
from .settings import Settings

log = logging.getLogger(__name__)


class LinkState(str, enum.Enum):
    UNKNOWN = "unknown"  # not probed yet
    STARTING = "starting"  # we started a daemon; its socket does not answer yet
    LOADING = "loading"  # a daemon answers and is loading (or reloading) its model
    READY = "ready"
    DOWN = "down"


class DaemonDown(Exception):
    """No usable daemon. The message says why and what to do, in words for the user."""


class DaemonLink:
    """See the module docstring. Thread-safe; `supervise()` runs on the server's event loop."""

    QUICK_TIMEOUT_S = 3.0  # status / route / cancel: how long silence is tolerated
    WORK_TIMEOUT_S = 30.0  # translations (the daemon sends heartbeats while it holds our work)
    PROBE_INTERVAL_S = 1.0  # a pass every second: cheap local checks; a status request while not ready
    HEALTH_INTERVAL_S = 5.0  # while ready: a status request when nothing was heard for this long
    READY_TIMEOUT_S = 600.0  # a translation waits this long for a starting daemon to load its model

    def __init__(self, settings: Settings, *, tell: Tell, on_change: Callable[[LinkState], None] | None = None):
        self.settings = settings
        self._tell = tell
        self._on_change = on_change
        self._lock = threading.RLock()
        self._pass_lock = threading.Lock()  # one probe / spawn / restart at a time
        self._state = LinkState.UNKNOWN
        self._reason = "the daemon has not been contacted yet"
        self._quick: DaemonClient | None = None
        self._work: DaemonClient | None = None
        self._last_contact = 0.0
        self._last_status: P.StatusResult | None = None
        self._told_down = False
        self._owned = OwnedDaemon(tell=tell)  # the daemon this server started, if any (autostart.py)
        self._want_spawn = False
        self._passes = 0
        self._force_probe = False  # a call failed: the next pass probes even if the last contact is recent
        self._closing = False  # close() began: the supervisor stops
        self._closed = False  # close() ended: no more clients
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mot-link")
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------------ state

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def reason(self) -> str:
        """Why the daemon is not ready (meaningful when state != READY)."""
        return self._reason

    @property
    def owns_daemon(self) -> bool:
        return self._owned.running

    @property
    def last_status(self) -> P.StatusResult | None:
        return self._last_status

    def endpoint(self) -> Endpoint:
        """The parsed endpoint of the current settings. Raises DaemonDown for an invalid one."""
        try:
            return parse_endpoint(self.settings.endpoint)
        except EndpointError as e:
            raise DaemonDown(f"mot.endpoint is not usable: {e}") from None

    def endpoint_text(self) -> str:
        try:
            return self.endpoint().address
        except DaemonDown:
            return str(self.settings.endpoint)

    def describe(self) -> str:
        """One line for messages and hovers: state and reason."""
        if self._state == LinkState.READY:
            return f"the MoT daemon at {self.endpoint_text()} is ready"
        if self._state == LinkState.LOADING:
            return f"the MoT daemon at {self.endpoint_text()} is loading its model"
        if self._state == LinkState.UNKNOWN:
            return f"connecting to the MoT daemon at {self.endpoint_text()}"
        if self._state == LinkState.STARTING:
            return f"a MoT daemon is starting at {self.endpoint_text()} (log: {self._owned.log_path})"
        return f"no MoT daemon available: {self._reason}"

    def _set_state(self, state: LinkState, reason: str = "") -> None:
        with self._lock:
            old = self._state
            self._state = state
            if reason:
                self._reason = reason
        if old != state:
            log.info("daemon link: %s -> %s%s", old.value, state.value, f" ({reason})" if reason else "")
            if self._on_change is not None:
                try:
                    self._on_change(state)
                except Exception:
                    log.exception("the daemon state callback failed")

    def _contact(self, status: P.StatusResult | None = None) -> None:
        self._last_contact = time.monotonic()
        if status is not None:
            self._last_status = status

    # ------------------------------------------------------------------------------------------ clients

    def _client(self, which: str) -> DaemonClient:
        with self._lock:
            if self._closed:
                raise DaemonDown("the language server is shutting down")
            client = self._quick if which == "quick" else self._work
            if client is None:
                endpoint = self.endpoint()
                timeout = self.QUICK_TIMEOUT_S if which == "quick" else self.WORK_TIMEOUT_S
                client = DaemonClient(endpoint.address, timeout_s=timeout)
                if which == "quick":
                    self._quick = client
                else:
                    self._work = client
            return client

    def work_client(self) -> DaemonClient:
        """The client translations stream on (cancel a translation on the same client: ids are per connection)."""
        return self._client("work")

    def _close_clients(self) -> None:
        with self._lock:
            clients, self._quick, self._work = [self._quick, self._work], None, None
        for client in clients:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    log.exception("closing a daemon client failed")

    # ------------------------------------------------------------------------------------------ blocking calls

    def route(self, source: str) -> P.RouteResult:
        """Routing only (no generation). Raises DaemonDown when the daemon is not ready or does not answer."""
        if self._state != LinkState.READY:
            raise DaemonDown(self.describe())
        try:
            result = self._client("quick").route(source)
        except DaemonUnavailable as e:
            self.wake(probe=True)  # let the probe decide whether this is an outage or a busy engine
            raise DaemonDown(f"the daemon did not answer the routing request: {e}") from None
        self._contact()
        return result

    def status(self) -> P.StatusResult:
        try:
            status = self._client("quick").status()
        except DaemonUnavailable as e:
            self.wake(probe=True)
            raise DaemonDown(str(e)) from None
        self._contact(status)
        return status

    def cancel(self, client: DaemonClient, request_id: str) -> bool:
        """Cancel a translation that streams on `client`. False when it was not in flight (or unreachable)."""
        try:
            return client.cancel(request_id)
        except (DaemonUnavailable, DaemonError) as e:
            log.warning("could not cancel translation %s: %s", request_id, e)
            return False

    def translation_failed(self, error: BaseException) -> None:
        """A translation lost its daemon: have the supervisor look at once."""
        log.warning("a translation lost the daemon: %s", error)
        self.wake(probe=True)

    # ------------------------------------------------------------------------------------------ probing

    def _local_death(self, endpoint: Endpoint) -> str | None:
        """Why a local (ipc) daemon is certainly gone, without waiting for a socket timeout; None if it may live.

        No socket file: nobody listens. A socket file whose daemon's recorded pid is not running: a daemon that was
        killed (it could not remove its socket). The pid is read, never locked: probing must not race a daemon
        that is taking its lock at that moment.
        """
        if endpoint.ipc_path is None:
            return None
        if not endpoint.ipc_path.exists():
            return f"no daemon listens at {endpoint.address} (there is no socket file)"
        pid = read_lock_holder(endpoint)
        ours = self._owned.alive(pid) if pid is not None else None  # our child: asked without a zombie's lie
        alive = ours if ours is not None else (pid is None or pid_alive(pid))
        if not alive:
            return f"the daemon that served {endpoint.address} (pid {pid}) is gone"
        return None

    def _probe(self) -> tuple[P.StatusResult | None, str]:
        endpoint = self.endpoint()
        dead = self._local_death(endpoint)
        if dead is not None:
            self._close_clients()
            return None, dead
        try:
            return self._client("quick").status(), ""
        except DaemonUnavailable as e:
            self._close_clients()  # a fresh connection next time: no frames queued for a dead peer
            return None, str(e)

    def run_pass(self) -> LinkState:
        """One supervisor pass (blocking): probe; autostart if wanted and allowed; update the state."""
        with self._pass_lock:
            try:
                self._pass()
            except DaemonDown as e:
                self._mark_down(str(e))
            except Exception as e:  # a bug here must not kill the supervisor: log it, report it as an outage
                log.exception("the daemon probe failed")
                self._mark_down(f"internal error while contacting the daemon: {type(e).__name__}: {e}")
            finally:
                self._passes += 1
            return self._state

    def _pass(self) -> None:
        forced, self._force_probe = self._force_probe, False
        if (
            self._state == LinkState.READY and not forced
            and time.monotonic() - self._last_contact < self.HEALTH_INTERVAL_S
            and self._local_death(self.endpoint()) is None
        ):
            return
        status, reason = self._probe()
        if status is not None:
            self._contact(status)
            if status.state == "ready":
                self._set_ready(status)
            elif status.state in ("loading", "reloading"):
                self._set_state(LinkState.LOADING, f"the daemon is {status.state} its model")
            else:
                detail = f": {status.error}" if status.error else ""
                self._mark_down(f"the daemon at {self.endpoint_text()} is {status.state}{detail}")
            return
        if self._owned.still_starting():
            self._set_state(LinkState.STARTING, "the daemon we started is not listening yet")
            return
        settings = self.settings
        if self._want_spawn and settings.autostart and self._owned.failure is None:
            if self._owned.may_spawn():
                self._spawn()
                self._set_state(LinkState.STARTING, "starting a daemon")
                return
        hint = ""
        if self._owned.failure is not None:
            hint = "; autostart failed earlier: fix the cause and run “MoT: Restart daemon”"
        elif not settings.autostart:
            hint = " (mot.autostart is off)" if "mot-daemon serve" in reason else (
                "; start one with `mot-daemon serve` (or enable mot.autostart)"
            )
        self._mark_down(reason + hint)

    def _set_ready(self, status: P.StatusResult) -> None:
        was_told = self._told_down
        self._want_spawn = False
        self._set_state(LinkState.READY, "")
        if was_told:
            self._told_down = False
            self._tell(types.MessageType.Info, f"MoT: the daemon at {self.endpoint_text()} is available again.")

    def _mark_down(self, reason: str) -> None:
        if self._closing:  # our own close() failed what was in flight: not an outage
            return
        with self._lock:
            first = not self._told_down
            self._told_down = True
        self._close_clients()
        self._set_state(LinkState.DOWN, reason)
        if first:
            self._tell(
                types.MessageType.Warning,
                f"MoT: no daemon available ({reason}). Translations and routing hovers are off until it answers; "
                "mot-lsp keeps trying to reconnect.",
            )

    # ------------------------------------------------------------------------------------------ autostart

    def request_spawn(self) -> None:
        """Allow the next pass to start a daemon if none answers (and mot.autostart is on)."""
        self._want_spawn = True

    def _spawn(self) -> None:
        endpoint = self.endpoint()
        self._want_spawn = False
        try:
            self._owned.spawn(endpoint, self.settings)
        except SpawnFailed as e:
            raise DaemonDown(str(e)) from None

    def _stop_owned(self, timeout_s: float = 10.0) -> None:
        """Stop the daemon we started: a shutdown request, then SIGTERM, then SIGKILL."""
        self._owned.stop(self._ask_owned_to_shut_down, timeout_s)

    def _ask_owned_to_shut_down(self) -> None:
        try:
            self._client("quick").shutdown()
        except (DaemonUnavailable, DaemonError, DaemonDown) as e:
            log.info("shutdown request to our daemon failed (%s); terminating it", e)

    def restart(self) -> None:
        """Stop whatever daemon serves the endpoint (ours or not) and start one with the current settings.

        Blocking; returns once the new daemon was launched (wait for READY with `wait_ready`).
        """
        with self._pass_lock:
            endpoint = self.endpoint()
            try:
                self._client("quick").shutdown()
            except (DaemonUnavailable, DaemonError) as e:
                log.info("no daemon took the shutdown request (%s)", e)
            self._stop_owned()
            self._owned.process = None
            self._close_clients()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and lock_is_held(endpoint):
                time.sleep(0.1)
            if lock_is_held(endpoint):
                raise DaemonDown(f"the daemon at {endpoint.address} did not exit within 20 s; stop it and retry")
            self._owned.failure = None
            self._spawn()
            self._set_state(LinkState.STARTING, "restarting the daemon")

    # ------------------------------------------------------------------------------------------ settings

    def update_settings(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        if old.endpoint != settings.endpoint:
            self._close_clients()
            with self._lock:
                self._told_down = False
            self._set_state(LinkState.UNKNOWN, "the endpoint changed")
            self._want_spawn = True
        if (old.preset, old.checkpoint, old.autostart) != (settings.preset, settings.checkpoint, settings.autostart):
            self._owned.failure = None
        self.wake()

    # ------------------------------------------------------------------------------------------ async side

    def wake(self, probe: bool = False) -> None:
        """Ask the supervisor for a pass now (thread-safe); probe=True: probe even if the daemon looked fine."""
        if probe:
            self._force_probe = True
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError as e:  # the loop closed between the check and the call: nothing left to wake
            log.debug("supervisor loop closing, wake-up dropped: %s", e)

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def start(self) -> None:
        """Start the supervisor on the running loop and try to connect (autostarting if allowed)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.request_spawn()
        self._task = asyncio.ensure_future(self.supervise())

    async def supervise(self) -> None:
        assert self._wake is not None
        while not self._closing:
            try:
                await self._in_thread(self.run_pass)
            except RuntimeError:
                return  # the executor was shut down
            except Exception:
                log.exception("daemon supervisor pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.PROBE_INTERVAL_S)
            self._wake.clear()

    async def wait_ready(self, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Return once the daemon is ready; start one if none answers and autostart allows it.

        Raises DaemonDown when no daemon is available and none will come (autostart off or failed), or on timeout.
        """
        if self._state == LinkState.READY:
            return
        if self._loop is None:
            raise DaemonDown("the daemon link is not started")
        timeout_s = self.READY_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        self.request_spawn()
        told_wait = None
        while True:
            seen = self._passes
            self.wake()
            while self._passes == seen:
                if time.monotonic() > deadline:
                    raise DaemonDown(f"the daemon did not answer within {timeout_s:g} s ({self.describe()})")
                await asyncio.sleep(0.05)
            state = self._state
            if state == LinkState.READY:
                return
            if state == LinkState.DOWN:
                raise DaemonDown(self.describe())
            if on_wait is not None and told_wait != state:
                told_wait = state
                on_wait(self.describe())
            if time.monotonic() > deadline:
                raise DaemonDown(f"the daemon was not ready within {timeout_s:g} s ({self.describe()})")
            await asyncio.sleep(0.2)

    async def restart_async(self) -> None:
        await self._in_thread(self.restart)

    def close(self) -> None:
        """Stop the supervisor, stop a daemon we started, close the connections. Idempotent, blocking."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        try:
            self._stop_owned()
        finally:
            self._closed = True
            self._close_clients()
            self._pool.shutdown(wait=False, cancel_futures=True)
