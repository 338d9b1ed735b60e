// mot-cuda CPU backend: the block scheduler — barriers, fibers or the fast path, shared memory, fault reports.
//
// Blocks run one after another; a block's threads run one after another.  Without barriers each thread runs to
// completion on the caller's stack (the fast path).  When the program calls __syncthreads anywhere, every
// block's threads run as fibers: each runs until its next barrier, and when all have arrived (or returned) the
// next barrier interval starts.  Whether the program uses barriers is known before main: each __syncthreads()
// expands to a use of a distinct template static member whose initialiser sets a flag.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mot_cpu {
namespace detail {

constexpr size_t kDefaultSharedLimit = 48 * 1024;   // per block, without cudaFuncSetAttribute
constexpr size_t kMaxSharedLimit = 227 * 1024;      // per block with the opt-in (H100)
constexpr unsigned char kSharedPoison = 0xFF;       // NaN as float/double, -1 as integers
constexpr unsigned char kSharedPoisonReverse = 0x7F;

alignas(256) inline unsigned char g_dynamic_shared[kMaxSharedLimit + kGuardBytes];
inline size_t g_dynamic_shared_bytes = 0;
inline cudaError_t g_last_error = cudaSuccess;
inline bool g_in_kernel = false;
inline bool g_reverse_run = false;
inline std::map<const void*, size_t> g_shared_limits;  // cudaFuncAttributeMaxDynamicSharedMemorySize

inline cudaError_t set_error(cudaError_t error) {
    if (error != cudaSuccess) g_last_error = error;
    return error;
}

// ---- Barriers ------------------------------------------------------------------------------------------------
inline bool& program_uses_barriers() {
    static bool uses = false;
    return uses;
}
template <int Site>
struct BarrierSite {
    static inline const bool registered = (program_uses_barriers() = true);
};

struct BlockBarrier {
    int arrived = 0, predicate_count = 0;  // of the last completed barrier
};
inline BlockBarrier g_barrier;

[[noreturn]] inline void fatal(const char* message) {
    fflush(stdout);
    fprintf(stderr, "MOT_ERROR: %s\n", message);
    fflush(stderr);
    _exit(70);
}

// mode 0: __syncthreads, 1: _count, 2: _and, 3: _or.
inline int block_barrier(bool registered, int line, int predicate, int mode) {
    (void)registered;
    Fiber* self = g_fibers.current;
    if (self == nullptr) fatal("__syncthreads() ran outside a fiber (the program's barrier flag was not set)");
    self->barrier_line = line;
    self->predicate = predicate ? 1 : 0;
    fiber_yield();
    if (mode == 1) return g_barrier.predicate_count;
    if (mode == 2) return g_barrier.predicate_count == g_barrier.arrived;
    if (mode == 3) return g_barrier.predicate_count > 0;
    return 0;
}

// ---- Running blocks ------------------------------------------------------------------------------------------
MOT_CPU_RUNTIME inline uint3 unflatten(uint64_t linear, dim3 shape) {
    return uint3{static_cast<unsigned>(linear % shape.x), static_cast<unsigned>((linear / shape.x) % shape.y),
                 static_cast<unsigned>(linear / (static_cast<uint64_t>(shape.x) * shape.y))};
}

MOT_CPU_RUNTIME inline void run_block_direct(uint64_t block, uint32_t threads, bool reverse) {
    for (uint32_t k = 0; k < threads; ++k) {
        const uint32_t t = reverse ? threads - 1 - k : k;
        g_thread_idx = unflatten(t, g_block_dim);
        g_access.current = Segment{block, t, 0};
        g_access.kernel_running = true;
        g_fibers.body(g_fibers.body_arg);
        g_access.kernel_running = false;
        end_segment(block, t, 0);
    }
}

MOT_CPU_RUNTIME inline void check_barrier_divergence(uint64_t block, uint32_t threads, bool* reported) {
    int line = 0;
    uint32_t first = 0;
    for (uint32_t t = 0; t < threads; ++t) {
        const Fiber* fiber = g_fibers.fibers[t];
        if (fiber->finished) continue;
        if (line == 0) { line = fiber->barrier_line; first = t; continue; }
        if (fiber->barrier_line == line || *reported) continue;
        *reported = true;
        report("BARRIER", &g_memory.findings.barrier,
               "threads %s and %s of block %s wait at different __syncthreads() (lines %d and %d) %s: a barrier in "
               "divergent code is undefined behaviour on a GPU",
               format_index(first, g_block_dim).c_str(), format_index(t, g_block_dim).c_str(),
               format_index(block, g_grid_dim).c_str(), line, fiber->barrier_line, launch_words().c_str());
    }
}

MOT_CPU_RUNTIME inline void run_block_fibers(uint64_t block, uint32_t threads, bool reverse, bool* divergence_reported) {
    for (uint32_t t = 0; t < threads; ++t) g_fibers.fibers[t]->finished = false;
    for (uint32_t interval = 0;; ++interval) {
        uint32_t waiting = 0;
        int predicates = 0;
        for (uint32_t k = 0; k < threads; ++k) {
            const uint32_t t = reverse ? threads - 1 - k : k;
            Fiber* fiber = g_fibers.fibers[t];
            if (fiber->finished) continue;
            g_thread_idx = unflatten(t, g_block_dim);
            fiber->barrier_line = 0;
            g_access.current = Segment{block, t, interval};
            g_access.kernel_running = true;
            fiber_resume(fiber);
            g_access.kernel_running = false;
            end_segment(block, t, interval);
            if (!fiber->finished) ++waiting, predicates += fiber->predicate;
        }
        if (waiting == 0) return;
        if (!reverse) check_barrier_divergence(block, threads, divergence_reported);  // once: not in the re-run
        g_barrier.arrived = static_cast<int>(waiting);
        g_barrier.predicate_count = predicates;
    }
}

// Shared memory of a new block: poisoned (a read before a write shows), and its race tracking restarted.
MOT_CPU_RUNTIME inline void start_block(unsigned char poison) {
    if (__start_mot_cpu_shared != nullptr)
        std::memset(__start_mot_cpu_shared, poison, static_cast<size_t>(__stop_mot_cpu_shared - __start_mot_cpu_shared));
    std::memset(g_dynamic_shared, poison, g_dynamic_shared_bytes);
    if (!g_race.tracking) return;
    ++g_race.blocks_covered;
    for (Region& region : g_race.regions) {
        if (!region.shared) continue;
        std::memcpy(region.shadow.data(), region.data, region.size);
        if (!region.owner.empty()) std::fill(region.owner.begin(), region.owner.end(), 0u);
    }
}

MOT_CPU_RUNTIME inline void run_grid(bool reverse, bool fibers) {
    const uint64_t blocks = static_cast<uint64_t>(g_grid_dim.x) * g_grid_dim.y * g_grid_dim.z;
    const uint32_t threads = g_block_dim.x * g_block_dim.y * g_block_dim.z;
    bool divergence_reported = false;
    g_reverse_run = reverse;
    g_in_kernel = true;
    for (uint64_t k = 0; k < blocks; ++k) {
        const uint64_t b = reverse ? blocks - 1 - k : k;
        g_block_idx = unflatten(b, g_grid_dim);
        start_block(reverse ? kSharedPoisonReverse : kSharedPoison);
        if (fibers) run_block_fibers(b, threads, reverse, &divergence_reported);
        else run_block_direct(b, threads, reverse);
    }
    g_in_kernel = false;
    g_reverse_run = false;
}

// ---- Faults ----------------------------------------------------------------------------------------------------
inline void fault_handler(int signal_number, siginfo_t* info, void*) {
    const char* what = signal_number == SIGFPE    ? "arithmetic fault (integer division by zero?)"
                       : signal_number == SIGABRT ? "abort (a failed assert or __trap)"
                       : signal_number == SIGBUS  ? "bus error"
                       : signal_number == SIGILL  ? "illegal instruction (undefined behaviour g++ turned into a trap)"
                                                  : "invalid memory access (an illegal address on a GPU)";
    char message[768];
    if (g_in_kernel) {
        if (signal_number == SIGSEGV && fiber_overflowed_at(info->si_addr) != nullptr)
            what = "stack overflow of an emulated thread";
        snprintf(message, sizeof(message), "MOT_FAULT: %s at address %p by thread (%u,%u,%u) of block (%u,%u,%u) %s%s\n",
                 what, info->si_addr, g_thread_idx.x, g_thread_idx.y, g_thread_idx.z, g_block_idx.x, g_block_idx.y,
                 g_block_idx.z, launch_words().c_str(), g_reverse_run ? " during the reverse-order re-run" : "");
    } else {
        snprintf(message, sizeof(message), "MOT_FAULT: %s at address %p in host code\n", what, info->si_addr);
    }
    ssize_t ignored = write(STDERR_FILENO, message, strlen(message));
    (void)ignored;
    signal(signal_number, SIG_DFL);  // die of the same signal: the exit status tells it
    raise(signal_number);
}

inline void install_fault_handlers() {
#if !MOT_CPU_ASAN  // AddressSanitizer reports faults itself
    static bool installed = false;
    if (installed) return;
    installed = true;
    static unsigned char alternate_stack[64 * 1024];  // a fiber's stack may be the one that overflowed
    stack_t stack{};
    stack.ss_sp = alternate_stack;
    stack.ss_size = sizeof(alternate_stack);
    sigaltstack(&stack, nullptr);
    struct sigaction action{};
    action.sa_sigaction = &fault_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL}) sigaction(s, &action, nullptr);
#endif
}

}  // namespace detail
}  // namespace mot_cpu

#define __syncthreads() \
    ((void)::mot_cpu::detail::block_barrier(::mot_cpu::detail::BarrierSite<__COUNTER__>::registered, __LINE__, 0, 0))
#define __syncthreads_count(p) \
    ::mot_cpu::detail::block_barrier(::mot_cpu::detail::BarrierSite<__COUNTER__>::registered, __LINE__, (p) ? 1 : 0, 1)
#define __syncthreads_and(p) \
    ::mot_cpu::detail::block_barrier(::mot_cpu::detail::BarrierSite<__COUNTER__>::registered, __LINE__, (p) ? 1 : 0, 2)
#define __syncthreads_or(p) \
    ::mot_cpu::detail::block_barrier(::mot_cpu::detail::BarrierSite<__COUNTER__>::registered, __LINE__, (p) ? 1 : 0, 3)
