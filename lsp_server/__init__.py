"""mot-lsp: a language server that brings "Translate to CUDA (MoT)" code actions and routing hovers to editors.

It talks to the MoT daemon (daemon.client / daemon.protocol) and never imports the model. Entry point:
`mot-lsp` (lsp_server.cli:main), also `python -m lsp_server`.
"""

__version__ = "0.1.0"
