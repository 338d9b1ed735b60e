"""The language server's features, one module each: code actions, hover, commands, kernel diagnostics, edits, and
the translation runner. They see the server only through `host.ServerHost`, a Protocol of what they use."""
