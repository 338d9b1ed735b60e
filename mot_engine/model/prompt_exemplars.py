"""The exemplar pairs of the few-shot prompt formats: C/C++ functions and the CUDA kernels they become, written by
the team for the prompts (never taken from evaluation data). Each shows one pattern a translation needs — a
guarded one-dimensional index, a two-dimensional grid, an atomic update of a shared result — with names no user
function is likely to share, since small models copy exemplar names into unrelated answers. The kernels are named
and headed as `kernelcheck.heads` names and heads them, so an exemplar looks like the opened answer it precedes.
"""

from __future__ import annotations

EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        """void scale_add(float *y, const float *x, float alpha, int count) {
    for (int k = 0; k < count; ++k) {
        y[k] = alpha * x[k] + y[k];
    }
}""",
        """__global__ void scale_add_kernel(float *y, const float *x, float alpha, int count) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < count) {
        y[k] = alpha * x[k] + y[k];
    }
}""",
    ),
    (
        """void add_row_bias(double *mat, const double *bias, int height, int width) {
    for (int r = 0; r < height; r++) {
        for (int c = 0; c < width; c++) {
            mat[r * width + c] += bias[c];
        }
    }
}""",
        """__global__ void add_row_bias_kernel(double *mat, const double *bias, int height, int width) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (r < height && c < width) {
        mat[r * width + c] += bias[c];
    }
}""",
    ),
    (
        """void count_positive(const int *vals, int len, int *result) {
    for (int j = 0; j < len; j++) {
        if (vals[j] > 0) {
            *result += 1;
        }
    }
}""",
        """__global__ void count_positive_kernel(const int *vals, int len, int *result) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < len && vals[j] > 0) {
        atomicAdd(result, 1);
    }
}""",
    ),
)
