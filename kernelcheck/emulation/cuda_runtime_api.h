// mot-cuda CPU backend: stands in for the CUDA toolkit's cuda_runtime_api.h.
#pragma once
#include "cuda_cpu.h"
