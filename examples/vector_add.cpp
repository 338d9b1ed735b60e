// A C++ loop that `mot-daemon translate examples/vector_add.cpp --out out/` turns into a CUDA kernel.
#include <cstddef>

void vector_add(const float* a, const float* b, float* c, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        c[i] = a[i] + b[i];
    }
}
