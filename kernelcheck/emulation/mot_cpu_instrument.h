// mot-cuda CPU backend: every load and store of the kernel, seen through the compiler's instrumentation.
// Part of cuda_cpu.h (include that, not this).
//
// kernelcheck.cpu_backend builds with -fsanitize=kernel-address and a call for every access
// (--param asan-instrumentation-with-call-threshold=0), without AddressSanitizer's runtime: the
// __asan_{load,store}*_noabort calls land in the hooks below (MOT_CPU_INSTRUMENTED).  While a kernel's code runs
// they look the address up among the watched regions (device allocations with their guard zones, watch()ed
// memory, __device__ variables, shared memory, dynamic shared memory with a guard after it):
//
// * an access to a guard zone is an out-of-bounds read or write, reported at once with the thread;
// * an access to an allocation is logged; at the end of the thread's segment the logged bytes are compared with
//   the shadow copy, so the write-write check costs one lookup per access instead of a diff of all watched
//   memory per segment (mot_cpu_checks.h decides what conflicts); shared memory and __device__ variables are
//   globals (the compiler leaves accesses it can prove in bounds unchecked), so they are still diffed whole;
// * a load of a byte that another thread of the same block changed with a plain store in the same barrier
//   interval is a read-after-write race (no barrier between them), reported at once (reads of what atomics
//   update are not: that is how atomicCAS loops start).  Reads across blocks are left to the
//   order-dependence re-run (a block may legitimately read what another published with __threadfence and an
//   atomic).
//
// Without MOT_CPU_INSTRUMENTED (the header compiled by plain g++) the hooks are absent and the write-write check
// diffs all watched memory after each segment.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mot_cpu {
namespace detail {

struct AccessRange {
    uintptr_t start, end;            // with the guard zones
    uintptr_t data_start, data_end;  // the accessible part
    Region* region;
};

struct AccessState {
    bool in_hook = false;            // a hook runs: the (instrumented) code it calls must not re-enter it
    bool kernel_running = false;     // the kernel's own code runs now (not the runtime's bookkeeping)
    int atomic_depth = 0;            // inside an atomic function: its accesses are the atomic's
    std::vector<AccessRange> ranges;  // sorted by start
    const AccessRange* range_data = nullptr;  // ranges.data(), ranges.size(): read by the hooks without a call
    size_t range_count = 0;
    uintptr_t low = UINTPTR_MAX, high = 0;
    std::vector<std::pair<uintptr_t, uint32_t>> touched;  // this segment's accesses to allocations
    Segment current{0, 0, 0};        // the running segment
    std::vector<std::pair<const Region*, bool>> oob_reported;  // (region, write) reported this launch
};
inline AccessState g_access;

inline void build_access_ranges(size_t dynamic_bytes) {
    g_access.ranges.clear();
    g_access.oob_reported.clear();
    for (Region& region : g_race.regions) {
        AccessRange range{0, 0, reinterpret_cast<uintptr_t>(region.data),
                          reinterpret_cast<uintptr_t>(region.data) + region.size, &region};
        range.start = range.data_start - (region.buffer ? region.buffer->guard_before : 0);
        range.end = range.data_end + (region.buffer ? region.buffer->guard_after : 0);
        if (region.name == "dynamic shared memory") range.end = range.data_end + kGuardBytes;
        if (region.size > 0 || range.end > range.start) g_access.ranges.push_back(range);
    }
    (void)dynamic_bytes;
    std::sort(g_access.ranges.begin(), g_access.ranges.end(),
              [](const AccessRange& a, const AccessRange& b) { return a.start < b.start; });
    g_access.range_data = g_access.ranges.data();
    g_access.range_count = g_access.ranges.size();
    g_access.low = g_access.ranges.empty() ? UINTPTR_MAX : g_access.ranges.front().start;
    g_access.high = 0;
    for (const AccessRange& range : g_access.ranges) g_access.high = std::max(g_access.high, range.end);
}

MOT_CPU_RUNTIME inline const AccessRange* find_range(uintptr_t address) {
    size_t lo = 0, hi = g_access.range_count;
    while (lo < hi) {  // the last range that starts at or before `address`
        const size_t mid = (lo + hi) / 2;
        if (g_access.range_data[mid].start <= address) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return nullptr;
    const AccessRange* range = g_access.range_data + (lo - 1);
    return address < range->end ? range : nullptr;
}

inline void report_access_out_of_bounds(const AccessRange& range, uintptr_t address, size_t bytes, bool write) {
    for (const auto& done : g_access.oob_reported)
        if (done.first == range.region && done.second == write) return;
    g_access.oob_reported.emplace_back(range.region, write);
    const long long offset = static_cast<long long>(address) - static_cast<long long>(range.data_start);
    const bool after = address >= range.data_end;
    const std::string who = format_thread(g_access.current.block, g_access.current.thread);
    std::string what = range.region->name;
    if (range.region->buffer != nullptr)
        what = "buffer " + std::to_string(range.region->buffer->id) + " \"" + range.region->buffer->label + "\" (" +
               std::to_string(range.region->size) + " bytes)";
    else what += " (" + std::to_string(range.region->size) + " bytes)";
    if (range.region->buffer != nullptr && write) range.region->buffer->write_reported = true;
    report("OOB", &g_memory.findings.oob, "out-of-bounds %s of %zu byte%s in %s at offset %+lld (%s) by %s %s",
           write ? "write" : "read", bytes, bytes == 1 ? "" : "s", what.c_str(), offset,
           after ? "past its end" : "before its start", who.c_str(), launch_words().c_str());
}

inline void report_read_race(const Region& region, size_t offset, const Segment& writer) {
    for (const Region* done : g_race.reported_read_regions)
        if (done == &region) return;
    if (++g_race.reported > MOT_CPU_RACES_PER_LAUNCH) return;
    g_race.reported_read_regions.push_back(&region);
    const Segment& reader = g_access.current;
    report("RACE", &g_memory.findings.races,
           "data race: thread %s of block %s reads %s that thread %s wrote without a barrier between them %s",
           format_index(reader.thread, g_launch.block).c_str(), format_index(reader.block, g_launch.grid).c_str(),
           describe_location(region, offset).c_str(), format_index(writer.thread, g_launch.block).c_str(),
           launch_words().c_str());
}

// A load by the running thread: a byte another thread of its block changed in this barrier interval is a race.
MOT_CPU_RUNTIME inline void check_read(Region& region, size_t offset, size_t bytes) {
    if (region.owner.empty()) return;
    const Segment& now = g_access.current;
    for (size_t i = offset; i < offset + bytes && i < region.size; ++i) {
        const uint32_t owner = region.owner[i];
        if (owner == 0 || (owner & kAtomicBit) != 0) continue;  // reading what atomics update is how CAS loops start
        const Segment& writer = g_race.segments[(owner & ~kAtomicBit) - 1];
        if (writer.block == now.block && writer.thread != now.thread && writer.interval == now.interval) {
            report_read_race(region, i, writer);
            return;
        }
    }
}

MOT_CPU_RUNTIME inline void on_access(const void* pointer, size_t bytes, bool write) {
    if (!g_access.kernel_running || g_access.atomic_depth > 0) return;
    const uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
    if (address >= g_access.high || address + bytes <= g_access.low) return;  // locals, host data
    const AccessRange* range = find_range(address);
    if (range == nullptr) return;
    if (address < range->data_start || address + bytes > range->data_end) {
        report_access_out_of_bounds(*range, address, bytes, write);
        return;
    }
    if (!g_race.tracking) return;
    if (g_race.access_budget_left == 0) {
        g_race.tracking = false, g_race.stopped = true;
        return;
    }
    --g_race.access_budget_left;
    if (!write) check_read(*range->region, address - range->data_start, bytes);
    // Loads are logged too: the instrumentation checks an address once per basic block, so `*p += 1` calls only
    // the load hook before its store.
    const std::pair<uintptr_t, uint32_t> access(address, static_cast<uint32_t>(bytes));
    if (g_access.touched.empty() || g_access.touched.back() != access) g_access.touched.push_back(access);
}

// Bytes of the watched regions that are not allocations (diffed whole after each segment when instrumented).
inline uint64_t unallocated_bytes() {
    uint64_t total = 0;
    for (const Region& region : g_race.regions) total += region.buffer == nullptr ? region.size : 0;
    return total;
}

// The bytes the segment touched in allocations against the shadow copy (changed bytes get the segment as their
// owner).  The other regions (shared memory, __device__ variables) are globals, whose accesses the compiler
// leaves unchecked when it can prove them in bounds: they are diffed whole.
MOT_CPU_RUNTIME inline void process_accesses(uint32_t segment) {
    for (const auto& access : g_access.touched) {
        const AccessRange* range = find_range(access.first);
        if (range == nullptr || access.first < range->data_start) continue;
        Region& region = *range->region;
        const size_t offset = access.first - range->data_start;
        const size_t end = std::min(offset + access.second, region.size);
        g_race.access_budget_left -= std::min<uint64_t>(g_race.access_budget_left, end - offset);
        for (size_t i = offset; i < end; ++i) {
            if (region.data[i] == region.shadow[i]) continue;
            record_write(region, i, segment);
            region.shadow[i] = region.data[i];
        }
    }
    g_access.touched.clear();
}

// Whole-region diffs of a segment, within their budget; false when it ran out.
inline bool diff_within_budget(uint32_t segment) {
    const uint64_t cost = MOT_CPU_INSTRUMENTED ? unallocated_bytes() : watched_bytes();
    if (g_race.diffs_stopped || cost > g_race.budget_left) {
        if (!g_race.diffs_stopped) g_race.diff_blocks_covered = g_race.blocks_covered;
        g_race.diffs_stopped = true;
        return false;
    }
    g_race.budget_left -= cost;
    if (!MOT_CPU_INSTRUMENTED) return diff_segment(segment), true;
    for (Region& region : g_race.regions)
        if (region.buffer == nullptr) diff_region(region, segment);
    return true;
}

inline void drop_segment_logs() {
    g_access.touched.clear();
    g_race.segment_atomics.clear();
}

// One thread's segment ended (it reached a barrier or returned): attribute its writes.  Without instrumentation
// the diff budget is the whole check's; with it, only shared memory and __device__ variables stop with it.
MOT_CPU_RUNTIME inline void end_segment(uint64_t block, uint32_t thread, uint32_t interval) {
    if (!g_race.tracking) return drop_segment_logs();
    if (g_race.segments.size() >= (kAtomicBit >> 1)) {  // the owner words' segment numbers are used up
        g_race.tracking = false, g_race.stopped = true;
        return drop_segment_logs();
    }
    const uint32_t segment = static_cast<uint32_t>(g_race.segments.size());
    g_race.segments.push_back(Segment{block, thread, interval});
    if (MOT_CPU_INSTRUMENTED) process_accesses(segment);
    if (!diff_within_budget(segment) && !MOT_CPU_INSTRUMENTED) g_race.tracking = false, g_race.stopped = true;
    g_race.segment_atomics.clear();
}

// Atomic functions run inside this scope: their own loads and stores are not the kernel's plain accesses.
struct AtomicScope {
    AtomicScope(const void* address, size_t bytes) {
        note_atomic(address, bytes);
        if (MOT_CPU_INSTRUMENTED && g_access.kernel_running && g_race.tracking)
            g_access.touched.emplace_back(reinterpret_cast<uintptr_t>(address), static_cast<uint32_t>(bytes));
        ++g_access.atomic_depth;
    }
    ~AtomicScope() { --g_access.atomic_depth; }
};

}  // namespace detail
}  // namespace mot_cpu

#if MOT_CPU_INSTRUMENTED
// The instrumentation's calls.  Weak: a program of several translation units has one copy.  Not instrumented
// themselves, and what they call cannot re-enter them (in_hook).
#define MOT_CPU_HOOK extern "C" __attribute__((weak, no_sanitize_address))
MOT_CPU_RUNTIME inline void mot_cpu_hook(void* p, size_t n, bool write) {
    mot_cpu::detail::AccessState& state = mot_cpu::detail::g_access;
    if (state.in_hook || !state.kernel_running) return;
    state.in_hook = true;
    mot_cpu::detail::on_access(p, n, write);
    state.in_hook = false;
}
#define MOT_CPU_HOOKS(n)                                                                                          \
    MOT_CPU_HOOK void __asan_load##n##_noabort(void* p) { mot_cpu_hook(p, n, false); }                           \
    MOT_CPU_HOOK void __asan_store##n##_noabort(void* p) { mot_cpu_hook(p, n, true); }
MOT_CPU_HOOKS(1)
MOT_CPU_HOOKS(2)
MOT_CPU_HOOKS(4)
MOT_CPU_HOOKS(8)
MOT_CPU_HOOKS(16)
#undef MOT_CPU_HOOKS
MOT_CPU_HOOK void __asan_loadN_noabort(void* p, size_t n) { mot_cpu_hook(p, n, false); }
MOT_CPU_HOOK void __asan_storeN_noabort(void* p, size_t n) { mot_cpu_hook(p, n, true); }
MOT_CPU_HOOK void __asan_handle_no_return() {}
MOT_CPU_HOOK void __asan_before_dynamic_init(const char*) {}
MOT_CPU_HOOK void __asan_after_dynamic_init() {}
#undef MOT_CPU_HOOK
#endif
