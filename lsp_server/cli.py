"""`mot-lsp`: run the language server on stdio (what editors start) or TCP (for debugging)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from . import __version__
from .server import create_server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mot-lsp",
        description="Language server for translating C/C++ into CUDA with the MoT daemon (code actions, hovers).",
    )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    transport.add_argument("--tcp", action="store_true", help="listen for one client on TCP (debugging)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default %(default)s)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default %(default)s)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr / the log file (default %(default)s)",
    )
    parser.add_argument("--log-file", help="also write the log to this file")
    parser.add_argument("--version", action="version", version=f"mot-lsp {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stdout carries the protocol: logs go to stderr (editors show it in their LSP log) and optionally a file.
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
    logging.basicConfig(
        level=getattr(logging, args.log_level), handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "DEBUG":
        logging.getLogger("pygls").setLevel(logging.WARNING)

    server = create_server()

    def on_sigterm(signum, frame):
        # An editor that quits may terminate us instead of sending shutdown/exit: still stop the daemon we started.
        # Then leave at once: pygls' stdin reader thread may be blocked in a read and would keep us alive.
        logging.getLogger("lsp_server").info("SIGTERM: stopping")
        try:
            server.close()
        except Exception:
            logging.getLogger("lsp_server").exception("cleanup after SIGTERM failed")
        finally:
            logging.shutdown()
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.tcp:
        server.start_tcp(args.host, args.port)
    else:
        server.start_io()
    return 0


if __name__ == "__main__":
    sys.exit(main())
