// mot-cuda CPU backend: fibers, so that a block's threads can wait for each other at __syncthreads().
// Part of cuda_cpu.h (include that, not this).
//
// Each emulated thread of a block that uses barriers runs on its own fiber (a stack of its own); the scheduler
// (mot_cpu_scheduler.h) resumes them one after another.  A fiber is made once with makecontext, entered with
// setcontext, and reused for every block and launch.  Switching uses _setjmp/_longjmp, not swapcontext:
// swapcontext saves and restores the signal mask with a system call on every switch (about 1.2 us here against
// 0.04 us).  The _setjmp/_longjmp pair is declared under its own name so that _FORTIFY_SOURCE's __longjmp_chk
// (which refuses a jump to another stack) is not used.  Under AddressSanitizer every switch is announced with
// __sanitizer_start/finish_switch_fiber.  Each stack has an inaccessible guard page below it: a stack overflow
// faults instead of corrupting memory.
#pragma once

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#if MOT_CPU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

extern "C" int mot_cpu_setjmp(jmp_buf env) __asm__("_setjmp") __attribute__((returns_twice, nothrow));
extern "C" void mot_cpu_longjmp(jmp_buf env, int value) __asm__("_longjmp") __attribute__((noreturn, nothrow));

namespace mot_cpu {
namespace detail {

#ifndef MOT_CPU_FIBER_STACK_BYTES
#define MOT_CPU_FIBER_STACK_BYTES (256 * 1024)
#endif

struct Fiber {
    jmp_buf context;
    unsigned char* mapping = nullptr;  // guard page + stack
    size_t mapping_size = 0;
    unsigned char* stack = nullptr;    // usable part, above the guard page
    size_t stack_size = 0;
    bool finished = true;              // its emulated thread returned (or it has none yet)
    int barrier_line = 0;              // source line of the __syncthreads() it waits at; 0 while running
    int predicate = 0;                 // its argument to __syncthreads_count/_and/_or
    void* fake_stack = nullptr;        // AddressSanitizer's bookkeeping while it is switched out
};

struct FiberPool {
    std::vector<Fiber*> fibers;
    jmp_buf scheduler;                 // where a yielding fiber returns to
    jmp_buf creator;                   // where a new fiber returns to after its first setjmp
    Fiber* current = nullptr;          // the fiber running now (nullptr: the scheduler, or the fast path)
    void (*body)(void*) = nullptr;     // runs the kernel for the current thread (set per launch)
    void* body_arg = nullptr;
    const void* main_bottom = nullptr; // the scheduler's stack, for AddressSanitizer's fiber switches
    size_t main_size = 0;
    void* scheduler_fake_stack = nullptr;
};

inline FiberPool g_fibers;

// AddressSanitizer must be told before a switch which stack comes next, and after it where it came from.
inline void announce_switch(void** fake_stack, const void* bottom, size_t size) {
#if MOT_CPU_ASAN
    __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
    (void)fake_stack, (void)bottom, (void)size;
#endif
}

inline void finish_switch(void* fake_stack, const void** from_bottom, size_t* from_size) {
#if MOT_CPU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, from_bottom, from_size);
#else
    (void)fake_stack, (void)from_bottom, (void)from_size;
#endif
}

// Fiber -> scheduler: the fiber's thread reached a barrier or returned.
MOT_CPU_RUNTIME inline void fiber_yield() {
    Fiber* self = g_fibers.current;
    if (!mot_cpu_setjmp(self->context)) {
        announce_switch(&self->fake_stack, g_fibers.main_bottom, g_fibers.main_size);
        mot_cpu_longjmp(g_fibers.scheduler, 1);
    }
    finish_switch(self->fake_stack, nullptr, nullptr);
}

// Scheduler -> fiber: run it until it yields.
MOT_CPU_RUNTIME inline void fiber_resume(Fiber* fiber) {
    g_fibers.current = fiber;
    if (!mot_cpu_setjmp(g_fibers.scheduler)) {
        announce_switch(&g_fibers.scheduler_fake_stack, fiber->stack, fiber->stack_size);
        mot_cpu_longjmp(fiber->context, 1);
    }
    finish_switch(g_fibers.scheduler_fake_stack, nullptr, nullptr);
    g_fibers.current = nullptr;
}

// A fiber's whole life: run one emulated thread after another, yielding after each.
MOT_CPU_RUNTIME inline void fiber_main(unsigned int high, unsigned int low) {
    Fiber* self = reinterpret_cast<Fiber*>((static_cast<uintptr_t>(high) << 32) | low);
    finish_switch(nullptr, &g_fibers.main_bottom, &g_fibers.main_size);  // learn the scheduler's stack
    if (!mot_cpu_setjmp(self->context)) {  // made: hand control back to fiber_create
        announce_switch(&self->fake_stack, g_fibers.main_bottom, g_fibers.main_size);
        mot_cpu_longjmp(g_fibers.creator, 1);
    }
    finish_switch(self->fake_stack, nullptr, nullptr);
    for (;;) {
        g_fibers.body(g_fibers.body_arg);
        self->finished = true;
        self->barrier_line = 0;
        fiber_yield();
    }
}

// A new fiber with its stack, parked at the start of fiber_main; nullptr when memory runs out.
inline Fiber* fiber_create() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t size = ((MOT_CPU_FIBER_STACK_BYTES + page - 1) / page) * page;
    void* mapping = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
    if (mapping == MAP_FAILED) return nullptr;
    if (mprotect(mapping, page, PROT_NONE) != 0) {
        munmap(mapping, size + page);
        return nullptr;
    }
    Fiber* fiber = new Fiber();
    fiber->mapping = static_cast<unsigned char*>(mapping);
    fiber->mapping_size = size + page;
    fiber->stack = fiber->mapping + page;
    fiber->stack_size = size;
    ucontext_t start;
    getcontext(&start);
    start.uc_stack.ss_sp = fiber->stack;
    start.uc_stack.ss_size = fiber->stack_size;
    start.uc_link = nullptr;  // fiber_main never returns
    const uintptr_t address = reinterpret_cast<uintptr_t>(fiber);
    makecontext(&start, reinterpret_cast<void (*)()>(&fiber_main), 2, static_cast<unsigned int>(address >> 32),
                static_cast<unsigned int>(address & 0xffffffffu));
    if (!mot_cpu_setjmp(g_fibers.creator)) {
        announce_switch(&g_fibers.scheduler_fake_stack, fiber->stack, fiber->stack_size);
        setcontext(&start);  // not swapcontext: fiber_main returns here by _longjmp, nothing is to be saved
    }
    finish_switch(g_fibers.scheduler_fake_stack, nullptr, nullptr);
    return fiber;
}

// At least `count` fibers; false when their stacks cannot be allocated.
inline bool ensure_fibers(size_t count) {
    while (g_fibers.fibers.size() < count) {
        Fiber* fiber = fiber_create();
        if (fiber == nullptr) return false;
        g_fibers.fibers.push_back(fiber);
    }
    return true;
}

// The fiber whose guard page holds `address` (a stack overflow), or nullptr.
inline const Fiber* fiber_overflowed_at(const void* address) {
    const unsigned char* a = static_cast<const unsigned char*>(address);
    for (const Fiber* fiber : g_fibers.fibers)
        if (a >= fiber->mapping && a < fiber->stack) return fiber;
    return nullptr;
}

}  // namespace detail
}  // namespace mot_cpu
