"""The C++ runtime every generated program includes: plan reading, array filling, guard zones, exact output.

`RUNTIME` (= `RUNTIME_HEADER` + `RUNTIME_SOURCE`) is plain C++17 host code, compiled into the reference program (g++ with AddressSanitizer and
UndefinedBehaviorSanitizer), the GPU program (nvcc's host compiler) and the CPU-backend program (g++), so the
three fill identical arrays from identical plans.  g++ builds compile `RUNTIME_SOURCE` once per process and flag
set into an object (`kernelcheck.runner`) and each program includes only `RUNTIME_HEADER` (most of a build's
time was the runtime's code generation):

* ``mot::Plan`` reads ``plan.txt`` (one line per input: ``I <index> <seed>`` then one token group per C
  parameter: ``i <int>``, ``f <double, hex or inf/nan>``, ``a <extent> <mode> <lo> <hi>`` for memory, then
  ``L gx gy gz bx by bz shared`` for the launch).
* ``mot::fill`` draws every element from SplitMix64 seeded by (seed, parameter): the modes of
  `kernelcheck.inputs.FILL_MODES`.  Floats are built from integers on a power-of-two grid, so every compiler
  produces the same bits.
* ``mot::Guarded`` allocates ``GUARD`` bytes of canary (0xA5) before and after each array (and, under
  AddressSanitizer, poisons them so any read or write there is reported, with the array and the offset, by
  ``__asan_on_error``).  After the call ``check`` reports canaries that changed: an out-of-bounds write.
* ``mot::Output`` appends one record per finished input to ``out.bin`` (flushed, so a crash later keeps the
  inputs that ran): ``MOTR``, input index, item count, then per item: kind (0 return value, 1 array), element
  kind and size, parameter index, byte count, the bytes.  Python compares them (`kernelcheck.compare`).

Messages to stderr, one line each, for the runner: ``MOT_BEGIN k``, ``MOT_GUARD k param before|after offset``,
``MOT_REF_OOB k param offset access`` (from AddressSanitizer, in the reference), ``MOT_CUDA_ERROR k name: text``,
``MOT_RESIZED k param`` (a ``std::vector`` changed size).
"""

from __future__ import annotations

__all__ = ["RUNTIME", "RUNTIME_HEADER", "RUNTIME_SOURCE", "GUARD_BYTES", "RECORD_MAGIC", "RUNTIME_INCLUDES"]

GUARD_BYTES = 4096
RECORD_MAGIC = b"MOTR"

RUNTIME_INCLUDES = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <cstddef>
#include <cmath>
#include <csignal>
#include <limits>
#include <vector>
#include <string>
#include <type_traits>
#include <unistd.h>
"""

RUNTIME_HEADER = RUNTIME_INCLUDES + r"""
namespace mot {
typedef unsigned long long u64;
static const size_t GUARD = """ + str(GUARD_BYTES) + r""";
extern int current_input;

struct Value { char kind; u64 i; double f; size_t n; int mode; double lo, hi; };

struct Plan {
    std::vector<std::vector<Value>> inputs;
    std::vector<int> index;
    std::vector<u64> seed;
    std::vector<std::vector<long long>> launch;
    bool read(const char* path);
};

struct Output {
    FILE* f = nullptr;
    std::vector<unsigned char> rec;
    unsigned count = 0;
    bool open(const char* path, bool append);
    void begin(int index);
    void item(int kind, char elem_kind, int elem_size, int param, const void* data, size_t bytes);
    void end();
};

template <class T> constexpr char kind_of() {
    return std::is_same<T, bool>::value ? 'b' : std::is_floating_point<T>::value ? 'f'
         : std::numeric_limits<T>::is_signed ? 'i' : 'u';
}

void fill_any(void* p, char kind, int size, size_t n, u64 seed, int param, int mode, double lo, double hi);
template <class T>
inline void fill(T* p, size_t n, u64 seed, int param, int mode, double lo, double hi) {
    fill_any((void*)p, kind_of<T>(), (int)sizeof(T), n, seed, param, mode, lo, hi);
}
unsigned char* guarded_alloc(size_t bytes, int param);
bool check_all();
void release_all();
void begin_input(int index, unsigned seconds);
}  // namespace mot
"""

RUNTIME_SOURCE = r"""
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MOT_ASAN 1
#endif

namespace mot {
int current_input = -1;

static inline u64 splitmix(u64& s) {
    u64 z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static char* token(char*& p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') ++p;
    if (!*p) return nullptr;
    char* start = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') ++p;
    if (*p) *p++ = 0;
    return start;
}

static u64 as_int(const char* t) {
    if (!t) return 0;
    return t[0] == '-' ? (u64)std::strtoll(t, nullptr, 10) : (u64)std::strtoull(t, nullptr, 10);
}

static double as_double(const char* t) { return t ? std::strtod(t, nullptr) : 0.0; }

bool Plan::read(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    std::string text;
    char buf[65536];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
    std::fclose(f);
    std::vector<char> data(text.begin(), text.end());
    data.push_back(0);
    char* p = data.data();
    char* t;
    while ((t = token(p)) != nullptr) {
        if (t[0] == 'I') {
            index.push_back(std::atoi(token(p)));
            seed.push_back(as_int(token(p)));
            inputs.emplace_back();
            launch.emplace_back();
        } else if (inputs.empty()) {
            std::fprintf(stderr, "MOT_PLAN_ERROR token %s before the first input\n", t);
            return false;
        } else if (t[0] == 'i') {
            Value v = {}; v.kind = 'i'; v.i = as_int(token(p)); inputs.back().push_back(v);
        } else if (t[0] == 'f') {
            Value v = {}; v.kind = 'f'; v.f = as_double(token(p)); inputs.back().push_back(v);
        } else if (t[0] == 'a') {
            Value v = {}; v.kind = 'a'; v.n = (size_t)as_int(token(p)); v.mode = std::atoi(token(p));
            v.lo = as_double(token(p)); v.hi = as_double(token(p));
            inputs.back().push_back(v);
        } else if (t[0] == 'L') {
            for (int k = 0; k < 7; ++k) launch.back().push_back((long long)as_int(token(p)));
        } else {
            std::fprintf(stderr, "MOT_PLAN_ERROR unexpected token %s\n", t);
            return false;
        }
    }
    return true;
}

// A 24-bit grid in [0, 1): lo + (hi - lo) * grid is exact in float for the ranges the generator uses.
static inline double grid01(u64 r) { return (double)(r >> 40) / 16777216.0; }

template <class T>
static T draw_int(u64& s, int mode, double lo, double hi) {
    const bool is_unsigned = !std::numeric_limits<T>::is_signed;
    u64 r = splitmix(s);
    if (mode == 2) {  // int_edge: the type's extremes, 0, +-1, small values
        switch (r % 8) {
            case 0: return std::numeric_limits<T>::max();
            case 1: return std::numeric_limits<T>::min();
            case 2: return (T)0;
            case 3: return (T)1;
            case 4: return is_unsigned ? (T)2 : (T)-1;
            default: return (T)((long long)(splitmix(s) % 17) - (is_unsigned ? 0 : 8));
        }
    }
    if (mode == 1 && (r & 1)) {  // int_mixed: half small values (flags, counts)
        long long small_lo = is_unsigned ? 0 : -3;
        return (T)(small_lo + (long long)((r >> 1) % (u64)(8 - small_lo + 1)));
    }
    long long a = (long long)lo, b = (long long)hi;
    if (b < a) b = a;
    u64 span = (u64)(b - a) + 1;
    return (T)(a + (long long)(span ? (splitmix(s) % span) : splitmix(s)));
}

template <class T>
static T draw_float(u64& s, int mode, double lo, double hi) {
    u64 r = splitmix(s);
    if (mode == 11) return (T)(lo + (hi - lo) * ((double)((r >> 40) + 1) / 16777216.0));  // (lo, hi]
    if ((mode == 12 || mode == 13) && r % 4 == 0) {
        static const double finite[] = {0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 1e-30, -1e-30};
        static const double nonfinite[] = {INFINITY, -INFINITY, NAN};
        u64 k = splitmix(s);
        if (mode == 12 && k % 4 == 0) return (T)nonfinite[(k >> 2) % 3];
        return (T)finite[(k >> 2) % 8];
    }
    switch (r % 8) {
        case 0: return (T)0;
        case 1: return (T)(double)((long long)((r >> 3) % 9) - 4);
        default: return (T)(lo + (hi - lo) * grid01(splitmix(s)));
    }
}

template <class T>
static void fill_typed(T* p, size_t n, u64 seed, int param, int mode, double lo, double hi) {
    u64 s = seed * 1000003ULL + (u64)param * 7919ULL + 1ULL;
    for (size_t k = 0; k < n; ++k) {
        if (mode == 20) p[k] = (T)(splitmix(s) & 1);
        else if (mode >= 10) p[k] = draw_float<T>(s, mode, lo, hi);
        else p[k] = draw_int<T>(s, mode, lo, hi);
    }
}

void fill_any(void* p, char kind, int size, size_t n, u64 seed, int param, int mode, double lo, double hi) {
    switch (kind) {
        case 'b': fill_typed((bool*)p, n, seed, param, mode, lo, hi); return;
        case 'f':
            if (size == 4) fill_typed((float*)p, n, seed, param, mode, lo, hi);
            else fill_typed((double*)p, n, seed, param, mode, lo, hi);
            return;
        case 'i':
            if (size == 1) fill_typed((signed char*)p, n, seed, param, mode, lo, hi);
            else if (size == 2) fill_typed((short*)p, n, seed, param, mode, lo, hi);
            else if (size == 4) fill_typed((int*)p, n, seed, param, mode, lo, hi);
            else fill_typed((long long*)p, n, seed, param, mode, lo, hi);
            return;
        default:
            if (size == 1) fill_typed((unsigned char*)p, n, seed, param, mode, lo, hi);
            else if (size == 2) fill_typed((unsigned short*)p, n, seed, param, mode, lo, hi);
            else if (size == 4) fill_typed((unsigned int*)p, n, seed, param, mode, lo, hi);
            else fill_typed((unsigned long long*)p, n, seed, param, mode, lo, hi);
    }
}

struct Region { unsigned char* raw; size_t bytes; int param; };
static std::vector<Region> regions;

unsigned char* guarded_alloc(size_t bytes, int param) {
    unsigned char* raw = (unsigned char*)std::malloc(bytes + 2 * GUARD);
    if (!raw) { std::fprintf(stderr, "MOT_NOMEM %d %zu\n", current_input, bytes); std::exit(4); }
    std::memset(raw, 0xA5, GUARD);
    std::memset(raw + GUARD + bytes, 0xA5, GUARD);
#ifdef MOT_ASAN
    ASAN_POISON_MEMORY_REGION(raw, GUARD);
    ASAN_POISON_MEMORY_REGION(raw + GUARD + bytes, GUARD);
#endif
    regions.push_back(Region{raw, bytes, param});
    return raw + GUARD;
}

void release_all() {
    for (Region& r : regions) {
#ifdef MOT_ASAN
        ASAN_UNPOISON_MEMORY_REGION(r.raw, r.bytes + 2 * GUARD);
#endif
        std::free(r.raw);
    }
    regions.clear();
}

// Canaries that changed: "MOT_GUARD input param side offset" (bytes from the array's start / end).
static bool check_canaries(const unsigned char* raw, size_t bytes, int param) {
    bool ok = true;
    for (size_t k = 0; k < GUARD; ++k) {
        if (raw[k] != 0xA5) {
            std::fprintf(stderr, "MOT_GUARD %d %d before %lld\n", current_input, param, (long long)k - (long long)GUARD);
            ok = false;
            break;
        }
    }
    for (size_t k = 0; k < GUARD; ++k) {
        if (raw[GUARD + bytes + k] != 0xA5) {
            std::fprintf(stderr, "MOT_GUARD %d %d after %lld\n", current_input, param, (long long)k);
            ok = false;
            break;
        }
    }
    return ok;
}

bool check_all() {
    bool ok = true;
    for (Region& r : regions) {
#ifdef MOT_ASAN
        ASAN_UNPOISON_MEMORY_REGION(r.raw, r.bytes + 2 * GUARD);
#endif
        ok = check_canaries(r.raw, r.bytes, r.param) && ok;
    }
    return ok;
}

static void put32(std::vector<unsigned char>& rec, unsigned v) {
    for (int k = 0; k < 4; ++k) rec.push_back((unsigned char)(v >> (8 * k)));
}

bool Output::open(const char* path, bool append) { f = std::fopen(path, append ? "ab" : "wb"); return f != nullptr; }

void Output::begin(int index) {
    rec.clear(); count = 0;
    rec.insert(rec.end(), {'M', 'O', 'T', 'R'});
    put32(rec, (unsigned)index); put32(rec, 0);
}

void Output::item(int kind, char elem_kind, int elem_size, int param, const void* data, size_t bytes) {
    rec.push_back((unsigned char)kind); rec.push_back((unsigned char)elem_kind);
    rec.push_back((unsigned char)elem_size); put32(rec, (unsigned)param);
    for (int k = 0; k < 8; ++k) rec.push_back((unsigned char)((u64)bytes >> (8 * k)));
    const unsigned char* p = (const unsigned char*)data;
    rec.insert(rec.end(), p, p + bytes);
    ++count;
}

void Output::end() {
    for (int k = 0; k < 4; ++k) rec[8 + k] = (unsigned char)(count >> (8 * k));
    std::fwrite(rec.data(), 1, rec.size(), f);
    std::fflush(f);
}

void begin_input(int index, unsigned seconds) {
    current_input = index;
    std::fprintf(stderr, "MOT_BEGIN %d\n", index);
    std::fflush(stderr);
    alarm(seconds);  // a hung input is killed by SIGALRM; the runner discards (reference) or reports it
}
}  // namespace mot

#ifdef MOT_ASAN
extern "C" void __asan_on_error() {
    unsigned char* addr = (unsigned char*)__asan_get_report_address();
    const char* access = __asan_get_report_access_type() ? "write" : "read";
    for (mot::Region& r : mot::regions) {
        if (addr >= r.raw && addr < r.raw + r.bytes + 2 * mot::GUARD) {
            std::fprintf(stderr, "MOT_REF_OOB %d %d %lld %s\n", mot::current_input, r.param,
                         (long long)(addr - (r.raw + mot::GUARD)), access);
            return;
        }
    }
    std::fprintf(stderr, "MOT_REF_OOB %d -1 0 %s\n", mot::current_input, access);
}
#endif
"""

RUNTIME = RUNTIME_HEADER + RUNTIME_SOURCE
