// mot-cuda CPU backend: CUDA's qualifiers, vector types, built-in variables and error codes for g++.
// Part of cuda_cpu.h (include that, not this).
#pragma once

#include <cstddef>
#include <cstdint>

// Two builds use the compiler's address instrumentation (both define __SANITIZE_ADDRESS__):
// MOT_CPU_INSTRUMENTED: -fsanitize=kernel-address with calls for every access, served by this runtime's own hooks
//   (mot_cpu_instrument.h): exact write tracking for the race checks, out-of-bounds reads and writes of guards;
// MOT_CPU_ASAN: -fsanitize=address, AddressSanitizer's runtime (exact-size allocations, its own reports).
#if defined(MOT_CPU_INSTRUMENTED) && MOT_CPU_INSTRUMENTED
#undef MOT_CPU_INSTRUMENTED
#define MOT_CPU_INSTRUMENTED 1
#define MOT_CPU_ASAN 0
#else
#undef MOT_CPU_INSTRUMENTED
#define MOT_CPU_INSTRUMENTED 0
#if defined(__SANITIZE_ADDRESS__)
#define MOT_CPU_ASAN 1
#else
#define MOT_CPU_ASAN 0
#endif
#endif
// The runtime's own hot paths (scheduler, race bookkeeping) are not instrumented: only the kernel's accesses are.
#if MOT_CPU_INSTRUMENTED
#define MOT_CPU_RUNTIME __attribute__((no_sanitize_address))
#else
#define MOT_CPU_RUNTIME
#endif

// ---- Qualifiers ------------------------------------------------------------------------------------------------
// Kernels and device functions are ordinary C++ functions on the CPU.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(n) __attribute__((aligned(n)))
#define __cudart_builtin__
// __restrict__ is a g++ keyword already.
#define MOT_CPU_EMULATION 1

// __shared__ variables are per block.  Blocks run one after another on one OS thread, so a static variable is
// shared by the block's threads (fibers).  They live in their own section so the runtime can find them all:
// it fills them with a poison pattern before each block (a read of uninitialised shared memory shows) and
// tracks writes to them for the race check.  `extern __shared__` (dynamic) arrays are rewritten by
// kernelcheck.cpu_source into pointers to `mot_cpu::dynamic_shared()`.
#define MOT_CPU_SHARED_SECTION "mot_cpu_shared"
#define __shared__ __attribute__((section(MOT_CPU_SHARED_SECTION))) static
// __device__ variables (namespace scope) get MOT_CPU_DEVICE_VAR from kernelcheck.cpu_source: the race check
// snapshots, compares and restores them like device allocations.
#define MOT_CPU_DEVICE_VAR __attribute__((section("mot_cpu_device"), used))

// ---- Vector types ----------------------------------------------------------------------------------------------
// The 2- and 4-component types carry CUDA's alignment (capped at 16 bytes, as CUDA's legacy 4-wide 64-bit types).
#define MOT_CPU_ALIGN_OF(T, n) alignas((sizeof(T) * (n)) > 16 ? 16 : (sizeof(T) * (n)))
#define MOT_CPU_VECTOR_TYPES(T, name)                                                                          \
    struct name##1 { T x; };                                                                                   \
    struct MOT_CPU_ALIGN_OF(T, 2) name##2 { T x, y; };                                                         \
    struct name##3 { T x, y, z; };                                                                             \
    struct MOT_CPU_ALIGN_OF(T, 4) name##4 { T x, y, z, w; };                                                   \
    inline name##1 make_##name##1(T x) { return name##1{x}; }                                                  \
    inline name##2 make_##name##2(T x, T y) { return name##2{x, y}; }                                          \
    inline name##3 make_##name##3(T x, T y, T z) { return name##3{x, y, z}; }                                  \
    inline name##4 make_##name##4(T x, T y, T z, T w) { return name##4{x, y, z, w}; }

MOT_CPU_VECTOR_TYPES(signed char, char)
MOT_CPU_VECTOR_TYPES(unsigned char, uchar)
MOT_CPU_VECTOR_TYPES(short, short)
MOT_CPU_VECTOR_TYPES(unsigned short, ushort)
MOT_CPU_VECTOR_TYPES(int, int)
MOT_CPU_VECTOR_TYPES(unsigned int, uint)
MOT_CPU_VECTOR_TYPES(long, long)
MOT_CPU_VECTOR_TYPES(unsigned long, ulong)
MOT_CPU_VECTOR_TYPES(long long, longlong)
MOT_CPU_VECTOR_TYPES(unsigned long long, ulonglong)
MOT_CPU_VECTOR_TYPES(float, float)
MOT_CPU_VECTOR_TYPES(double, double)
#undef MOT_CPU_VECTOR_TYPES

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---- Built-in variables ----------------------------------------------------------------------------------------
// One set for the whole process: the scheduler sets them before it runs (or resumes) an emulated thread.
namespace mot_cpu {
namespace detail {
inline uint3 g_thread_idx{0, 0, 0};
inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim{1, 1, 1};
inline dim3 g_grid_dim{1, 1, 1};
}  // namespace detail
}  // namespace mot_cpu

// Read-only views, as in CUDA (the kernel cannot assign to them).
inline const uint3& threadIdx = mot_cpu::detail::g_thread_idx;
inline const uint3& blockIdx = mot_cpu::detail::g_block_idx;
inline const dim3& blockDim = mot_cpu::detail::g_block_dim;
inline const dim3& gridDim = mot_cpu::detail::g_grid_dim;
constexpr int warpSize = 32;

// ---- Errors ----------------------------------------------------------------------------------------------------
// CUDA's numbering, so programs that print the numeric code print what they would on a GPU.
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidSymbol = 13,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

// Streams exist only as the type of the default stream (0): enough for `cudaMemcpyAsync(..., 0)`.
typedef struct mot_cpu_stream* cudaStream_t;

inline const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInitializationError: return "cudaErrorInitializationError";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidSymbol: return "cudaErrorInvalidSymbol";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}

inline const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInitializationError: return "initialization error";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidSymbol: return "invalid device symbol";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorInvalidDeviceFunction: return "invalid device function";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
        case cudaErrorUnknown: return "unknown error";
    }
    return "unknown error";
}
