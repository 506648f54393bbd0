// thread_pool.h — a tiny persistent, torch-free parallel-for for the CPU kernels.
//
// LeViT's kernel calls are short (tens to hundreds of microseconds), so starting threads per
// call is too slow. A job runs on an external team where one is set for its thread
// (set_team_runner: PyTorch's OpenMP threads), else on the pool's own workers. Workers are
// created once (lazily, growing to the largest thread count asked for, but never beyond the
// CPUs the process may use), spin briefly waiting for work, yield, then sleep on a condition
// variable. The calling thread takes part in the work. With
// nthreads <= 1, or when the pool is already busy (a nested call or a second Python thread),
// the loop simply runs inline on the caller. A child process made by fork() gets the same pool, reset, without
// the parent's workers (which do not survive fork).
#pragma once

#include <cstdint>
#include <functional>

namespace levit {

// Calls fn(task) once for every task in [0, ntasks), on up to `nthreads` threads. Tasks are
// handed out dynamically (an atomic counter), so uneven tiles balance themselves.
void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn);

// Worker threads this process's pool has started (0 in a child until its first job).
int thread_pool_workers();

// A fork-join runner with the signature of libgomp's GOMP_parallel: runs body(data) on
// `nthreads` threads, the caller one of them, and returns when all have finished.
using TeamRunner = void (*)(void (*body)(void*), void* data, unsigned nthreads, unsigned flags);

// Runs the jobs of the calling thread (the one that imports the package: normally Python's
// main thread) on `runner`'s threads instead of the pool's own workers (nullptr: back to the
// pool); other threads' jobs stay on the pool (thread_pool.cpp says why). The Python layer
// passes PyTorch's OpenMP runtime: its threads spin for milliseconds after every torch op,
// on the cores a second pool would need. Jobs keep the pool's rules (one at a time, nested
// and concurrent calls inline, at most one thread per CPU). A fork()ed child runs on the
// pool's own workers: OpenMP teams do not survive fork.
void set_team_runner(TeamRunner runner);
bool team_runner_active();

}  // namespace levit
