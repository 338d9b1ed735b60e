// Barrier bugs the CPU backend must report (the program uses __syncthreads: threads run as fibers).
#include <cstdio>
#include <cstring>

__global__ void sum_without_barrier(const float* in, float* out) {  // tree reduction missing its barriers
    __shared__ float partial[64];
    unsigned int t = threadIdx.x;
    partial[t] = in[t];
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1)
        if (t < stride) partial[t] += partial[t + stride];
    if (t == 0) out[0] = partial[0];
}

__global__ void sum_with_barrier(const float* in, float* out) {
    __shared__ float partial[64];
    unsigned int t = threadIdx.x;
    partial[t] = in[t];
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) out[0] = partial[0];
}

__global__ void shared_last_writer(float* out) {  // every thread writes one shared word before the barrier
    __shared__ float flag;
    flag = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = flag;
}

__global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}

__global__ void early_exit_then_barrier(const float* in, float* out, int n) {  // exited threads count as arrived
    __shared__ float tile[64];
    unsigned int t = threadIdx.x;
    if (t >= n) return;
    tile[t] = in[t];
    __syncthreads();
    out[t] = tile[n - 1 - t];
}

__global__ void pairs_share_a_slot(float* out) {  // threads 2k and 2k+1 write the same element
    __shared__ float tile[16];
    extern __shared__ float spill[];
    tile[threadIdx.x / 2] = threadIdx.x;
    spill[threadIdx.x / 4] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x / 2] + spill[threadIdx.x / 4];
}

int main(int argc, char** argv) {
    const char* scenario = argc > 1 ? argv[1] : "";
    float host[64], result[64];
    for (int i = 0; i < 64; ++i) host[i] = static_cast<float>(i % 5);
    float *d_in, *d_out;
    cudaMalloc((void**)&d_in, sizeof(host));
    cudaMalloc((void**)&d_out, sizeof(host));
    cudaMemcpy(d_in, host, sizeof(host), cudaMemcpyHostToDevice);
    cudaMemset(d_out, 0, sizeof(host));
    if (!strcmp(scenario, "without")) sum_without_barrier<<<1, 64>>>(d_in, d_out);
    else if (!strcmp(scenario, "with")) sum_with_barrier<<<1, 64>>>(d_in, d_out);
    else if (!strcmp(scenario, "shared_last_writer")) shared_last_writer<<<1, 8>>>(d_out);
    else if (!strcmp(scenario, "divergent")) divergent_barrier<<<1, 32>>>(d_out);
    else if (!strcmp(scenario, "early_exit")) early_exit_then_barrier<<<1, 64>>>(d_in, d_out, 40);
    else if (!strcmp(scenario, "pairs")) pairs_share_a_slot<<<1, 32, 8 * sizeof(float)>>>(d_out);
    else return 2;
    cudaMemcpy(result, d_out, sizeof(result), cudaMemcpyDeviceToHost);
    printf("%g %g fibers=%zu\n", result[0], result[39], mot_cpu::detail::g_fibers.fibers.size());
    return 0;
}
