"""Training and evaluation tools for the MoT C/C++ -> CUDA translator."""
