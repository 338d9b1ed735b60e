// A header with an inline function and a declaration (only the definition is translated).
#pragma once

inline void transpose(const float* a, float* t, int rows, int cols) {
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) t[c * rows + r] = a[r * cols + c];
}

void matmul(const float* a, const float* b, float* c, int n);
