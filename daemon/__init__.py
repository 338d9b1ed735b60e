"""The MoT daemon: a persistent translation server behind ZeroMQ, its clients, and the batch CLI.

Light on purpose: importing the CLI, the clients, the engine or the server loads no torch; the model side
(served_model.py) is imported on the engine thread.
See protocol.py (the wire format), client.py (DaemonClient; errors.py, client_base.py), inprocess.py (the engine
in this process), engine.py (EngineCore; engine_loop.py, engine_state.py, engine_config.py, replies.py,
translation.py, verification.py, served_model.py, memory.py), server.py (socket IO), endpoints.py (security, locks, keys), batch.py
(`mot-daemon translate`; batch_files.py, batch_report.py), cli.py.
"""

from .protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
