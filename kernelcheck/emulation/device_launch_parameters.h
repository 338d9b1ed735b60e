// mot-cuda CPU backend: stands in for the CUDA toolkit's device_launch_parameters.h.
#pragma once
#include "cuda_cpu.h"
