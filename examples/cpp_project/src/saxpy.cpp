// Two BLAS-1 style loops.
void saxpy(int n, float a, const float* x, float* y) {
    for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];
}

void scale(int n, float a, float* x) {
    for (int i = 0; i < n; ++i) x[i] *= a;
}
