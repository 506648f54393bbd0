// thread_pool.cpp — see thread_pool.h.
//
// One job runs at a time (Sync::job). A job is published by bumping `generation_`; a worker
// that sees a new generation joins it (under Sync::state, while it is open), pulls task
// indices from `next_` until they run out and leaves. The caller also pulls tasks and, when
// done, closes the job and waits until the joined workers have left, so that `fn` (which
// lives on the caller's stack) is never used after parallel_for returns.
//
// More threads than CPUs never help compute-bound kernels: a job runs on at most as many
// threads as the process may use CPUs (its affinity mask), whatever it asks for; its tasks
// are the same, so are its results. Waiting (an idle worker for the next job, the caller for
// the workers still in its job) spins, then yields, then sleeps on a condition variable.
// Spinning pays when every thread has its core: LeViT's kernel calls follow each other within
// microseconds, and a sleeping worker takes tens of microseconds to wake. When other
// processes take the cores, a thread that spins on only keeps the core from the one whose
// work it waits for: it soon yields, then sleeps.
//
// A task that throws (std::bad_alloc from a scratch buffer) ends the job early: the first
// exception is kept, no further task is handed out, and the caller rethrows it only after
// every worker has left the job, so no worker ever calls `fn` once the caller has unwound.
//
// On an external team (set_team_runner) a job keeps the same rules: Sync::job still admits
// one job at a time (a second caller runs inline), tasks come from the same counter and
// errors are kept the same way; the runner itself waits for its threads. Only jobs from the
// thread that set the runner go to it: OpenMP gives every thread that starts a parallel
// region a team of its own, and once a process has more OpenMP threads than CPUs, libgomp
// stops spinning in all of them (each region then waits for sleeping threads to wake). Other
// threads' jobs run on the pool, as before.
//
// fork(): only the forking thread survives in the child. pthread_atfork handlers take both
// locks before fork() (so no job is half published or half joined), release them in the
// parent, and in the child reset the one pool in place: no workers, fresh locks and
// condition variables, and no external team (its threads did not survive either). New
// workers start on the first job.
#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <new>
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

// Spin iterations (one PAUSE each, ~0.3-0.5 ms in all), then yields, before sleeping.
constexpr int kSpins = 20000;
constexpr int kYields = 20;

// CPUs this process may run on (its affinity mask), at least 1.
int available_cpus() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Spin, then yield, until done() holds; false if it still does not (the caller then sleeps).
template <typename Done>
bool spin_then_yield(Done done) {
  for (int i = 0; i < kSpins; ++i) {
    if (done()) return true;
    LEVIT_PAUSE();
  }
  for (int i = 0; i < kYields; ++i) {
    if (done()) return true;
    std::this_thread::yield();
  }
  return done();
}

class Pool {
 public:
  // Never destroyed: joining threads during static destruction at interpreter exit is
  // fragile, and the OS reclaims them anyway.
  static Pool& get() {
    static Pool* pool = create();
    return *pool;
  }

  void run(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> job(sync_.job, std::try_to_lock);
    if (!job.owns_lock() || t_in_pool_job) {
      for (int64_t t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    const int workers = static_cast<int>(std::min<int64_t>({nthreads, ntasks, cpus_})) - 1;
    TeamRunner team = team_.load(std::memory_order_acquire);
    if (team && std::this_thread::get_id() == team_thread_) {
      run_on_team(team, workers + 1, ntasks, fn);
      return;
    }
    grow(workers);
    {
      std::lock_guard<std::mutex> lk(sync_.state);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0, std::memory_order_relaxed);
      error_ = nullptr;
      wanted_ = workers;
      open_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    sync_.wake.notify_all();
    t_in_pool_job = true;
    drain(fn, ntasks);
    t_in_pool_job = false;
    // Close the job, then wait only for the workers that joined it: a worker the OS has not
    // scheduled yet (the other core busy) must not hold up a call whose tasks are all done.
    {
      std::lock_guard<std::mutex> lk(sync_.state);
      open_ = false;
    }
    const auto left = [this] { return joined_.load(std::memory_order_acquire) == 0; };
    if (!spin_then_yield(left)) {
      std::unique_lock<std::mutex> lk(sync_.state);
      caller_waiting_ = true;
      sync_.done.wait(lk, left);
      caller_waiting_ = false;
    }
    if (error_) std::rethrow_exception(error_);   // no worker is left in the job
  }

  int workers() const { return workers_.load(std::memory_order_relaxed); }

  void set_team(TeamRunner runner) {
    team_thread_ = std::this_thread::get_id();     // published by the release below
    team_.store(runner, std::memory_order_release);
  }
  bool has_team() const { return team_.load(std::memory_order_acquire) != nullptr; }

 private:
  struct Sync {
    std::mutex job;                    // one job at a time
    std::mutex state;                  // guards the job description below
    std::condition_variable wake;      // a job was published
    std::condition_variable done;      // the last worker left a job whose caller sleeps
  };

  Pool() : cpus_(available_cpus()) {}

  static Pool* create() {
    Pool* pool = new Pool();
    singleton() = pool;
    pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child);
    return pool;
  }
  static Pool*& singleton() {
    static Pool* pool = nullptr;
    return pool;
  }
  static void before_fork() {
    singleton()->sync_.job.lock();
    singleton()->sync_.state.lock();
  }
  static void after_fork_in_parent() {
    singleton()->sync_.state.unlock();
    singleton()->sync_.job.unlock();
  }
  static void after_fork_in_child() {
    Pool& p = *singleton();
    // The workers did not survive fork(): drop them (detached, so their std::thread objects
    // own nothing). The locks are held by this thread and the condition variables may still
    // count the parent's sleeping workers as waiters, which no longer exist: start all four
    // afresh. (Not destroyed first: glibc's condition variable destructor waits for its
    // waiters.)
    p.threads_.clear();
    p.workers_.store(0, std::memory_order_relaxed);
    p.joined_.store(0, std::memory_order_relaxed);
    p.open_ = false;
    p.caller_waiting_ = false;
    p.team_.store(nullptr, std::memory_order_relaxed);   // the parent's team is gone too
    new (&p.sync_) Sync();
  }

  // The job on an external team (the caller holds Sync::job): every team thread, the
  // caller included, drains the same task counter; the runner returns once all are done.
  struct TeamJob {
    Pool* pool;
    const std::function<void(int64_t)>* fn;
    int64_t ntasks;
  };

  static void team_body(void* data) {
    const TeamJob& job = *static_cast<const TeamJob*>(data);
    const bool outer = t_in_pool_job;
    t_in_pool_job = true;          // a parallel_for inside a task runs inline
    job.pool->drain(*job.fn, job.ntasks);
    t_in_pool_job = outer;
  }

  void run_on_team(TeamRunner team, int threads, int64_t ntasks,
                   const std::function<void(int64_t)>& fn) {
    {
      std::lock_guard<std::mutex> lk(sync_.state);
      next_.store(0, std::memory_order_relaxed);
      error_ = nullptr;
    }
    TeamJob job{this, &fn, ntasks};
    team(&team_body, &job, static_cast<unsigned>(threads), 0);
    if (error_) std::rethrow_exception(error_);   // every team thread has returned
  }

  void grow(int n) {
    while (static_cast<int>(threads_.size()) < n) {
      // The worker must start from the generation *before* the job about to be published,
      // not whatever it reads once the OS gets round to running it.
      const int id = static_cast<int>(threads_.size());
      const uint64_t start = generation_.load(std::memory_order_acquire);
      threads_.emplace_back([this, id, start] { worker(id, start); });
      threads_.back().detach();
      workers_.store(static_cast<int>(threads_.size()), std::memory_order_relaxed);
    }
  }

  void drain(const std::function<void(int64_t)>& fn, int64_t ntasks) {
    for (;;) {
      const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= ntasks) break;
      try {
        fn(t);
      } catch (...) {
        next_.store(ntasks, std::memory_order_relaxed);   // hand out no more tasks
        std::lock_guard<std::mutex> lk(sync_.state);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void worker(int id, uint64_t seen) {
    t_in_pool_job = true;  // nested parallel_for inside a task runs inline
    for (;;) {
      const auto published = [&] {
        return generation_.load(std::memory_order_acquire) != seen;
      };
      if (!spin_then_yield(published)) {
        std::unique_lock<std::mutex> lk(sync_.state);
        sync_.wake.wait(lk, published);
      }
      const std::function<void(int64_t)>* fn;
      int64_t ntasks;
      {
        // Join the current job under the lock that closes it, or skip it: late (closed),
        // or it asked for fewer threads.
        std::lock_guard<std::mutex> lk(sync_.state);
        seen = generation_.load(std::memory_order_relaxed);
        if (!open_ || id >= wanted_) continue;
        fn = fn_;
        ntasks = ntasks_;
        joined_.fetch_add(1, std::memory_order_relaxed);
      }
      drain(*fn, ntasks);
      if (joined_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(sync_.state);
        if (caller_waiting_) sync_.done.notify_one();
      }
    }
  }

  const int cpus_;
  Sync sync_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::exception_ptr error_;      // the job's first exception (guarded by Sync::state)
  int64_t ntasks_ = 0;
  int wanted_ = 0;
  bool open_ = false;             // the job still takes workers
  bool caller_waiting_ = false;   // the caller sleeps on Sync::done
  std::atomic<int> workers_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> joined_{0};    // workers inside the job
  std::atomic<uint64_t> generation_{0};
  std::atomic<TeamRunner> team_{nullptr};   // set_team_runner
  std::thread::id team_thread_;              // the one thread whose jobs run on team_
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

int thread_pool_workers() { return Pool::get().workers(); }

void set_team_runner(TeamRunner runner) { Pool::get().set_team(runner); }

bool team_runner_active() { return Pool::get().has_team(); }

}  // namespace levit
