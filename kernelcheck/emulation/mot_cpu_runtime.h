// mot-cuda CPU backend: the host runtime API (memory, copies, errors, device queries).  Part of cuda_cpu.h.
//
// Device memory is host memory from mot_cpu_memory.h.  Copies check the device side as a GPU does: a range that
// is not inside one allocation is cudaErrorInvalidValue and nothing is copied.  Kernels run synchronously at
// their launch, so every "async" call and every synchronisation is complete when it returns.  Launch errors are
// not sticky (cudaGetLastError returns and clears them, cudaDeviceSynchronize does not report them); a kernel
// that faults ends the process with a MOT_FAULT line, as its context would be lost on a GPU.
#pragma once

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor, totalConstMem;
    int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3], clockRate, major, minor;
    int multiProcessorCount, maxThreadsPerMultiProcessor, maxBlocksPerMultiProcessor, memoryBusWidth;
    int memoryClockRate, l2CacheSize, concurrentKernels, unifiedAddressing, managedMemory, computeMode;
    size_t memPitch, textureAlignment;
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxBlockDimY = 3,
    cudaDevAttrMaxBlockDimZ = 4,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxGridDimY = 6,
    cudaDevAttrMaxGridDimZ = 7,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8, cudaFuncAttributePreferredSharedMemoryCarveout = 9 };
enum cudaFuncCache { cudaFuncCachePreferNone = 0, cudaFuncCachePreferShared = 1, cudaFuncCachePreferL1 = 2, cudaFuncCachePreferEqual = 3 };
enum cudaLimit { cudaLimitStackSize = 0, cudaLimitPrintfFifoSize = 1, cudaLimitMallocHeapSize = 2 };
#define cudaHostAllocDefault 0
#define cudaHostAllocMapped 2
#define cudaMemAttachGlobal 1

namespace mot_cpu {
namespace detail {
constexpr int kMultiProcessors = 132;  // an H100's, for the queries that size grids by it

template <typename T>
inline cudaError_t allocate_into(T** pointer, size_t size, const char* text) {
    if (pointer == nullptr) return set_error(cudaErrorInvalidValue);
    if (size == 0) {
        *pointer = nullptr;
        return cudaSuccess;
    }
    Buffer* buffer = allocate(size, label_from_argument(text));
    if (buffer == nullptr) return set_error(cudaErrorMemoryAllocation);
    *pointer = reinterpret_cast<T*>(buffer->data);
    return cudaSuccess;
}

inline bool copy_allowed(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return true;
    const bool to_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool from_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind > cudaMemcpyDefault) return false;
    if (to_device && !is_device_range(destination, bytes)) return false;
    if (from_device && !is_device_range(source, bytes)) return false;
    return destination != nullptr && source != nullptr;
}
}  // namespace detail
}  // namespace mot_cpu

// ---- Memory ----------------------------------------------------------------------------------------------------
template <typename T>
inline cudaError_t cudaMalloc(T** pointer, size_t size) { return mot_cpu::detail::allocate_into(pointer, size, ""); }
template <typename T>
inline cudaError_t cudaMallocManaged(T** pointer, size_t size, unsigned int = cudaMemAttachGlobal) {
    return mot_cpu::detail::allocate_into(pointer, size, "");
}
template <typename T>
inline cudaError_t cudaMallocHost(T** pointer, size_t size) { return mot_cpu::detail::allocate_into(pointer, size, ""); }
template <typename T>
inline cudaError_t cudaHostAlloc(T** pointer, size_t size, unsigned int) {
    return mot_cpu::detail::allocate_into(pointer, size, "");
}
// The allocation calls name their buffer after the variable they fill, for findings: cudaMalloc((void**)&d_C, n)
// makes buffer "d_C".
#define cudaMalloc(pointer, size) mot_cpu::detail::allocate_into((pointer), (size), #pointer)
#define cudaMallocManaged(pointer, size, ...) mot_cpu::detail::allocate_into((pointer), (size), #pointer)
#define cudaMallocHost(pointer, size) mot_cpu::detail::allocate_into((pointer), (size), #pointer)

inline cudaError_t cudaFree(void* pointer) {
    if (pointer == nullptr) return cudaSuccess;
    return mot_cpu::detail::release(pointer) ? cudaSuccess : mot_cpu::detail::set_error(cudaErrorInvalidValue);
}
inline cudaError_t cudaFreeHost(void* pointer) { return cudaFree(pointer); }

template <typename T>
inline cudaError_t cudaMallocPitch(T** pointer, size_t* pitch, size_t width, size_t height) {
    if (pitch == nullptr) return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    *pitch = (width + 511) / 512 * 512;
    return mot_cpu::detail::allocate_into(pointer, *pitch * height, "pitched allocation");
}

inline cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind) {
    if (!mot_cpu::detail::copy_allowed(destination, source, bytes, kind))
        return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    if (bytes) std::memmove(destination, source, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
    return cudaMemcpy(destination, source, bytes, kind);
}
inline cudaError_t cudaMemcpy2D(void* destination, size_t destination_pitch, const void* source, size_t source_pitch,
                                size_t width, size_t height, cudaMemcpyKind kind) {
    if (width > destination_pitch || width > source_pitch) return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    for (size_t row = 0; row < height; ++row) {
        cudaError_t error = cudaMemcpy(static_cast<char*>(destination) + row * destination_pitch,
                                       static_cast<const char*>(source) + row * source_pitch, width, kind);
        if (error != cudaSuccess) return error;
    }
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
    if (bytes && !mot_cpu::detail::is_device_range(pointer, bytes))
        return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    if (bytes) std::memset(pointer, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t = nullptr) {
    return cudaMemset(pointer, value, bytes);
}

// __constant__ and __device__ variables are host variables: the symbol is the variable itself.
template <typename T>
inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* source, size_t bytes, size_t offset = 0,
                                      cudaMemcpyKind = cudaMemcpyHostToDevice) {
    if (offset + bytes > sizeof(T) || source == nullptr) return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    std::memmove(reinterpret_cast<unsigned char*>(&symbol) + offset, source, bytes);
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMemcpyFromSymbol(void* destination, const T& symbol, size_t bytes, size_t offset = 0,
                                        cudaMemcpyKind = cudaMemcpyDeviceToHost) {
    if (offset + bytes > sizeof(T) || destination == nullptr) return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    std::memmove(destination, reinterpret_cast<const unsigned char*>(&symbol) + offset, bytes);
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaGetSymbolAddress(void** pointer, const T& symbol) {
    *pointer = const_cast<void*>(static_cast<const void*>(&symbol));
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    if (free_bytes) *free_bytes = size_t(1) << 30;
    if (total_bytes) *total_bytes = size_t(2) << 30;
    return cudaSuccess;
}

// ---- Errors and synchronisation ----------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
    const cudaError_t error = mot_cpu::detail::g_last_error;
    mot_cpu::detail::g_last_error = cudaSuccess;
    return error;
}
inline cudaError_t cudaPeekAtLastError() { return mot_cpu::detail::g_last_error; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaThreadSynchronize() { return cudaSuccess; }
inline cudaError_t cudaDeviceReset() {
    while (!mot_cpu::detail::g_memory.live.empty()) {
        auto first = mot_cpu::detail::g_memory.live.begin();
        if (first->second->device) mot_cpu::detail::release(first->second->data);
        else mot_cpu::detail::g_memory.live.erase(first);
    }
    return cudaSuccess;
}

// ---- Device and function queries -------------------------------------------------------------------------------
inline cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : mot_cpu::detail::set_error(cudaErrorInvalidDevice);
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
    if (device != 0 || properties == nullptr) return mot_cpu::detail::set_error(cudaErrorInvalidDevice);
    std::memset(properties, 0, sizeof(*properties));
    std::strcpy(properties->name, "mot-cuda CPU emulation");
    properties->totalGlobalMem = size_t(2) << 30;
    properties->sharedMemPerBlock = mot_cpu::detail::kDefaultSharedLimit;
    properties->sharedMemPerBlockOptin = mot_cpu::detail::kMaxSharedLimit;
    properties->sharedMemPerMultiprocessor = 228 * 1024;
    properties->totalConstMem = 64 * 1024;
    properties->regsPerBlock = 65536;
    properties->warpSize = 32;
    properties->maxThreadsPerBlock = 1024;
    properties->maxThreadsDim[0] = properties->maxThreadsDim[1] = 1024;
    properties->maxThreadsDim[2] = 64;
    properties->maxGridSize[0] = 2147483647;
    properties->maxGridSize[1] = properties->maxGridSize[2] = 65535;
    properties->clockRate = 1755000;
    properties->major = 9;
    properties->minor = 0;
    properties->multiProcessorCount = mot_cpu::detail::kMultiProcessors;
    properties->maxThreadsPerMultiProcessor = 2048;
    properties->maxBlocksPerMultiProcessor = 32;
    properties->memPitch = 2147483647;
    properties->textureAlignment = 512;
    properties->unifiedAddressing = properties->managedMemory = properties->concurrentKernels = 1;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return cudaErrorInvalidDevice;
    switch (attribute) {
        case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
        case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *value = 1024; break;
        case cudaDevAttrMaxBlockDimZ: *value = 64; break;
        case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
        case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *value = 65535; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
        case cudaDevAttrWarpSize: *value = 32; break;
        case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
        case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
        case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
        default: return mot_cpu::detail::set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attribute, int value) {
    if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || static_cast<size_t>(value) > mot_cpu::detail::kMaxSharedLimit)
            return mot_cpu::detail::set_error(cudaErrorInvalidValue);
        mot_cpu::detail::g_shared_limits[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
    }
    return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetCacheConfig(F*, cudaFuncCache) { return cudaSuccess; }
inline cudaError_t cudaDeviceSetCacheConfig(cudaFuncCache) { return cudaSuccess; }
inline cudaError_t cudaDeviceSetLimit(cudaLimit, size_t) { return cudaSuccess; }
template <typename F>
inline cudaError_t cudaOccupancyMaxPotentialBlockSize(int* min_grid, int* block, F, size_t = 0, int limit = 0) {
    *block = (limit > 0 && limit < 1024) ? limit : 1024;
    *min_grid = 2 * mot_cpu::detail::kMultiProcessors;
    return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F, int block_size, size_t) {
    *blocks = block_size > 0 ? 2048 / block_size : 0;
    return cudaSuccess;
}

// ---- Device-side extras ------------------------------------------------------------------------------------
inline long long clock64() { return static_cast<long long>(std::chrono::steady_clock::now().time_since_epoch().count()); }
inline void __nanosleep(unsigned int) {}
[[noreturn]] inline void __trap() { abort(); }
[[noreturn]] inline void __brkpt() { abort(); }

// ---- At exit: guards of what is still allocated, and a summary line (its absence means the program died) ----
namespace mot_cpu {
namespace detail {
inline void at_exit() {
    check_all_guards("(found at exit)");
    const Findings& f = g_memory.findings;
    fflush(stdout);
    fprintf(stderr,
            "MOT_CPU_SUMMARY: launches=%d launch_errors=%d races=%d oob=%d faults=%d barrier=%d host_pointers=%d "
            "notes=%d\n", f.launches, f.launch_errors, f.races, f.oob, f.faults, f.barrier, f.host_pointers, f.notes);
    fflush(stderr);
}
inline const bool g_exit_hook = (std::atexit(&at_exit), true);
}  // namespace detail
}  // namespace mot_cpu
