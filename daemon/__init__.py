"""The MoT daemon: a persistent translation server behind ZeroMQ, its clients, and the batch CLI.

Light on purpose: importing `daemon`, `daemon.protocol` or `daemon.client` loads neither torch nor the engine.
See protocol.py (the wire format), client.py (DaemonClient / InProcessClient), engine.py (EngineCore),
server.py (socket IO), endpoints.py (security, locks, keys), batch.py (`mot-daemon translate`), cli.py.
"""

from .protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
