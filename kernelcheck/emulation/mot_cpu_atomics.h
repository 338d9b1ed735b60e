// mot-cuda CPU backend: CUDA's atomic functions.  Part of cuda_cpu.h (include that, not this).
//
// Emulated threads run one at a time on one OS thread, so a plain read-modify-write is atomic.  Each atomic runs
// in an AtomicScope, which logs its address so that the race checks do not count it as a racing store.  Integer arithmetic
// wraps (done in the unsigned type), as the hardware's does.  The _block and _system scopes are the same thing
// here.
#pragma once

#include <cstring>
#include <type_traits>

namespace mot_cpu {
namespace detail {
template <typename T, typename U>
inline T wrap_add(T a, U b) {
    using Unsigned = typename std::make_unsigned<T>::type;
    return static_cast<T>(static_cast<Unsigned>(a) + static_cast<Unsigned>(b));
}
template <typename T, typename U>
inline T wrap_sub(T a, U b) {
    using Unsigned = typename std::make_unsigned<T>::type;
    return static_cast<T>(static_cast<Unsigned>(a) - static_cast<Unsigned>(b));
}
}  // namespace detail
}  // namespace mot_cpu

#define MOT_CPU_ATOMIC(name, T, update)                                                                          \
    inline T name(T* address, T value) {                                                                       \
        mot_cpu::detail::AtomicScope scope(address, sizeof(T));                                                \
        T old = *address;                                                                                      \
        *address = (update);                                                                                   \
        return old;                                                                                            \
    }

MOT_CPU_ATOMIC(atomicAdd, int, mot_cpu::detail::wrap_add(old, value))
MOT_CPU_ATOMIC(atomicAdd, unsigned int, old + value)
MOT_CPU_ATOMIC(atomicAdd, unsigned long long, old + value)
MOT_CPU_ATOMIC(atomicAdd, long long, mot_cpu::detail::wrap_add(old, value))
MOT_CPU_ATOMIC(atomicAdd, float, old + value)
MOT_CPU_ATOMIC(atomicAdd, double, old + value)
MOT_CPU_ATOMIC(atomicSub, int, mot_cpu::detail::wrap_sub(old, value))
MOT_CPU_ATOMIC(atomicSub, unsigned int, old - value)
MOT_CPU_ATOMIC(atomicExch, int, value)
MOT_CPU_ATOMIC(atomicExch, unsigned int, value)
MOT_CPU_ATOMIC(atomicExch, unsigned long long, value)
MOT_CPU_ATOMIC(atomicExch, float, value)
MOT_CPU_ATOMIC(atomicMin, int, value < old ? value : old)
MOT_CPU_ATOMIC(atomicMin, unsigned int, value < old ? value : old)
MOT_CPU_ATOMIC(atomicMin, long long, value < old ? value : old)
MOT_CPU_ATOMIC(atomicMin, unsigned long long, value < old ? value : old)
MOT_CPU_ATOMIC(atomicMax, int, value > old ? value : old)
MOT_CPU_ATOMIC(atomicMax, unsigned int, value > old ? value : old)
MOT_CPU_ATOMIC(atomicMax, long long, value > old ? value : old)
MOT_CPU_ATOMIC(atomicMax, unsigned long long, value > old ? value : old)
MOT_CPU_ATOMIC(atomicAnd, int, old & value)
MOT_CPU_ATOMIC(atomicAnd, unsigned int, old & value)
MOT_CPU_ATOMIC(atomicAnd, unsigned long long, old & value)
MOT_CPU_ATOMIC(atomicOr, int, old | value)
MOT_CPU_ATOMIC(atomicOr, unsigned int, old | value)
MOT_CPU_ATOMIC(atomicOr, unsigned long long, old | value)
MOT_CPU_ATOMIC(atomicXor, int, old ^ value)
MOT_CPU_ATOMIC(atomicXor, unsigned int, old ^ value)
MOT_CPU_ATOMIC(atomicXor, unsigned long long, old ^ value)
// atomicInc/atomicDec wrap at `value` as CUDA defines them.
MOT_CPU_ATOMIC(atomicInc, unsigned int, old >= value ? 0u : old + 1u)
MOT_CPU_ATOMIC(atomicDec, unsigned int, (old == 0u || old > value) ? value : old - 1u)
#undef MOT_CPU_ATOMIC

#define MOT_CPU_ATOMIC_CAS(T)                                                                                    \
    inline T atomicCAS(T* address, T compare, T value) {                                                       \
        mot_cpu::detail::AtomicScope scope(address, sizeof(T));                                                \
        T old = *address;                                                                                      \
        if (old == compare) *address = value;                                                                  \
        return old;                                                                                            \
    }
MOT_CPU_ATOMIC_CAS(int)
MOT_CPU_ATOMIC_CAS(unsigned int)
MOT_CPU_ATOMIC_CAS(unsigned long long)
MOT_CPU_ATOMIC_CAS(unsigned short)
#undef MOT_CPU_ATOMIC_CAS

#define MOT_CPU_SCOPED(name) template <typename... A> inline auto name##_block(A... a) { return name(a...); } \
    template <typename... A> inline auto name##_system(A... a) { return name(a...); }
MOT_CPU_SCOPED(atomicAdd)
MOT_CPU_SCOPED(atomicSub)
MOT_CPU_SCOPED(atomicExch)
MOT_CPU_SCOPED(atomicMin)
MOT_CPU_SCOPED(atomicMax)
MOT_CPU_SCOPED(atomicAnd)
MOT_CPU_SCOPED(atomicOr)
MOT_CPU_SCOPED(atomicXor)
MOT_CPU_SCOPED(atomicInc)
MOT_CPU_SCOPED(atomicDec)
MOT_CPU_SCOPED(atomicCAS)
#undef MOT_CPU_SCOPED

// Memory fences order nothing more on one sequential thread.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
