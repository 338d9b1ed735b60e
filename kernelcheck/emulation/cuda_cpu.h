// mot-cuda CPU backend: CUDA kernels and their host code, compiled by g++ and run on the CPU with CUDA's
// semantics where they matter, for differential testing without a GPU.  Include this header (or one of the
// shims cuda_runtime.h, cuda.h, device_launch_parameters.h in this directory) instead of the CUDA toolkit's.
//
// Harness API (namespace mot_cpu):
//   launch(kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, args...)   instead of kernel<<<...>>>(...)
//   launch_named("name", kernel, grid, block, dynamic_shared_bytes, args...)    the same, named in findings
//   watch(pointer, bytes, "name")   watch memory that is not from cudaMalloc (cudaMalloc'ed memory always is)
//   label(pointer, "name")          name an allocation (cudaMalloc((void**)&d_C, n) names it "d_C" already)
//   check_guards()                  "" or the out-of-bounds writes found now (also printed as MOT_OOB lines)
//   findings_count()                races + out-of-bounds writes + faults + barrier divergences so far
//   dynamic_shared()                the dynamic shared memory of the running block
//   describe_kernel(kernel, "name", "p0,p1,...")   parameter names for findings (MOT_CPU_DESCRIBE_KERNEL)
//
// Output (stderr, one line each; stdout is the program's own):
//   MOT_RACE: data race: threads (3,0,0) and (7,0,0) of block (0,0,0) both write result[0] (buffer 2 "d_result",
//             byte offset 0) without a barrier between them in kernel sum (launch 1)
//   MOT_RACE: data race: the result depends on the order in which threads run: ... differs between running
//             blocks and threads in order and in reverse order in kernel k (launch 1): ...
//   MOT_OOB: out-of-bounds write in buffer 3 "d_C" (36 bytes) at offset +36..+39 (past its end) by thread
//            (9,0,0) of block (0,0,0) in kernel k (launch 1)
//   MOT_FAULT: invalid memory access (an illegal address on a GPU) at address 0x... by thread (..) of block (..)
//              in kernel k (launch 1)                 (then the process dies of that signal)
//   MOT_BARRIER: threads ... wait at different __syncthreads() (lines 12 and 20) in kernel k (launch 1): ...
//   MOT_NOTE: write-write race check covered the first 12 of 4096 blocks in kernel k (launch 1) (budget ...)
//   MOT_ERROR: an internal error of the emulation (exit status 70)
//   MOT_CPU_SUMMARY: launches=1 launch_errors=0 races=0 oob=0 faults=0 barrier=0 notes=0   (at exit)
//
// Compile-time settings (-D): MOT_CPU_RACE_BUDGET, MOT_CPU_RACE_MAX_BYTES, MOT_CPU_ORDER_CHECK,
// MOT_CPU_ORDER_MAX_BYTES, MOT_CPU_ALLOC_FILL, MOT_CPU_MAX_FINDINGS, MOT_CPU_FIBER_STACK_BYTES.
// What is emulated and what is not: kernelcheck/cpu_backend.py's docstring.
#pragma once
#ifndef MOT_CPU_CUDA_CPU_H
#define MOT_CPU_CUDA_CPU_H

#if !defined(__linux__)
#error "the mot-cuda CPU backend needs Linux (ucontext fibers, mmap'd stacks, ELF sections)"
#endif

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "mot_cpu_types.h"
#include "mot_cpu_math.h"
#include "mot_cpu_fibers.h"
#include "mot_cpu_memory.h"
#include "mot_cpu_checks.h"
#include "mot_cpu_instrument.h"
#include "mot_cpu_atomics.h"
#include "mot_cpu_scheduler.h"
#include "mot_cpu_launch.h"
#include "mot_cpu_runtime.h"

#endif  // MOT_CPU_CUDA_CPU_H
