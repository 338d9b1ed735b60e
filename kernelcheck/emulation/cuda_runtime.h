// mot-cuda CPU backend: stands in for the CUDA toolkit's cuda_runtime.h.
#pragma once
#include "cuda_cpu.h"
