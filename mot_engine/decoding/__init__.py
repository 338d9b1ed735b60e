"""Decoding: requests and results, the batched `Generator` (fast and full mode), sampling, continuous batching in
slabs, CUDA-graph capture of prefills, decode steps and routing, and `translate`, the one-call text API."""
