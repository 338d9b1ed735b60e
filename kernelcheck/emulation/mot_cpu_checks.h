// mot-cuda CPU backend: the race checks of a launch.  Part of cuda_cpu.h (include that, not this).
//
// A sequential emulation hides data races, so each launch is checked two ways (mot_cpu_launch.h drives them):
//
// 1. Write-write conflicts.  A "segment" is what one thread runs between two of its barriers (the whole thread
//    when the kernel has none).  After each segment the bytes it changed in the watched memory (device
//    allocations, watch()ed memory, __device__ variables, the block's shared memory) are found by comparing
//    with a shadow copy — the bytes it touched, as the access hooks logged them (mot_cpu_instrument.h), or, in a
//    build without instrumentation, all watched memory (buffers the kernel gets only as `const T*` excepted).
//    Each changed byte gets the segment as its owner.  A byte changed by two segments that the barriers do not
//    order (different threads of one barrier interval, or threads of different blocks) is a write-write race,
//    unless both writes went through atomic functions (atomics log their addresses).  A write of the value
//    already there changes nothing: such "same value" races are not reported.  The check stops when a launch
//    has tracked MOT_CPU_ACCESS_BUDGET accesses or its whole-region diffs compared MOT_CPU_RACE_BUDGET bytes (the
//    first blocks are covered, a MOT_NOTE line says how many) and is off above MOT_CPU_RACE_MAX_BYTES watched.
// 2. Order dependence: the launch is run again from the same memory with blocks and threads in reverse order
//    (shared memory poisoned with another pattern); any watched byte that ends up different is reported, except
//    bytes written only by atomics (float atomics legitimately round differently in another order).  This
//    catches read-write races (an in-place stencil reading a neighbour) and reads of uninitialised shared memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <unordered_set>
#include <vector>

#ifndef MOT_CPU_RACE_BUDGET
#define MOT_CPU_RACE_BUDGET (1ull << 30)  // bytes the whole-region diffs of a launch may compare
#endif
#ifndef MOT_CPU_ACCESS_BUDGET
#define MOT_CPU_ACCESS_BUDGET (1ull << 27)  // accesses (and their bytes) an instrumented launch may track
#endif
#ifndef MOT_CPU_RACE_MAX_BYTES
#define MOT_CPU_RACE_MAX_BYTES (64ull << 20)
#endif
#ifndef MOT_CPU_ORDER_CHECK
#define MOT_CPU_ORDER_CHECK 1
#endif
#ifndef MOT_CPU_ORDER_MAX_BYTES
#define MOT_CPU_ORDER_MAX_BYTES (256ull << 20)
#endif
#ifndef MOT_CPU_RACES_PER_LAUNCH
#define MOT_CPU_RACES_PER_LAUNCH 3
#endif

// The sections of __shared__ and (rewritten) __device__ variables; null when a program has none.
extern "C" unsigned char __start_mot_cpu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_mot_cpu_shared[] __attribute__((weak));
extern "C" unsigned char __start_mot_cpu_device[] __attribute__((weak));
extern "C" unsigned char __stop_mot_cpu_device[] __attribute__((weak));

namespace mot_cpu {
namespace detail {

// A kernel argument that is a pointer: where it points and the size of what it points to (for "result[3]").
struct PointerArgument {
    const unsigned char* pointer;
    size_t element_size;
    int index;
    bool to_const;  // `const T*`: the kernel does not write through it
};

struct KernelDescription {
    std::string name;
    std::vector<std::string> parameters;
};

inline std::map<const void*, KernelDescription>& kernel_descriptions() {
    static std::map<const void*, KernelDescription> table;
    return table;
}

// Names of shared memory, registered by the declarations kernelcheck.cpu_source annotates: the static
// __shared__ variables by address; the dynamic shared memory by the kernel that names it (nullptr: any kernel).
struct SharedName {
    const unsigned char* start;
    size_t size, element_size;
    bool array;
    std::string name;
};
inline std::vector<SharedName>& shared_names() {
    static std::vector<SharedName> names;
    return names;
}
inline std::map<const void*, SharedName>& dynamic_shared_names() {
    static std::map<const void*, SharedName> names;
    return names;
}

// What the current launch is, for messages.
struct LaunchContext {
    const void* kernel_id = nullptr;
    std::string kernel = "kernel";
    int number = 0;
    dim3 grid, block;
    std::vector<PointerArgument> pointers;
    const KernelDescription* description = nullptr;
};
inline LaunchContext g_launch;

inline std::string format_index(uint64_t linear, dim3 shape) {
    char text[96];
    snprintf(text, sizeof(text), "(%llu,%llu,%llu)", static_cast<unsigned long long>(linear % shape.x),
             static_cast<unsigned long long>((linear / shape.x) % shape.y),
             static_cast<unsigned long long>(linear / (static_cast<uint64_t>(shape.x) * shape.y)));
    return text;
}

inline std::string format_thread(uint64_t block, uint32_t thread) {
    return "thread " + format_index(thread, g_launch.block) + " of block " + format_index(block, g_launch.grid);
}

inline std::string launch_words() {
    return "in kernel " + g_launch.kernel + " (launch " + std::to_string(g_launch.number) + ")";
}

// One watched range during a launch.
struct Region {
    std::string name;        // "buffer 2 \"d_C\"", "shared memory", "__device__ variables"
    Buffer* buffer = nullptr;
    unsigned char* data = nullptr;
    size_t size = 0;
    bool shared = false;     // per block: reset at each block
    bool read_only = false;  // the kernel gets it only as `const T*`: not diffed (a write needs a const_cast)
    std::vector<unsigned char> shadow;
    std::vector<uint32_t> owner;  // per byte: segment number + 1, bit 31 set for an atomic write; 0: none yet
};

struct Segment {
    uint64_t block;
    uint32_t thread;
    uint32_t interval;
};

constexpr uint32_t kAtomicBit = 0x80000000u;

struct RaceState {
    bool tracking = false;        // the write-write check runs now
    bool stopped = false;         // it ran out of budget during this launch
    bool diffs_stopped = false;   // whole-region diffs ran out of budget (instrumented: shared memory unchecked)
    uint64_t budget_left = 0;     // bytes whole-region diffs may still compare
    uint64_t access_budget_left = 0;  // accesses the hooks may still track (instrumented)
    uint64_t blocks_covered = 0, diff_blocks_covered = 0;
    int reported = 0;
    std::vector<const Region*> reported_regions;       // one write-write line per region and launch
    std::vector<const Region*> reported_read_regions;  // one read-after-write line per region and launch
    std::vector<Region> regions;
    std::vector<Segment> segments;
    std::vector<std::pair<uintptr_t, uint32_t>> segment_atomics;  // (address, bytes) since the last diff
    bool log_atomics = false;                                     // run A of the order check: remember them
    std::unordered_set<uintptr_t> atomic_bytes;
};
inline RaceState g_race;

// Atomic functions call this with the address they update.
MOT_CPU_RUNTIME inline void note_atomic(const void* address, size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(address);
    if (g_race.tracking) g_race.segment_atomics.emplace_back(a, static_cast<uint32_t>(bytes));
    if (g_race.log_atomics)
        for (size_t i = 0; i < bytes; ++i) g_race.atomic_bytes.insert(a + i);
}

// "result[3] (buffer 2 "d_result", byte offset 12)": the kernel's pointer argument into the buffer that is
// closest below the byte names the element, when there is one.
// "partial[3] (shared memory)" when a registered name covers the byte, else "".
inline std::string describe_shared(const Region& region, size_t offset) {
    const unsigned char* address = region.data + offset;
    const SharedName* found = nullptr;
    if (region.name == "dynamic shared memory") {
        auto& names = dynamic_shared_names();
        auto it = names.find(g_launch.kernel_id);
        if (it == names.end()) it = names.find(nullptr);
        if (it != names.end()) found = &it->second;
    } else {
        for (const SharedName& name : shared_names())
            if (address >= name.start && address < name.start + name.size) found = &name;
    }
    if (found == nullptr) return "";
    const size_t element = static_cast<size_t>(address - found->start) / found->element_size;
    return found->name + (found->array ? "[" + std::to_string(element) + "]" : "") + " (" + region.name + ")";
}

inline std::string describe_location(const Region& region, size_t offset) {
    if (region.shared) {
        std::string named = describe_shared(region, offset);
        if (!named.empty()) return named;
    }
    const unsigned char* address = region.data + offset;
    const PointerArgument* best = nullptr;
    for (const PointerArgument& argument : g_launch.pointers) {
        if (argument.pointer < region.data || argument.pointer > address) continue;
        if (best == nullptr || argument.pointer > best->pointer) best = &argument;
    }
    char where[96];
    snprintf(where, sizeof(where), "byte offset %zu", offset);
    if (best == nullptr) return region.name + " " + where;
    std::string parameter = "arg" + std::to_string(best->index);
    if (g_launch.description != nullptr && best->index < static_cast<int>(g_launch.description->parameters.size()) &&
        !g_launch.description->parameters[best->index].empty())
        parameter = g_launch.description->parameters[best->index];
    const size_t element = static_cast<size_t>(address - best->pointer) / best->element_size;
    const size_t first = static_cast<size_t>(best->pointer - region.data) + element * best->element_size;
    if (best->element_size == 1) snprintf(where, sizeof(where), "byte offset %zu", first);
    else snprintf(where, sizeof(where), "bytes %zu..%zu", first, first + best->element_size - 1);
    return parameter + "[" + std::to_string(element) + "] (" + region.name + ", " + where + ")";
}

inline void report_conflict(const Region& region, size_t offset, const Segment& first, bool first_atomic,
                            const Segment& second, bool second_atomic) {
    for (const Region* done : g_race.reported_regions)
        if (done == &region) return;
    if (++g_race.reported > MOT_CPU_RACES_PER_LAUNCH) return;
    g_race.reported_regions.push_back(&region);
    std::string who;
    if (first.block == second.block)
        who = "threads " + format_index(first.thread, g_launch.block) + " and " +
              format_index(second.thread, g_launch.block) + " of block " + format_index(first.block, g_launch.grid);
    else
        who = format_thread(first.block, first.thread) + " and " + format_thread(second.block, second.thread);
    const char* how = (first_atomic || second_atomic) ? " (one with an atomic, one with a plain store)" : "";
    report("RACE", &g_memory.findings.races, "data race: %s both write %s%s without a barrier between them %s",
           who.c_str(), describe_location(region, offset).c_str(), how, launch_words().c_str());
}

MOT_CPU_RUNTIME inline bool written_atomically(uintptr_t address) {
    for (const auto& entry : g_race.segment_atomics)
        if (address >= entry.first && address < entry.first + entry.second) return true;
    return false;
}

// The segment that just ended changed byte `offset` of `region`: record it, report a conflict.
MOT_CPU_RUNTIME inline void record_write(Region& region, size_t offset, uint32_t segment) {
    if (region.owner.empty()) region.owner.assign(region.size, 0);
    const bool atomic = written_atomically(reinterpret_cast<uintptr_t>(region.data + offset));
    const uint32_t previous = region.owner[offset];
    region.owner[offset] = (segment + 1) | (atomic ? kAtomicBit : 0);
    if (previous == 0) return;
    const Segment& before = g_race.segments[(previous & ~kAtomicBit) - 1];
    const Segment& now = g_race.segments[segment];
    const bool before_atomic = (previous & kAtomicBit) != 0;
    if (before.block == now.block && before.thread == now.thread) return;        // the same thread
    if (before.block == now.block && before.interval < now.interval) return;     // a barrier orders them
    if (before_atomic && atomic) return;                                         // atomics do not race
    report_conflict(region, offset, before, before_atomic, now, atomic);
}

MOT_CPU_RUNTIME inline void diff_region(Region& region, uint32_t segment) {
    if (std::memcmp(region.data, region.shadow.data(), region.size) == 0) return;
    size_t i = 0;
    for (; i + 8 <= region.size; i += 8) {
        uint64_t now, then;
        std::memcpy(&now, region.data + i, 8);
        std::memcpy(&then, region.shadow.data() + i, 8);
        if (now == then) continue;
        for (size_t j = i; j < i + 8; ++j)
            if (region.data[j] != region.shadow[j]) record_write(region, j, segment);
        std::memcpy(region.shadow.data() + i, region.data + i, 8);
    }
    for (; i < region.size; ++i) {
        if (region.data[i] == region.shadow[i]) continue;
        record_write(region, i, segment);
        region.shadow[i] = region.data[i];
    }
}

// Remember which thread damaged a guard first, for the MOT_OOB line at the end of the launch.
inline void note_guard_writers(uint64_t block, uint32_t thread) {
    for (Region& region : g_race.regions) {
        Buffer* buffer = region.buffer;
        if (buffer == nullptr || !buffer->device || !buffer->oob_writer.empty()) continue;
        if (!guards_intact(buffer)) buffer->oob_writer = format_thread(block, thread);
    }
}

// Bytes one diff compares (the regions the kernel can write).
inline uint64_t watched_bytes() {
    uint64_t total = 0;
    for (const Region& region : g_race.regions) total += region.read_only ? 0 : region.size;
    return total;
}

// The write-write check without instrumentation: diff every watched region the kernel can write.
inline void diff_segment(uint32_t segment) {
    for (Region& region : g_race.regions)
        if (!region.read_only) diff_region(region, segment);
    const Segment& now = g_race.segments[segment];
    note_guard_writers(now.block, now.thread);
}

}  // namespace detail
}  // namespace mot_cpu
