"""`mot-daemon`: serve the MoT, translate files in batch, ask for status, stop, make CURVE keys.

    mot-daemon serve     [--endpoint E] [--preset P] [--checkpoint DIR] [--device D] [--dtype T] [--no-verify] ...
    mot-daemon translate PATH... --out DIR [--endpoint E]... [--report F.jsonl] [--resume] [--candidates N]
                         [--no-verify] ...
    mot-daemon status    [--endpoint E] [--json]          exit 0 when a daemon answers, 1 when none does
    mot-daemon stop      [--endpoint E]
    mot-daemon keys      DIR [--client NAME]...

The endpoint defaults to $MOT_DAEMON_ENDPOINT, else ipc://<user runtime dir>/mot-cuda/daemon.sock.
Torch-free: torch and the model load on the engine thread of `serve`, or of `translate`'s in-process engine when
no daemon answers (tests/test_defaults.py holds that importing this module loads no torch).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

import msgspec

from mot_engine.defaults import (
    CANDIDATES,
    CANDIDATES_LIMIT,
    MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    MODE,
    MODES,
    TEMPERATURE,
    TOP_P,
    VERIFY_TIMEOUT_S,
)
from mot_engine.envs import RuntimeConfig
from mot_engine.model.config import QUANTIZATIONS as MODEL_QUANTIZATIONS
from mot_engine.presets.names import PRESETS

from .batch import EXIT_USAGE, BatchOptions, run_batch
from .client import DaemonClient, DaemonUnavailable
from .endpoints import (
    DaemonAlreadyRunning,
    EndpointError,
    create_keys,
    ensure_private_dir,
    load_client_keys,
    lock_is_held,
    log_dir,
    parse_endpoint,
    read_lock_holder,
)
from .engine_config import EngineConfig
from .server import serve

DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = tuple(q for q in MODEL_QUANTIZATIONS if q is not None)


def _add_endpoint(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        p.add_argument("--endpoint", action="append", default=None, metavar="E",
                       help="daemon endpoint (ipc://PATH or tcp://HOST:PORT); repeat to spread work over several")
    else:
        p.add_argument("--endpoint", default=None, metavar="E",
                       help="daemon endpoint (ipc://PATH or tcp://HOST:PORT); default: $MOT_DAEMON_ENDPOINT or the "
                       "ipc socket in your runtime directory")


def _add_client_curve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve-server-key", metavar="FILE", help="the daemon's public key file (server.key), for CURVE")
    p.add_argument("--curve-client-key", metavar="FILE", help="this client's secret key file (NAME.key_secret)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="expert set (default: seed if cached, else pocket; a checkpoint's own preset wins)")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="router + interaction checkpoint folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="expert weights dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                   help="quantized expert weights: int4 (PyTorch's fused int4 kernels, the fast decode path; GPU or "
                        "CPU), 4bit (bitsandbytes NF4, GPU), 8bit (bitsandbytes int8, GPU); default: none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mot-daemon", description="The MoT C/C++ -> CUDA translation daemon.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="load the model once and serve requests until stopped")
    _add_endpoint(s)
    _add_model(s)
    s.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="translations queued beyond the batch before "
                   "`overloaded` (default 64)")
    s.add_argument("--max-source-chars", type=int, default=200_000, help="longest source accepted, in characters")
    s.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS_LIMIT,
                   help="largest max_new_tokens a request may ask for")
    s.add_argument("--request-timeout", type=float, default=600.0, help="default per-request timeout in seconds")
    s.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024, help="largest frame accepted (ZMQ_MAXMSGSIZE)")
    s.add_argument("--batch-wait-ms", type=float, default=5.0, help="when idle, gather requests that arrive less "
                   "than this apart into one batch (default 5)")
    s.add_argument("--batch-wait-max-ms", type=float, default=50.0, help="...for at most this long (default 50)")
    s.add_argument("--no-verify", action="store_true", help="never build or run generated kernels: translations "
                   "are not verified and generate one candidate (default: verify where a C++ compiler exists)")
    s.add_argument("--verify-timeout", type=float, default=VERIFY_TIMEOUT_S, metavar="S",
                   help=f"seconds the verification of one translation may take (default {VERIFY_TIMEOUT_S:g})")
    s.add_argument("--init-seed", type=int, default=0, help="seed for randomly initialised weights (a fresh router "
                   "without --checkpoint, random-weight presets): same routing on every start (default 0)")
    s.add_argument("--curve-dir", metavar="DIR", help="CURVE keys (server.key_secret, authorized_clients/); "
                   "required for a non-loopback tcp endpoint")
    s.add_argument("--log-file", metavar="FILE", help="log file (default: daemon.log in your log directory)")
    s.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    t = sub.add_parser("translate", help="translate every function of C/C++ files or folders into .cu files")
    t.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.c .cc .cpp .cxx .h .hpp)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder; mirrors the source tree")
    _add_endpoint(t, many=True)
    _add_client_curve(t)
    _add_model(t)
    t.add_argument("--report", metavar="FILE", help="write one JSON line per function (location, routing, timings, status)")
    t.add_argument("--resume", action="store_true", help="skip sources whose .cu output is complete and up to date")
    t.add_argument("--mode", choices=MODES, default=MODE)
    t.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    t.add_argument("--temperature", type=float, default=TEMPERATURE)
    t.add_argument("--top-p", type=float, default=TOP_P)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--candidates", type=int, default=CANDIDATES, metavar="N",
                   help=f"candidates per function, the greedy one first, when they are verified (default {CANDIDATES}, "
                   f"at most {CANDIDATES_LIMIT}; 1: greedy only)")
    t.add_argument("--no-verify", action="store_true", help="do not verify the kernels (syntax, compile, differential "
                   "test against the function); then each function gets its greedy candidate alone")
    t.add_argument("--timeout", type=float, default=None, help="per-function timeout in seconds (daemon default)")
    t.add_argument("--jobs", type=int, default=None, help="concurrent requests per daemon (default: its batch size)")
    t.add_argument("--no-embedded", action="store_true", help="fail instead of starting an in-process engine")
    t.add_argument("--max-batch-size", type=int, default=16, help="batch size of the embedded engine")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    st = sub.add_parser("status", help="ask a daemon for its state (exit 0 if one answers)")
    _add_endpoint(st)
    _add_client_curve(st)
    st.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)")
    st.add_argument("--wait-ready", type=float, default=None, metavar="S", help="wait up to S seconds for state ready")
    st.add_argument("--json", action="store_true", help="print the status as JSON")

    sp = sub.add_parser("stop", help="ask a daemon to shut down")
    _add_endpoint(sp)
    _add_client_curve(sp)
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it to exit (default 10)")

    k = sub.add_parser("keys", help="create CURVE keys for a daemon and its clients")
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--client", action="append", default=None, metavar="NAME", help="a client key to create and "
                   "allow (repeatable; default: one named 'client')")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": cmd_serve, "translate": cmd_translate, "status": cmd_status, "stop": cmd_stop, "keys": cmd_keys}
    try:
        return handler[args.command](args)
    except KeyboardInterrupt:
        print("mot-daemon: interrupted", file=sys.stderr)
        return 130


def _client_curve(args):
    if bool(args.curve_server_key) != bool(args.curve_client_key):
        raise SystemExit("mot-daemon: give both --curve-server-key and --curve-client-key (or neither)")
    if not args.curve_server_key:
        return None
    return load_client_keys(args.curve_server_key, args.curve_client_key)


# ---------------------------------------------------------------------------------------------- serve


def setup_logging(level: str, log_file: str | None) -> Path:
    path = Path(log_file) if log_file else log_dir() / "daemon.log"
    if log_file:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        ensure_private_dir(path.parent)
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    file_handler = RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8")
    file_handler.setFormatter(fmt)
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(fmt)
    root.addHandler(file_handler)
    root.addHandler(stream_handler)
    return path


def cmd_serve(args) -> int:
    log_path = setup_logging(args.log_level, args.log_file)
    log = logging.getLogger("daemon")
    log.info("logging to %s", log_path)
    try:
        config = EngineConfig(
            preset=args.preset, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
            quantization=args.quantization, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
            max_source_chars=args.max_source_chars,
            max_new_tokens=args.max_new_tokens, default_timeout_s=args.request_timeout,
            batch_wait_s=args.batch_wait_ms / 1000.0, batch_wait_max_s=args.batch_wait_max_ms / 1000.0,
            init_seed=args.init_seed, runtime=RuntimeConfig.from_env(), verify=not args.no_verify,
            verify_timeout_s=args.verify_timeout,
        )
        config.validate()
        log.info("runtime (mot_engine/envs.py, * = changed by the environment): %s", config.runtime.describe())
        return serve(config, args.endpoint, curve_dir=args.curve_dir, max_message_bytes=args.max_message_bytes)
    except (DaemonAlreadyRunning, EndpointError, ValueError) as e:  # InvalidEnvironment is a ValueError
        log.error("%s", e)
        return 1


# ---------------------------------------------------------------------------------------------- clients


def cmd_status(args) -> int:
    try:
        ep = parse_endpoint(args.endpoint)
        client = DaemonClient(args.endpoint, timeout_s=args.timeout, curve=_client_curve(args))
    except EndpointError as e:
        print(f"mot-daemon status: {e}", file=sys.stderr)
        return 2
    try:
        if ep.ipc_path is not None and not ep.ipc_path.exists() and not args.wait_ready:
            raise DaemonUnavailable(f"no mot-daemon answers at {ep.address}: there is no socket file at {ep.ipc_path}")
        status = client.wait_until_ready(args.wait_ready) if args.wait_ready else client.status()
    except DaemonUnavailable as e:
        line = str(e)
        if ep.transport == "ipc" and lock_is_held(ep):
            line += f" (a process, pid {read_lock_holder(ep)}, holds the endpoint's lock: starting, or hung?)"
        print(line, file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps(msgspec.to_builtins(status), indent=2))
        return 0
    mem = status.device_memory
    if mem.get("kind") == "cuda":
        memory = f"{mem['device']}: {mem['allocated_bytes'] / 2**30:.2f} GiB allocated, {mem['reserved_bytes'] / 2**30:.2f} GiB reserved of {mem['total_bytes'] / 2**30:.1f} GiB"
    else:
        rss = mem.get("rss_bytes")
        memory = f"process resident memory {rss / 2**20:.0f} MiB" if rss else "unknown"
    print(f"mot-daemon at {ep.address}: {status.state} (pid {status.pid}, up {status.uptime_s:.1f} s, protocol v{status.protocol_version})")
    if status.error:
        print(f"  error: {status.error}")
    print(f"  preset {status.preset}; experts {', '.join(status.expert_names) or '(loading)'}; encoder {status.encoder}")
    print(f"  checkpoint {status.checkpoint or '(none: fresh router and interaction layers)'}")
    print(f"  device {status.device} ({status.dtype}); memory: {memory}")
    print(f"  verification {status.verification or 'unknown'}")
    print(f"  queue {status.queue_depth} waiting, {status.running} running (batch {status.max_batch_size}, queue limit {status.max_queue}), "
          f"{status.verifying} being verified; "
          f"{status.steps} steps, {status.requests_served} translations served")
    print("  limits " + ", ".join(f"{k}={v}" for k, v in status.limits.items()))
    return 0


def cmd_stop(args) -> int:
    try:
        client = DaemonClient(args.endpoint, timeout_s=min(args.timeout, 5.0), curve=_client_curve(args))
    except EndpointError as e:
        print(f"mot-daemon stop: {e}", file=sys.stderr)
        return 2
    try:
        pid = client.status().pid
        client.shutdown()
    except DaemonUnavailable as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        client.close()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:  # wait until it no longer answers
        probe = DaemonClient(args.endpoint, timeout_s=0.5, curve=_client_curve(args))
        try:
            probe.status()
        except DaemonUnavailable:
            print(f"mot-daemon (pid {pid}) at {client.endpoint.address} stopped")
            return 0
        finally:
            probe.close()
        time.sleep(0.2)
    print(f"mot-daemon (pid {pid}) accepted the shutdown but still answers after {args.timeout:g} s", file=sys.stderr)
    return 1


def cmd_translate(args) -> int:
    if not 1 <= args.candidates <= CANDIDATES_LIMIT:
        print(f"mot-daemon translate: --candidates must be between 1 and {CANDIDATES_LIMIT}, got {args.candidates}",
              file=sys.stderr)
        return EXIT_USAGE
    for name in ("max_new_tokens", "jobs", "max_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"mot-daemon translate: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = BatchOptions(
        paths=args.paths, out_dir=args.out, endpoints=args.endpoint or [None], report=args.report, resume=args.resume,
        mode=args.mode, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, candidates=args.candidates, verify="off" if args.no_verify else "auto", timeout_s=args.timeout,
        jobs=args.jobs, embedded=not args.no_embedded, preset=args.preset,
        checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, quantization=args.quantization,
        max_batch_size=args.max_batch_size,
        progress=not args.no_progress, curve=_client_curve(args),
    )
    return run_batch(opts)


def cmd_keys(args) -> int:
    try:
        made = create_keys(args.dir, args.client or ["client"])
    except EndpointError as e:
        print(f"mot-daemon keys: {e}", file=sys.stderr)
        return 2
    print(f"server keys:  {made['server_secret']} (keep private; pass --curve-dir {args.dir} to serve)")
    print(f"server public key for clients: {made['server_public']}")
    for key, path in made.items():
        if key.startswith("client:"):
            print(f"client {key[7:]}: {path} (give it to that client with --curve-client-key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
