// Races and out-of-bounds accesses the CPU backend must report; argv[1] picks a scenario.  The program never
// calls __syncthreads, so threads run to completion one after another (the fast path, no fibers).
#include <cstdio>
#include <cstring>

__global__ void count_plain(int* count) { *count += 1; }                      // write-write, same block
__global__ void last_writer(float* result) { result[0] = threadIdx.x + 1.0f; } // write-write, every thread
__global__ void count_across_blocks(int* count) { if (threadIdx.x == 0) *count += 1; }  // write-write, blocks
__global__ void stencil_in_place(float* data, int n) {                       // reads a neighbour another writes
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > 0 && i < n - 1) data[i] = (data[i - 1] + data[i] + data[i + 1]) / 3.0f;
}
__global__ void scale_in_place(float* data, int n) {                         // race-free
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] = 2.0f * data[i];
}
__global__ void stencil_out_of_place(const float* in, float* out, int n) {   // race-free
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > 0 && i < n - 1) out[i] = (in[i - 1] + in[i] + in[i + 1]) / 3.0f;
}
__global__ void float_sum(const float* in, int n, float* total) {            // race-free: atomics only
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(total, in[i]);
}
__global__ void mixed_atomic_plain(int* count) {                             // an atomic and a plain store
    if (threadIdx.x == 0) *count = 5;
    else atomicAdd(count, 1);
}
__global__ void write_past_end(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;  // one element too many
}
__global__ void read_past_end(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];  // the last thread reads one element past the end
}
__global__ void write_before_start(int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i - 1] = i;
}

__global__ void wild_write(int* data, long long offset) { data[offset + threadIdx.x] = 1; }

int main(int argc, char** argv) {
    const char* scenario = argc > 1 ? argv[1] : "";
    const int n = 64;
    float host[n];
    for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i * i % 17);
    float *d_data, *d_out, *d_total;
    int* d_count;
    cudaMalloc((void**)&d_data, n * sizeof(float));
    cudaMalloc((void**)&d_out, n * sizeof(float));
    cudaMalloc((void**)&d_total, sizeof(float));
    cudaMalloc((void**)&d_count, sizeof(int));
    cudaMemcpy(d_data, host, sizeof(host), cudaMemcpyHostToDevice);
    cudaMemset(d_out, 0, sizeof(host));
    cudaMemset(d_total, 0, sizeof(float));
    cudaMemset(d_count, 0, sizeof(int));
    if (!strcmp(scenario, "count_plain")) count_plain<<<1, 8>>>(d_count);
    else if (!strcmp(scenario, "last_writer")) last_writer<<<1, 8>>>(d_out);
    else if (!strcmp(scenario, "count_across_blocks")) count_across_blocks<<<4, 8>>>(d_count);
    else if (!strcmp(scenario, "stencil_in_place")) stencil_in_place<<<2, 32>>>(d_data, n);
    else if (!strcmp(scenario, "mixed_atomic_plain")) mixed_atomic_plain<<<1, 4>>>(d_count);
    else if (!strcmp(scenario, "race_free")) {
        scale_in_place<<<2, 32>>>(d_data, n);
        stencil_out_of_place<<<2, 32>>>(d_data, d_out, n);
        float_sum<<<2, 32>>>(d_out, n, d_total);
    } else if (!strcmp(scenario, "write_past_end")) write_past_end<<<3, 32>>>(d_out, n);
    else if (!strcmp(scenario, "write_before_start")) write_before_start<<<1, 32>>>(d_count, 1);
    else if (!strcmp(scenario, "read_past_end")) read_past_end<<<2, 32>>>(d_data, d_out, n);
    else if (!strcmp(scenario, "host_pointer")) scale_in_place<<<1, 32>>>(host, n);
    else if (!strcmp(scenario, "wild_write")) wild_write<<<2, 4>>>(d_count, 1LL << 40);
    else return 2;
    float out[n], total;
    int count;
    cudaMemcpy(out, d_out, sizeof(out), cudaMemcpyDeviceToHost);
    cudaMemcpy(&total, d_total, sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(&count, d_count, sizeof(int), cudaMemcpyDeviceToHost);
    printf("out[1]=%g total=%g count=%d fibers=%zu\n", out[1], total, count, mot_cpu::detail::g_fibers.fibers.size());
    return 0;
}
