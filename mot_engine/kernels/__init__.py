"""The decode path's Triton kernels (GEMV and rows kernels, RMSNorm, rotary, split-K attention, the interaction's
kernels; each with a plain-torch reference) and, in `substitutions`, the probed installs that put them in place of
the experts' own modules inside the Generator's forwards."""
