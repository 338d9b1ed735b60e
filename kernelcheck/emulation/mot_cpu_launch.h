// mot-cuda CPU backend: a kernel launch from start to end — configuration checks, the race checks around the
// run, the reverse-order re-run, guard checks — and the harness's launch API.  Part of cuda_cpu.h.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mot_cpu {
namespace detail {

// Invalid launches fail as on a GPU: the kernel does not run and cudaGetLastError() returns the error.
inline cudaError_t validate_launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_bytes) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
        return cudaErrorInvalidConfiguration;
    if (block.x > 1024 || block.y > 1024 || block.z > 64) return cudaErrorInvalidConfiguration;
    if (static_cast<uint64_t>(block.x) * block.y * block.z > 1024) return cudaErrorInvalidConfiguration;
    if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) return cudaErrorInvalidConfiguration;
    size_t limit = kDefaultSharedLimit;
    auto opted = g_shared_limits.find(kernel);
    if (opted != g_shared_limits.end()) limit = opted->second;
    if (dynamic_bytes > limit) return cudaErrorInvalidValue;
    return cudaSuccess;
}

inline Region make_region(std::string name, unsigned char* data, size_t size, bool shared, Buffer* buffer) {
    Region region;
    region.name = std::move(name);
    region.data = data;
    region.size = size;
    region.shared = shared;
    region.buffer = buffer;
    return region;
}

// Everything a kernel may write: device allocations, watch()ed memory, __device__ variables, shared memory.
inline void collect_regions(size_t dynamic_bytes) {
    g_race.regions.clear();
    for (auto& entry : g_memory.live) {
        Buffer* buffer = entry.second;
        const std::string name = "buffer " + std::to_string(buffer->id) + " \"" + buffer->label + "\"";
        g_race.regions.push_back(make_region(name, buffer->data, buffer->size, false, buffer));
    }
    if (__start_mot_cpu_device != nullptr && __stop_mot_cpu_device > __start_mot_cpu_device)
        g_race.regions.push_back(make_region("__device__ variables", __start_mot_cpu_device,
                                             static_cast<size_t>(__stop_mot_cpu_device - __start_mot_cpu_device),
                                             false, nullptr));
    if (__start_mot_cpu_shared != nullptr && __stop_mot_cpu_shared > __start_mot_cpu_shared)
        g_race.regions.push_back(make_region("shared memory", __start_mot_cpu_shared,
                                             static_cast<size_t>(__stop_mot_cpu_shared - __start_mot_cpu_shared),
                                             true, nullptr));
    if (dynamic_bytes > 0)
        g_race.regions.push_back(make_region("dynamic shared memory", g_dynamic_shared, dynamic_bytes, true, nullptr));
}

// A buffer the kernel receives only as `const T*` is read-only for the write-write check.
inline void mark_read_only_regions() {
    for (Region& region : g_race.regions) {
        if (region.shared) continue;
        bool referenced = false, writable = false;
        for (const PointerArgument& argument : g_launch.pointers) {
            if (argument.pointer < region.data || argument.pointer > region.data + region.size) continue;
            referenced = true;
            writable = writable || !argument.to_const;
        }
        region.read_only = referenced && !writable;
    }
}

inline uint64_t global_bytes() {
    uint64_t total = 0;
    for (const Region& region : g_race.regions) total += region.shared ? 0 : region.size;
    return total;
}

// The write-write check's starting point: shadows equal to memory, no owners, the budget full.
inline bool start_tracking() {
    g_race.tracking = g_race.stopped = g_race.diffs_stopped = false;
    g_race.reported = 0;
    g_race.reported_regions.clear();
    g_race.reported_read_regions.clear();
    g_race.blocks_covered = g_race.diff_blocks_covered = 0;
    g_race.segments.clear();
    g_race.segment_atomics.clear();
    if (watched_bytes() > MOT_CPU_RACE_MAX_BYTES) return false;
    for (Region& region : g_race.regions)
        if (!region.read_only) region.shadow.assign(region.data, region.data + region.size);
    g_race.budget_left = MOT_CPU_RACE_BUDGET;
    g_race.access_budget_left = MOT_CPU_ACCESS_BUDGET;
    g_race.tracking = true;
    return true;
}

typedef std::vector<std::vector<unsigned char>> Snapshot;

inline Snapshot take_snapshot() {
    Snapshot snapshot;
    for (const Region& region : g_race.regions)
        if (!region.shared) snapshot.emplace_back(region.data, region.data + region.size);
    return snapshot;
}

inline void restore_snapshot(const Snapshot& snapshot) {
    size_t i = 0;
    for (Region& region : g_race.regions)
        if (!region.shared) std::memcpy(region.data, snapshot[i++].data(), region.size);
}

// After the reverse-order run: the first byte that differs from the in-order run (bytes only atomics wrote
// excepted) is reported once for the launch.
inline void compare_orders(const Snapshot& forward) {
    size_t i = 0, differing = 0;
    const Region* where = nullptr;
    size_t first = 0;
    for (const Region& region : g_race.regions) {
        if (region.shared) continue;
        const std::vector<unsigned char>& copy = forward[i++];
        if (std::memcmp(copy.data(), region.data, region.size) == 0) continue;
        for (size_t b = 0; b < region.size; ++b) {
            if (copy[b] == region.data[b]) continue;
            if (g_race.atomic_bytes.count(reinterpret_cast<uintptr_t>(region.data + b))) continue;
            if (differing++ == 0) where = &region, first = b;
        }
    }
    if (where == nullptr) return;
    report("RACE", &g_memory.findings.races,
           "data race: the result depends on the order in which threads run: %s differs (%zu byte%s in all) "
           "between running blocks and threads in order and in reverse order %s: a thread reads memory that "
           "another thread writes without a barrier between them, or reads uninitialised shared memory%s",
           describe_location(*where, first).c_str(), differing, differing == 1 ? "" : "s", launch_words().c_str(),
           g_race.atomic_bytes.empty() ? "" : " (the kernel uses atomics: results placed by atomic counters also "
                                              "depend on the order on a GPU)");
}

// Kernel printf output of the reverse-order re-run is dropped: the in-order run printed it already.
struct MutedStdout {
    int saved = -1;
    MutedStdout() {
        fflush(stdout);
        std::cout.flush();
        saved = dup(STDOUT_FILENO);
        const int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            close(null);
        }
    }
    ~MutedStdout() {
        fflush(stdout);
        std::cout.flush();
        if (saved >= 0) {
            dup2(saved, STDOUT_FILENO);
            close(saved);
        }
    }
};

inline void check_dynamic_shared_guard(size_t dynamic_bytes) {
    for (size_t i = 0; i < kGuardBytes; ++i) {
        if (g_dynamic_shared[dynamic_bytes + i] == kCanary) continue;
        report("OOB", &g_memory.findings.oob,
               "out-of-bounds write past the end of dynamic shared memory (%zu bytes) at offset %+zd %s",
               dynamic_bytes, static_cast<ssize_t>(dynamic_bytes + i), launch_words().c_str());
        return;
    }
}

inline void report_coverage(bool tracked, bool ordered) {
    const uint64_t blocks = static_cast<uint64_t>(g_grid_dim.x) * g_grid_dim.y * g_grid_dim.z;
    if (!tracked)
        report("NOTE", &g_memory.findings.notes, "race check by thread off %s: %llu bytes watched (limit %llu)",
               launch_words().c_str(), static_cast<unsigned long long>(watched_bytes()),
               static_cast<unsigned long long>(MOT_CPU_RACE_MAX_BYTES));
    else if (g_race.stopped)
        report("NOTE", &g_memory.findings.notes,
               "race check by thread covered the first %llu of %llu blocks %s (budget: %llu %s)",
               static_cast<unsigned long long>(g_race.blocks_covered), static_cast<unsigned long long>(blocks),
               launch_words().c_str(),
               static_cast<unsigned long long>(MOT_CPU_INSTRUMENTED ? MOT_CPU_ACCESS_BUDGET : MOT_CPU_RACE_BUDGET),
               MOT_CPU_INSTRUMENTED ? "tracked accesses" : "compared bytes");
    if (tracked && MOT_CPU_INSTRUMENTED && g_race.diffs_stopped)
        report("NOTE", &g_memory.findings.notes,
               "race check of shared memory and __device__ variables covered the first %llu of %llu blocks %s "
               "(budget: %llu compared bytes)", static_cast<unsigned long long>(g_race.diff_blocks_covered),
               static_cast<unsigned long long>(blocks), launch_words().c_str(),
               static_cast<unsigned long long>(MOT_CPU_RACE_BUDGET));
    if (!ordered && MOT_CPU_ORDER_CHECK)
        report("NOTE", &g_memory.findings.notes, "order-dependence check off %s: %llu bytes watched (limit %llu)",
               launch_words().c_str(), static_cast<unsigned long long>(global_bytes()),
               static_cast<unsigned long long>(MOT_CPU_ORDER_MAX_BYTES));
}

inline void release_tracking() {
    std::vector<Region>().swap(g_race.regions);
    std::vector<Segment>().swap(g_race.segments);
    std::unordered_set<uintptr_t>().swap(g_race.atomic_bytes);
}

// A pointer argument that is neither null nor into watched memory (a cudaMalloc allocation, watch()ed memory,
// __device__ variables) is host memory: a GPU kernel that dereferences it fails with an illegal address.  The
// kernel still runs here, so its output can be compared; the line says why a GPU would not produce it.
inline void check_pointer_arguments() {
    for (const PointerArgument& argument : g_launch.pointers) {
        if (argument.pointer == nullptr || find_buffer(argument.pointer, true) != nullptr) continue;
        if (argument.pointer >= __start_mot_cpu_device && argument.pointer < __stop_mot_cpu_device) continue;
        std::string parameter = "argument " + std::to_string(argument.index);
        if (g_launch.description != nullptr && argument.index < static_cast<int>(g_launch.description->parameters.size()))
            parameter += " (" + g_launch.description->parameters[argument.index] + ")";
        report("HOST_POINTER", &g_memory.findings.host_pointers,
               "%s of kernel %s (launch %d) is %p, not device memory (not from cudaMalloc): a GPU kernel that "
               "dereferences it fails with an illegal address", parameter.c_str(), g_launch.kernel.c_str(),
               g_launch.number, static_cast<const void*>(argument.pointer));
    }
}

inline void begin_launch(const char* name, const void* kernel, dim3 grid, dim3 block,
                         std::vector<PointerArgument> pointers) {
    auto described = kernel_descriptions().find(kernel);
    g_launch.description = described == kernel_descriptions().end() ? nullptr : &described->second;
    g_launch.kernel = name ? name : (g_launch.description ? g_launch.description->name : std::string("kernel"));
    g_launch.kernel_id = kernel;
    g_launch.number = ++g_memory.findings.launches;
    g_launch.grid = grid;
    g_launch.block = block;
    g_launch.pointers = std::move(pointers);
    g_grid_dim = grid;
    g_block_dim = block;
}

// The whole launch: validate, run in order (with the write-write check), re-run in reverse order, compare.
inline void run_launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_bytes,
                       void (*body)(void*), void* argument, std::vector<PointerArgument> pointers) {
    const cudaError_t invalid = validate_launch(kernel, grid, block, dynamic_bytes);
    if (invalid != cudaSuccess) {
        ++g_memory.findings.launch_errors;
        set_error(invalid);
        return;
    }
    const bool fibers = program_uses_barriers();
    if (fibers && !ensure_fibers(static_cast<size_t>(block.x) * block.y * block.z)) {
        set_error(cudaErrorLaunchOutOfResources);
        return;
    }
    install_fault_handlers();
    begin_launch(name, kernel, grid, block, std::move(pointers));
    check_pointer_arguments();
    g_fibers.body = body;
    g_fibers.body_arg = argument;
    g_dynamic_shared_bytes = dynamic_bytes;
    std::memset(g_dynamic_shared + dynamic_bytes, kCanary, kGuardBytes);
    collect_regions(dynamic_bytes);
    if (!MOT_CPU_INSTRUMENTED) mark_read_only_regions();  // instrumented, a store costs the same anywhere
    const bool ordered = MOT_CPU_ORDER_CHECK && global_bytes() <= MOT_CPU_ORDER_MAX_BYTES;
    const bool tracked = start_tracking();
    build_access_ranges(dynamic_bytes);
    Snapshot before;
    if (ordered) before = take_snapshot();
    g_race.log_atomics = ordered;
    g_race.atomic_bytes.clear();
    run_grid(false, fibers);
    g_race.tracking = g_race.log_atomics = false;
    const bool out_of_bounds = !check_all_guards(launch_words()).empty();
    if (!MOT_CPU_INSTRUMENTED) check_dynamic_shared_guard(dynamic_bytes);  // instrumented, the hooks saw it
    if (ordered) {
        Snapshot forward = take_snapshot();
        restore_snapshot(before);
        {
            MutedStdout muted;
            run_grid(true, fibers);
        }
        compare_orders(forward);
        restore_snapshot(forward);  // keep the in-order result
        // The same kernel again: what it wrote out of bounds was reported already; re-arm the guards quietly.
        check_all_guards(launch_words() + " during the reverse-order re-run", out_of_bounds);
    }
    report_coverage(tracked, ordered);
    release_tracking();
}

template <typename Tuple, size_t... I>
inline std::vector<PointerArgument> pointer_arguments(const Tuple& params, std::index_sequence<I...>) {
    std::vector<PointerArgument> pointers;
    auto add = [&pointers](const auto& value, int index) {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_pointer<T>::value && !std::is_function<std::remove_pointer_t<T>>::value) {
            using Element = std::remove_cv_t<std::remove_pointer_t<T>>;
            size_t size = 1;
            if constexpr (!std::is_void<Element>::value) size = sizeof(Element);
            pointers.push_back(PointerArgument{reinterpret_cast<const unsigned char*>(value), size, index,
                                               std::is_const<std::remove_pointer_t<T>>::value});
        }
    };
    (add(std::get<I>(params), static_cast<int>(I)), ...);
    return pointers;
}

}  // namespace detail

// ---- Harness API ---------------------------------------------------------------------------------------------
// Dynamic shared memory (`extern __shared__ T name[]` is rewritten to a pointer to this).
inline void* dynamic_shared() { return detail::g_dynamic_shared; }

// Name a kernel's parameters, so that findings say "result[3]" (kernelcheck.cpu_source emits these).
inline bool describe_kernel(const void* kernel, const char* name, const char* parameters) {
    detail::KernelDescription description;
    description.name = name;
    std::string all(parameters ? parameters : ""), current;
    for (char c : all) {
        if (c == ',') { description.parameters.push_back(current); current.clear(); }
        else if (c != ' ') current += c;
    }
    if (!all.empty()) description.parameters.push_back(current);
    detail::kernel_descriptions()[kernel] = description;
    return true;
}

// Name a static __shared__ variable for findings ("partial[3] (shared memory)"); MOT_CPU_NAME_SHARED calls it.
template <typename T>
inline bool name_shared(const T& variable, const char* name) {
    using Element = std::remove_all_extents_t<T>;
    detail::shared_names().push_back(detail::SharedName{reinterpret_cast<const unsigned char*>(&variable), sizeof(T),
                                                        sizeof(Element), std::is_array<T>::value, name});
    return true;
}

// Name the dynamic shared memory as the running kernel sees it (`extern __shared__ T name[]`).
template <typename T>
inline bool name_dynamic_shared(T* const&, const char* name) {
    size_t size = 1;
    if constexpr (!std::is_void<std::remove_cv_t<T>>::value) size = sizeof(T);
    detail::dynamic_shared_names()[detail::g_in_kernel ? detail::g_launch.kernel_id : nullptr] =
        detail::SharedName{detail::g_dynamic_shared, detail::kMaxSharedLimit, size, true, name};
    return true;
}

// kernel<<<grid, block, dynamic_shared_bytes>>>(args...), named `name` in findings.  The arguments are converted
// to the kernel's parameter types once, as CUDA copies them at the launch; each thread gets its own copies.
template <typename... P, typename... A>
inline void launch_named(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                         A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "mot_cpu::launch: the kernel takes another number of arguments");
    using Params = std::tuple<std::decay_t<P>...>;
    struct Call {
        void (*kernel)(P...);
        Params params;
    };
    Call call{kernel, Params(std::forward<A>(args)...)};
    void (*body)(void*) = [](void* argument) {
        Call* c = static_cast<Call*>(argument);
        std::apply(c->kernel, c->params);
    };
    detail::run_launch(name, reinterpret_cast<const void*>(kernel), grid, block, dynamic_shared_bytes, body, &call,
                       detail::pointer_arguments(call.params, std::index_sequence_for<P...>{}));
}

template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_shared_bytes, A&&... args) {
    launch_named(nullptr, kernel, grid, block, dynamic_shared_bytes, std::forward<A>(args)...);
}

}  // namespace mot_cpu

#define MOT_CPU_CONCAT2(a, b) a##b
#define MOT_CPU_CONCAT(a, b) MOT_CPU_CONCAT2(a, b)
#define MOT_CPU_NAME_SHARED(variable) \
    static const bool MOT_CPU_CONCAT(mot_cpu_named_, __COUNTER__) = ::mot_cpu::name_shared(variable, #variable);
#define MOT_CPU_NAME_DYNAMIC_SHARED(pointer) \
    static const bool MOT_CPU_CONCAT(mot_cpu_named_, __COUNTER__) = ::mot_cpu::name_dynamic_shared(pointer, #pointer);
#define MOT_CPU_DESCRIBE_KERNEL(kernel, parameters)                                                             \
    static const bool MOT_CPU_CONCAT(mot_cpu_described_, __COUNTER__) =                                        \
        ::mot_cpu::describe_kernel(reinterpret_cast<const void*>(&kernel), #kernel, parameters);
