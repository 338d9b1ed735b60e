// mot-cuda CPU backend: device memory — allocations with guard zones, the watched buffers, findings output.
// Part of cuda_cpu.h (include that, not this).
//
// Every cudaMalloc allocation is 256-byte aligned (as on a GPU) and sits between two guard zones filled with a
// canary byte: at least 256 bytes before and after it.  The guards are checked after each launch, at cudaFree and
// at exit; an overwritten canary is reported as an out-of-bounds write with its offset (MOT_OOB line).  Under
// AddressSanitizer (-fsanitize=address) allocations are exact-sized heap blocks instead, so ASan's own redzones
// catch out-of-bounds reads as well as writes.  Every allocation is also "watched": the race checks snapshot,
// compare and restore it (mot_cpu_checks.h).  mot_cpu::watch() adds memory that is not from cudaMalloc.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#ifndef MOT_CPU_ALLOC_FILL
#define MOT_CPU_ALLOC_FILL 0  // fresh cudaMalloc memory reads as zeros (what a fresh GPU allocation usually holds)
#endif
#ifndef MOT_CPU_MAX_FINDINGS
#define MOT_CPU_MAX_FINDINGS 20  // lines per kind; further ones are counted, not printed
#endif

namespace mot_cpu {
namespace detail {

constexpr size_t kAlignment = 256;
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kCanary = 0xFA;  // reads as -6.5e35f / -84215046: an out-of-bounds read is conspicuous too

struct Buffer {
    int id = 0;                      // 1-based, in order of allocation or watch()
    std::string label;               // the variable of the cudaMalloc call ("d_C"), or watch()'s name
    unsigned char* raw = nullptr;    // start of the whole block, guards included (nullptr: not ours)
    unsigned char* data = nullptr;
    size_t size = 0;
    size_t guard_before = 0;
    size_t guard_after = 0;
    bool device = true;              // from cudaMalloc (else watch())
    std::string oob_writer;          // the thread seen overwriting a guard first, when the race check saw it
    bool write_reported = false;     // the instrumentation reported the write already: re-arm quietly
};

// Counters of what was found, printed in the MOT_CPU_SUMMARY line at exit.
struct Findings {
    int races = 0, oob = 0, faults = 0, barrier = 0, host_pointers = 0, notes = 0, launches = 0, launch_errors = 0;
};

struct Memory {
    std::map<uintptr_t, Buffer*> live;  // by data address
    int next_id = 1;
    Findings findings;
};

inline Memory g_memory;

// One finding per line on stderr, "MOT_<KIND>: message": the harness parses these (kernelcheck.cpu_backend).
inline void report(const char* kind, int* counter, const char* format, ...) {
    ++*counter;
    if (*counter > MOT_CPU_MAX_FINDINGS) return;
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof(message), format, args);
    va_end(args);
    fflush(stdout);
    fprintf(stderr, "MOT_%s: %s\n", kind, message);
    fflush(stderr);
}

// "d_A" from the text of cudaMalloc's first argument, "(void**)&d_A".
inline std::string label_from_argument(const char* text) {
    std::string s(text ? text : "");
    size_t start = 0;
    if (!s.empty() && s[0] == '(') {  // a leading cast: skip its parentheses
        int depth = 0;
        for (size_t i = 0; i < s.size(); ++i) {
            depth += (s[i] == '(') - (s[i] == ')');
            if (depth == 0) { start = i + 1; break; }
        }
    }
    while (start < s.size() && (s[start] == ' ' || s[start] == '&' || s[start] == '(')) ++start;
    size_t end = s.size();
    while (end > start && (s[end - 1] == ' ' || s[end - 1] == ')')) --end;
    return s.substr(start, end - start);
}

inline Buffer* add_buffer(Buffer* buffer) {
    buffer->id = g_memory.next_id++;
    g_memory.live[reinterpret_cast<uintptr_t>(buffer->data)] = buffer;
    return buffer;
}

// A device allocation of `size` bytes between canary-filled guards; nullptr when memory runs out.
inline Buffer* allocate(size_t size, const std::string& label) {
    Buffer* buffer = new Buffer();
    buffer->label = label;
    buffer->size = size;
#if MOT_CPU_ASAN
    void* block = nullptr;  // exact size: ASan's redzones do the guarding
    if (posix_memalign(&block, kAlignment, size ? size : 1) != 0) { delete buffer; return nullptr; }
    buffer->raw = buffer->data = static_cast<unsigned char*>(block);
#else
    const size_t padded = (size + kAlignment - 1) / kAlignment * kAlignment;
    buffer->guard_before = kGuardBytes;
    buffer->guard_after = padded - size + kGuardBytes;
    void* block = nullptr;
    if (size > (SIZE_MAX >> 2) || posix_memalign(&block, kAlignment, kGuardBytes + padded + kGuardBytes) != 0) {
        delete buffer;
        return nullptr;
    }
    buffer->raw = static_cast<unsigned char*>(block);
    buffer->data = buffer->raw + buffer->guard_before;
    std::memset(buffer->raw, kCanary, buffer->guard_before);
    std::memset(buffer->data + size, kCanary, buffer->guard_after);
#endif
    std::memset(buffer->data, MOT_CPU_ALLOC_FILL, size);
    return add_buffer(buffer);
}

// The live buffer holding `address` (its one-past-the-end too when `allow_end`), or nullptr.
inline Buffer* find_buffer(const void* address, bool allow_end = false) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(address);
    auto it = g_memory.live.upper_bound(a);
    if (it == g_memory.live.begin()) return nullptr;
    --it;
    Buffer* buffer = it->second;
    const uintptr_t start = reinterpret_cast<uintptr_t>(buffer->data);
    if (a < start + buffer->size || (allow_end && a == start + buffer->size)) return buffer;
    if (buffer->size == 0 && a == start) return buffer;
    return nullptr;
}

// Whether [address, address + bytes) lies inside one live device buffer.
inline bool is_device_range(const void* address, size_t bytes) {
    Buffer* buffer = find_buffer(address);
    if (buffer == nullptr || !buffer->device) return false;
    return static_cast<size_t>(static_cast<const unsigned char*>(address) - buffer->data) + bytes <= buffer->size;
}

// The first and last overwritten guard byte before (`after` false) or after the data, as offsets from its start;
// false when that guard is intact.
inline bool damaged_guard(const Buffer* buffer, bool after, long long* first, long long* last) {
    const unsigned char* zone = after ? buffer->data + buffer->size : buffer->raw;
    const size_t bytes = after ? buffer->guard_after : buffer->guard_before;
    const long long base = after ? static_cast<long long>(buffer->size) : -static_cast<long long>(bytes);
    bool found = false;
    for (size_t i = 0; i < bytes; ++i) {
        if (zone[i] == kCanary) continue;
        if (!found) *first = base + static_cast<long long>(i);
        *last = base + static_cast<long long>(i);
        found = true;
    }
    return found;
}

inline bool guards_intact(const Buffer* buffer) {
    for (size_t i = 0; i < buffer->guard_before; ++i)
        if (buffer->raw[i] != kCanary) return false;
    for (size_t i = 0; i < buffer->guard_after; ++i)
        if (buffer->data[buffer->size + i] != kCanary) return false;
    return true;
}

// Describe and report each damaged guard of `buffer`, then re-arm it (so one write is reported once).
// `when` says after what it was found ("after kernel k (launch 2)", "at cudaFree").  Returns the description.
inline std::string check_buffer_guards(Buffer* buffer, const std::string& when, bool quiet = false) {
    std::string description;
    quiet = quiet || buffer->write_reported;
    buffer->write_reported = false;
    for (int after = 0; after < 2; ++after) {
        long long first = 0, last = 0;
        if (!damaged_guard(buffer, after != 0, &first, &last)) continue;
        char offsets[64], text[640];
        if (first == last) snprintf(offsets, sizeof(offsets), "%+lld", first);
        else snprintf(offsets, sizeof(offsets), "%+lld..%+lld", first, last);
        snprintf(text, sizeof(text), "out-of-bounds write in buffer %d \"%s\" (%zu bytes) at offset %s (%s)%s%s %s",
                 buffer->id, buffer->label.c_str(), buffer->size, offsets, after ? "past its end" : "before its start",
                 buffer->oob_writer.empty() ? "" : " by ", buffer->oob_writer.c_str(), when.c_str());
        if (!quiet) report("OOB", &g_memory.findings.oob, "%s", text);
        description += (description.empty() ? "" : "\n") + std::string(text);
    }
    if (!description.empty()) {
        std::memset(buffer->raw, kCanary, buffer->guard_before);
        std::memset(buffer->data + buffer->size, kCanary, buffer->guard_after);
        buffer->oob_writer.clear();
    }
    return description;
}

inline std::string check_all_guards(const std::string& when, bool quiet = false) {
    std::string description;
    for (auto& entry : g_memory.live) {
        if (!entry.second->device) continue;
        std::string one = check_buffer_guards(entry.second, when, quiet);
        if (!one.empty()) description += (description.empty() ? "" : "\n") + one;
    }
    return description;
}

// Free a device allocation; false when `pointer` is not the start of one.
inline bool release(void* pointer) {
    auto it = g_memory.live.find(reinterpret_cast<uintptr_t>(pointer));
    if (it == g_memory.live.end() || !it->second->device) return false;
    Buffer* buffer = it->second;
    check_buffer_guards(buffer, "(found at cudaFree)");
    g_memory.live.erase(it);
    free(buffer->raw);
    delete buffer;
    return true;
}

}  // namespace detail

// ---- Harness API ---------------------------------------------------------------------------------------------
// Watch memory that is not from cudaMalloc (cudaMalloc'ed memory is watched already; for it this only names it).
inline void watch(const void* pointer, size_t bytes, const char* name = nullptr) {
    detail::Buffer* inside = detail::find_buffer(pointer);
    if (inside != nullptr) {
        if (name != nullptr && inside->data == pointer) inside->label = name;
        return;
    }
    detail::Buffer* buffer = new detail::Buffer();
    buffer->data = static_cast<unsigned char*>(const_cast<void*>(pointer));
    buffer->size = bytes;
    buffer->device = false;
    buffer->label = name ? name : "watched";
    detail::add_buffer(buffer);
}

// Give an allocation the name that findings use.
inline void label(const void* pointer, const char* name) {
    detail::Buffer* buffer = detail::find_buffer(pointer);
    if (buffer != nullptr && name != nullptr) buffer->label = name;
}

// Check every live allocation's guard zones now: "" when intact, else the findings (also printed as MOT_OOB).
inline std::string check_guards() { return detail::check_all_guards("(found by mot_cpu::check_guards)"); }

// Findings so far (MOT_RACE, MOT_OOB, MOT_FAULT, MOT_BARRIER and MOT_HOST_POINTER lines), for a harness that wants to stop early.
inline int findings_count() {
    const detail::Findings& f = detail::g_memory.findings;
    return f.races + f.oob + f.faults + f.barrier + f.host_pointers;
}

}  // namespace mot_cpu
