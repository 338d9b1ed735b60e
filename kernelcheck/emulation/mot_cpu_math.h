// mot-cuda CPU backend: CUDA's device math — <math.h> (float overloads in the global namespace, as CUDA has
// them), the fast-math intrinsics, conversions with CUDA's rounding and saturation, bit intrinsics, and CUDA's
// exact set of min/max overloads (so a call that is ambiguous for nvcc is ambiguous here too).
// Part of cuda_cpu.h (include that, not this).
#pragma once

#include <math.h>  // libstdc++'s math.h puts std's float overloads (sqrt(float), ...) in the global namespace

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// ---- Float functions CUDA has and glibc lacks --------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / cbrt(x); }
inline float fdividef(float a, float b) { return a / b; }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
inline float norm3df(float a, float b, float c) { return sqrtf(a * a + b * b + c * c); }
inline float rnorm3df(float a, float b, float c) { return 1.0f / norm3df(a, b, c); }
inline float norm4df(float a, float b, float c, float d) { return sqrtf(a * a + b * b + c * c + d * d); }
inline float saturate(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
#if !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 41)  // glibc 2.41 added the C23 sinpi family
inline float sinpif(float x) { return sinf(3.14159265358979323846f * x); }
inline float cospif(float x) { return cosf(3.14159265358979323846f * x); }
inline double sinpi(double x) { return sin(3.14159265358979323846 * x); }
inline double cospi(double x) { return cos(3.14159265358979323846 * x); }
#endif

// ---- Fast-math intrinsics: computed at full precision (the GPU's are less precise) -----------------------------
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __saturatef(float x) { return saturate(x); }
// Rounded arithmetic: the CPU's default rounding (to nearest even) for every mode; no contraction into FMA.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dsqrt_rn(double x) { return sqrt(x); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
#define __fadd_rz __fadd_rn
#define __fadd_ru __fadd_rn
#define __fadd_rd __fadd_rn
#define __fmul_rz __fmul_rn
#define __fmul_ru __fmul_rn
#define __fmul_rd __fmul_rn
#define __fdiv_rz __fdiv_rn
#define __fmaf_rz __fmaf_rn
inline int __finitef(float x) { return isfinite(x); }
inline int __isinff(float x) { return isinf(x); }
inline int __isnanf(float x) { return isnan(x); }

// ---- Conversions: CUDA saturates out-of-range values and turns NaN into 0 (C++ leaves that undefined) ---------
namespace mot_cpu {
namespace detail {
template <typename I>
inline I saturating_convert(double rounded) {
    if (rounded != rounded) return I(0);
    if (rounded <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (rounded >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return static_cast<I>(rounded);
}
}  // namespace detail
}  // namespace mot_cpu

#define MOT_CPU_CONVERSIONS(src, Src, dst, Dst)                                                                  \
    inline Dst __##src##2##dst##_rn(Src x) { return mot_cpu::detail::saturating_convert<Dst>(nearbyint(x)); }  \
    inline Dst __##src##2##dst##_rz(Src x) { return mot_cpu::detail::saturating_convert<Dst>(trunc(x)); }      \
    inline Dst __##src##2##dst##_ru(Src x) { return mot_cpu::detail::saturating_convert<Dst>(ceil(x)); }       \
    inline Dst __##src##2##dst##_rd(Src x) { return mot_cpu::detail::saturating_convert<Dst>(floor(x)); }
MOT_CPU_CONVERSIONS(float, float, int, int)
MOT_CPU_CONVERSIONS(float, float, uint, unsigned int)
MOT_CPU_CONVERSIONS(float, float, ll, long long)
MOT_CPU_CONVERSIONS(float, float, ull, unsigned long long)
MOT_CPU_CONVERSIONS(double, double, int, int)
MOT_CPU_CONVERSIONS(double, double, uint, unsigned int)
MOT_CPU_CONVERSIONS(double, double, ll, long long)
MOT_CPU_CONVERSIONS(double, double, ull, unsigned long long)
#undef MOT_CPU_CONVERSIONS
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }
inline double __ll2double_rn(long long x) { return static_cast<double>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

// Bit casts.
namespace mot_cpu {
namespace detail {
template <typename To, typename From>
inline To bit_cast(From value) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
    To out;
    std::memcpy(&out, &value, sizeof(To));
    return out;
}
}  // namespace detail
}  // namespace mot_cpu
inline int __float_as_int(float x) { return mot_cpu::detail::bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) { return mot_cpu::detail::bit_cast<unsigned int>(x); }
inline float __int_as_float(int x) { return mot_cpu::detail::bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) { return mot_cpu::detail::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return mot_cpu::detail::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return mot_cpu::detail::bit_cast<double>(x); }
inline int __double2hiint(double x) { return static_cast<int>(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return static_cast<int>(__double_as_longlong(x) & 0xffffffffLL); }
inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double(static_cast<long long>((static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) |
                                                       static_cast<unsigned>(lo)));
}

// ---- Integer intrinsics ----------------------------------------------------------------------------------------
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i, x >>= 1) r = (r << 1) | (x & 1u);
    return r;
}
inline unsigned long long __brevll(unsigned long long x) {
    unsigned long long r = 0;
    for (int i = 0; i < 64; ++i, x >>= 1) r = (r << 1) | (x & 1ull);
    return r;
}
inline int __mul24(int a, int b) {
    return static_cast<int>(static_cast<long long>((a << 8) >> 8) * static_cast<long long>((b << 8) >> 8));
}
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __hadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b) >> 1); }
inline int __rhadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b + 1) >> 1); }
inline unsigned int __uhadd(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) + b) >> 1);
}
inline unsigned int __urhadd(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) + b + 1) >> 1);
}
inline unsigned int __sad(int a, int b, unsigned int c) { return (a > b ? static_cast<unsigned>(a - b) : static_cast<unsigned>(b - a)) + c; }
inline unsigned int __usad(unsigned int a, unsigned int b, unsigned int c) { return (a > b ? a - b : b - a) + c; }

// ---- min / max: CUDA's overload set, nothing more ----------------------------------------------------------------
#define MOT_CPU_MINMAX(R, A, B)                                                                                  \
    inline R min(const A a, const B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(const A a, const B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
MOT_CPU_MINMAX(int, int, int)
MOT_CPU_MINMAX(unsigned int, unsigned int, unsigned int)
MOT_CPU_MINMAX(unsigned int, int, unsigned int)
MOT_CPU_MINMAX(unsigned int, unsigned int, int)
MOT_CPU_MINMAX(long, long, long)
MOT_CPU_MINMAX(unsigned long, unsigned long, unsigned long)
MOT_CPU_MINMAX(unsigned long, long, unsigned long)
MOT_CPU_MINMAX(unsigned long, unsigned long, long)
MOT_CPU_MINMAX(long long, long long, long long)
MOT_CPU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
MOT_CPU_MINMAX(unsigned long long, long long, unsigned long long)
MOT_CPU_MINMAX(unsigned long long, unsigned long long, long long)
#undef MOT_CPU_MINMAX
// Floating min/max behave like fminf/fmaxf (a NaN operand yields the other one), as CUDA's do.
inline float min(const float a, const float b) { return fminf(a, b); }
inline float max(const float a, const float b) { return fmaxf(a, b); }
inline double min(const double a, const double b) { return fmin(a, b); }
inline double max(const double a, const double b) { return fmax(a, b); }
inline double min(const float a, const double b) { return fmin(static_cast<double>(a), b); }
inline double max(const float a, const double b) { return fmax(static_cast<double>(a), b); }
inline double min(const double a, const float b) { return fmin(a, static_cast<double>(b)); }
inline double max(const double a, const float b) { return fmax(a, static_cast<double>(b)); }
inline unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// ---- Memory-access hints: plain loads and stores on the CPU ---------------------------------------------------
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }
