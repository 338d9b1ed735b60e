"""One module per feature: code actions, hover, commands, diagnostics, edits, and the translation runner."""
