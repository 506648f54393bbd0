// thread_pool.cpp — see thread_pool.h.
//
// One job runs at a time (job_mutex). A job is published by bumping `generation_`; a worker
// that sees a new generation joins it (under `mutex_`, while it is open), pulls task indices
// from `next_` until they run out and leaves. The caller also pulls tasks and, when done,
// closes the job and waits until the joined workers have left, so that `fn` (which lives on
// the caller's stack) is never used after parallel_for returns.
#include "thread_pool.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LEVIT_PAUSE() _mm_pause()
#else
#define LEVIT_PAUSE() ((void)0)
#endif

namespace levit {
namespace {

thread_local bool t_in_pool_job = false;

class Pool {
 public:
  // Leaked on purpose: joining threads during static destruction at interpreter exit is
  // fragile, and the OS reclaims them anyway.
  static Pool& get() {
    static Pool* pool = new Pool();
    if (pool->pid_ != getpid()) pool = new Pool();  // after fork() the workers are gone
    return *pool;
  }

  void run(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    if (!job.owns_lock() || t_in_pool_job) {
      for (int64_t t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    const int workers = static_cast<int>(std::min<int64_t>(nthreads, ntasks)) - 1;
    grow(workers);
    {
      std::lock_guard<std::mutex> lk(mutex_);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0, std::memory_order_relaxed);
      wanted_ = workers;
      open_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    t_in_pool_job = true;
    drain(fn, ntasks);
    t_in_pool_job = false;
    // Close the job, then wait only for the workers that joined it: a worker the OS has not
    // scheduled yet (the other core busy) must not hold up a call whose tasks are all done.
    {
      std::lock_guard<std::mutex> lk(mutex_);
      open_ = false;
    }
    while (joined_.load(std::memory_order_acquire) != 0) LEVIT_PAUSE();
  }

 private:
  Pool() : pid_(getpid()) {}

  void grow(int n) {
    while (static_cast<int>(threads_.size()) < n) {
      // The worker must start from the generation *before* the job about to be published,
      // not whatever it reads once the OS gets round to running it.
      const int id = static_cast<int>(threads_.size());
      const uint64_t start = generation_.load(std::memory_order_acquire);
      threads_.emplace_back([this, id, start] { worker(id, start); });
      threads_.back().detach();
    }
  }

  void drain(const std::function<void(int64_t)>& fn, int64_t ntasks) {
    for (;;) {
      const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= ntasks) break;
      fn(t);
    }
  }

  void worker(int id, uint64_t seen) {
    t_in_pool_job = true;  // nested parallel_for inside a task runs inline
    for (;;) {
      // Spin a little (a LeViT forward issues kernel calls back to back), then sleep.
      uint64_t gen = seen;
      for (int i = 0; i < 20000; ++i) {
        gen = generation_.load(std::memory_order_acquire);
        if (gen != seen) break;
        LEVIT_PAUSE();
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lk(mutex_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      const std::function<void(int64_t)>* fn;
      int64_t ntasks;
      {
        // Join the current job under the lock that closes it, or skip it: late (closed),
        // or it asked for fewer threads.
        std::lock_guard<std::mutex> lk(mutex_);
        seen = generation_.load(std::memory_order_relaxed);
        if (!open_ || id >= wanted_) continue;
        fn = fn_;
        ntasks = ntasks_;
        joined_.fetch_add(1, std::memory_order_relaxed);
      }
      drain(*fn, ntasks);
      joined_.fetch_sub(1, std::memory_order_release);
    }
  }

  const pid_t pid_;
  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the job description below
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t ntasks_ = 0;
  int wanted_ = 0;
  bool open_ = false;             // the job still takes workers
  std::atomic<int64_t> next_{0};
  std::atomic<int> joined_{0};    // workers inside the job
  std::atomic<uint64_t> generation_{0};
};

}  // namespace

void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
  if (ntasks <= 0) return;
  if (nthreads <= 1 || ntasks == 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  Pool::get().run(ntasks, nthreads, fn);
}

}  // namespace levit
