"""Kernel substitutions: each finds the expert modules a kernel can stand in for, proves by a probe that it computes
the same function, and installs a dispatching `forward` that runs the kernel only inside the Generator's forwards."""
