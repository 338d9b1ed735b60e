// mot-cuda CPU backend: stands in for the CUDA toolkit's cuda.h.
#pragma once
#include "cuda_cpu.h"
