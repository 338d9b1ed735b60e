"""Named expert sets: their names (`names`, torch-free, for the CLIs), where their weights come from (`registry`,
`pocket`, `tiny`) and `build_mot`, the one constructor. This `__init__` imports nothing, so the names stay light."""
