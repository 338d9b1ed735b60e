// CUDA features the CPU backend emulates; argv[1] picks a scenario, which prints its results on stdout.
// The program calls __syncthreads, so every block's threads run as fibers.
#include <cstdio>
#include <cstdlib>
#include <cstring>

__global__ void block_sum(const float* in, float* out, int n) {
    __shared__ float partial[256];
    unsigned int t = threadIdx.x;
    unsigned int i = blockIdx.x * blockDim.x + t;
    partial[t] = i < n ? in[i] : 0.0f;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

__global__ void reverse_in_shared(int* data, int n) {
    extern __shared__ int tile[];
    int t = threadIdx.x;
    if (t < n) tile[t] = data[t];
    __syncthreads();
    if (t < n) data[t] = tile[n - 1 - t];
}

__global__ void count_above(const int* values, int n, int limit, int* counts) {
    int t = threadIdx.x;
    int above = __syncthreads_count(t < n && values[t] > limit);
    int any = __syncthreads_or(t < n && values[t] > limit);
    int all = __syncthreads_and(t >= n || values[t] > 0);
    if (t == 0) counts[0] = above, counts[1] = any, counts[2] = all;
}

__global__ void histogram(const unsigned char* pixels, int n, unsigned int* bins) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&bins[pixels[i]], 1u);
}

// atomicMax, and a float sum through an atomicCAS loop (the classic pre-sm_20 atomicAdd for floats).
__global__ void max_and_sum(const int* values, int n, int* maximum, float* total, unsigned int* ticket) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicMax(maximum, values[i]);
    int* address = reinterpret_cast<int*>(total);
    int old = *address, assumed;
    do {
        assumed = old;
        old = atomicCAS(address, assumed, __float_as_int(__int_as_float(assumed) + static_cast<float>(values[i])));
    } while (assumed != old);
    atomicInc(ticket, 1000u);
}

__global__ void matmul(const float* a, const float* b, float* c, int m, int k, int n) {
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < m && col < n) {
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) sum += a[row * k + j] * b[j * n + col];
        c[row * n + col] = sum;
    }
}

__device__ float logistic(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ int clamp_index(int v, int lo, int hi) { return max(lo, min(v, hi)); }

__global__ void math_ops(const float* x, float* out, int* ints, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    out[4 * i + 0] = sqrtf(fabsf(v)) + rsqrtf(4.0f);
    out[4 * i + 1] = logistic(v);
    out[4 * i + 2] = fminf(fmaxf(v, -1.0f), 1.0f) + __saturatef(v) + __fdividef(v, 2.0f);
    out[4 * i + 3] = powf(2.0f, v) + __logf(2.0f) + expf(0.0f);
    ints[3 * i + 0] = __float2int_rn(v);
    ints[3 * i + 1] = clamp_index(i * 10, 0, 25);
    ints[3 * i + 2] = __popc(static_cast<unsigned int>(i)) + __clz(1);
}

__global__ void saxpy(int n, float a, const float* x, float* y) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) y[i] = a * x[i] + y[i];
}

__global__ void noop(int* data) { data[threadIdx.x] = 1; }

__global__ void hello(int* data) {
    printf("thread %d of block %d says %d\n", threadIdx.x, blockIdx.x, data[threadIdx.x]);
}

template <typename T>
void to_device(T** device, const T* host, size_t count) {
    cudaMalloc((void**)device, count * sizeof(T));
    cudaMemcpy(*device, host, count * sizeof(T), cudaMemcpyHostToDevice);
}

static void run_block_sum() {
    const int n = 1000;
    float host[n], sums[4];
    for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i % 7);
    float *d_in, *d_out;
    to_device(&d_in, host, n);
    cudaMalloc((void**)&d_out, sizeof(sums));
    block_sum<<<4, 256>>>(d_in, d_out, n);
    cudaMemcpy(sums, d_out, sizeof(sums), cudaMemcpyDeviceToHost);
    printf("%g %g %g %g\n", sums[0], sums[1], sums[2], sums[3]);
}

static void run_dynamic_shared() {
    int host[40];
    for (int i = 0; i < 40; ++i) host[i] = i;
    int* d;
    to_device(&d, host, 40);
    reverse_in_shared<<<1, 64, 40 * sizeof(int)>>>(d, 40);
    cudaMemcpy(host, d, sizeof(host), cudaMemcpyDeviceToHost);
    for (int i = 0; i < 40; ++i) printf("%d ", host[i]);
    printf("\n");
}

static void run_barrier_reductions() {
    int values[50], counts[3];
    for (int i = 0; i < 50; ++i) values[i] = i + 1;
    int *d_values, *d_counts;
    to_device(&d_values, values, 50);
    cudaMalloc((void**)&d_counts, sizeof(counts));
    count_above<<<1, 64>>>(d_values, 50, 30, d_counts);
    cudaMemcpy(counts, d_counts, sizeof(counts), cudaMemcpyDeviceToHost);
    printf("%d %d %d\n", counts[0], counts[1], counts[2]);
}

static void run_atomics() {
    const int n = 3000;
    unsigned char pixels[n];
    for (int i = 0; i < n; ++i) pixels[i] = static_cast<unsigned char>((i * 7) % 5);
    unsigned char* d_pixels;
    unsigned int* d_bins;
    to_device(&d_pixels, pixels, n);
    cudaMalloc((void**)&d_bins, 5 * sizeof(unsigned int));
    cudaMemset(d_bins, 0, 5 * sizeof(unsigned int));
    histogram<<<3, 128>>>(d_pixels, n, d_bins);
    unsigned int bins[5];
    cudaMemcpy(bins, d_bins, sizeof(bins), cudaMemcpyDeviceToHost);
    printf("%u %u %u %u %u\n", bins[0], bins[1], bins[2], bins[3], bins[4]);
    int values[100];
    for (int i = 0; i < 100; ++i) values[i] = (i * 37) % 101;
    int *d_values, *d_max;
    float* d_total;
    unsigned int* d_ticket;
    to_device(&d_values, values, 100);
    cudaMalloc((void**)&d_max, sizeof(int));
    cudaMalloc((void**)&d_total, sizeof(float));
    cudaMalloc((void**)&d_ticket, sizeof(unsigned int));
    max_and_sum<<<4, 32>>>(d_values, 100, d_max, d_total, d_ticket);
    int maximum;
    float total;
    unsigned int ticket;
    cudaMemcpy(&maximum, d_max, sizeof(int), cudaMemcpyDeviceToHost);
    cudaMemcpy(&total, d_total, sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(&ticket, d_ticket, sizeof(unsigned int), cudaMemcpyDeviceToHost);
    printf("%d %g %u\n", maximum, total, ticket);
}

static void run_matmul() {
    const int m = 5, k = 3, n = 7;
    float a[m * k], b[k * n], c[m * n];
    for (int i = 0; i < m * k; ++i) a[i] = static_cast<float>(i + 1);
    for (int i = 0; i < k * n; ++i) b[i] = static_cast<float>(i % 4) - 1.0f;
    float *d_a, *d_b, *d_c;
    to_device(&d_a, a, m * k);
    to_device(&d_b, b, k * n);
    cudaMalloc((void**)&d_c, sizeof(c));
    dim3 block(4, 2);
    dim3 grid((n + block.x - 1) / block.x, (m + block.y - 1) / block.y);
    matmul<<<grid, block>>>(d_a, d_b, d_c, m, k, n);
    cudaMemcpy(c, d_c, sizeof(c), cudaMemcpyDeviceToHost);
    for (int i = 0; i < m * n; ++i) printf("%g ", c[i]);
    printf("\n");
}

static void run_math() {
    const int n = 4;
    float x[n] = {-2.5f, 0.25f, 1.5f, 3.5f}, out[4 * n];
    int ints[3 * n];
    float *d_x, *d_out;
    int* d_ints;
    to_device(&d_x, x, n);
    cudaMalloc((void**)&d_out, sizeof(out));
    cudaMalloc((void**)&d_ints, sizeof(ints));
    math_ops<<<1, 32>>>(d_x, d_out, d_ints, n);
    cudaMemcpy(out, d_out, sizeof(out), cudaMemcpyDeviceToHost);
    cudaMemcpy(ints, d_ints, sizeof(ints), cudaMemcpyDeviceToHost);
    for (int i = 0; i < 4 * n; ++i) printf("%.6f ", out[i]);
    printf("\n");
    for (int i = 0; i < 3 * n; ++i) printf("%d ", ints[i]);
    printf("\n");
}

static void run_grid_stride() {
    const int n = 10000;
    float* x = static_cast<float*>(malloc(n * sizeof(float)));
    float* y = static_cast<float*>(malloc(n * sizeof(float)));
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i), y[i] = 1.0f;
    float *d_x, *d_y;
    to_device(&d_x, x, n);
    to_device(&d_y, y, n);
    saxpy<<<8, 64>>>(n, 2.0f, d_x, d_y);
    cudaMemcpy(y, d_y, n * sizeof(float), cudaMemcpyDeviceToHost);
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += y[i];
    printf("%g %g %.0f\n", y[0], y[n - 1], sum);
}

static void run_invalid_launches() {
    int* d;
    cudaMalloc((void**)&d, 2048 * sizeof(int));
    noop<<<1, 1025>>>(d);
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));  // launch errors are not sticky
    noop<<<dim3(1, 0), 32>>>(d);
    printf("%s\n", cudaGetErrorString(cudaPeekAtLastError()));
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    noop<<<dim3(1, 70000), 32>>>(d);
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    noop<<<1, dim3(8, 8, 65)>>>(d);
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    noop<<<1, 32, 100 * 1024>>>(d);
    printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    noop<<<1, 1024>>>(d);
    printf("%s %s\n", cudaGetErrorName(cudaGetLastError()), cudaGetErrorName(cudaDeviceSynchronize()));
    int host[1];
    printf("%s\n", cudaGetErrorName(cudaMemcpy(host, d + 2047, 2 * sizeof(int), cudaMemcpyDeviceToHost)));
}

static void run_printf() {
    int host[2] = {7, 9};
    int* d;
    to_device(&d, host, 2);
    hello<<<1, 2>>>(d);  // the reverse-order re-run of the race check must not print again
    cudaDeviceSynchronize();
    printf("done\n");
}

int main(int argc, char** argv) {
    const char* scenario = argc > 1 ? argv[1] : "";
    if (!strcmp(scenario, "block_sum")) run_block_sum();
    else if (!strcmp(scenario, "dynamic_shared")) run_dynamic_shared();
    else if (!strcmp(scenario, "barrier_reductions")) run_barrier_reductions();
    else if (!strcmp(scenario, "atomics")) run_atomics();
    else if (!strcmp(scenario, "matmul")) run_matmul();
    else if (!strcmp(scenario, "math")) run_math();
    else if (!strcmp(scenario, "grid_stride")) run_grid_stride();
    else if (!strcmp(scenario, "invalid")) run_invalid_launches();
    else if (!strcmp(scenario, "printf")) run_printf();
    else return 2;
    return 0;
}
