// tinyslm threads: a small persistent thread pool. The caller's thread takes part, so a pool of
// n threads starts n - 1 workers; a pool of 1 starts none and runs work inline.
//
// A job is n_threads calls f(t, n_threads), t = 0 .. n-1. The indices are not tied to threads:
// each participant (the caller and every awake worker) claims the next unclaimed index from one
// atomic counter, so the caller never waits for a worker that has not woken up (a worker
// descheduled by another process on its core); it only waits for indices some worker has
// already claimed and not finished. Which thread runs an index changes nothing the index
// computes, so results do not depend on the schedule.
//
// Waiting: spin briefly with a pause instruction (decode issues many short jobs back to back),
// then block on a mutex and condition variable. Not std::atomic::wait: libstdc++'s fallback
// where there is no futex (mingw, macOS, the BSDs) can lose a wakeup.
//
// When threads cannot be created (std::thread throws std::system_error, the system's limit,
// wasm without pthreads) the pool keeps the workers it has, down to none: size() says how
// many threads it really has, and nothing fails.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if !defined(TINYSLM_NO_THREADS)
#include <thread>
#if !defined(TINYSLM_NO_EXCEPTIONS)
#include <system_error>
#endif
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "core.hpp"

#if defined(TINYSLM_ARCH_X86) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_CPU_RELAX() __builtin_ia32_pause()
#elif defined(TINYSLM_ARCH_ARM64) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define TINYSLM_CPU_RELAX() ((void)0)
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Where the pool's workers run, for CPUs with big and little cores. Applied on each worker
// thread as it starts, before it takes any work; the caller's own thread (index 0 of every
// job) is the application's and is left alone.
//   cpu_mask:  bit i set = the workers may run on CPU i (Linux and Android, through
//              sched_setaffinity; no effect elsewhere, and none when 0 or when the OS refuses).
//   on_worker_start(worker, user): called on worker thread `worker` (1 .. n_threads - 1) after
//              the mask is applied; set the affinity, priority or QoS class the platform offers
//              (SetThreadAffinityMask, pthread_set_qos_class_self_np, ...). Must not throw.
struct ThreadPlacement {
  uint64_t cpu_mask = 0;
  void (*on_worker_start)(int worker, void* user) = nullptr;
  void* user = nullptr;
};

// Starts a thread running `body`. The pool's default is std::thread; tests inject one that
// fails. A failure is a thrown std::system_error or a returned thread that is not joinable.
#if !defined(TINYSLM_NO_THREADS)
using ThreadFactory = std::thread (*)(std::function<void()> body);
#endif

namespace detail {
// True on a pool's worker threads (and on a caller while it runs a job), so a nested run()
// executes inline instead of deadlocking on the busy pool.
inline bool& inside_thread_pool() {
  static thread_local bool inside = false;
  return inside;
}

// Spin on `pred` for about `spin_us` microseconds, then give up (returns pred()).
template <class Pred>
inline bool spin_until(Pred&& pred, int spin_us) {
  using clock = std::chrono::steady_clock;
  if (pred()) return true;
  if (spin_us <= 0) return false;
  const auto deadline = clock::now() + std::chrono::microseconds(spin_us);
  for (uint32_t i = 0;; ++i) {
    if (pred()) return true;
    TINYSLM_CPU_RELAX();
    if ((i & 63) == 63 && clock::now() >= deadline) return pred();
  }
}

inline void apply_placement(const ThreadPlacement& p, int worker) {
#if defined(__linux__) && defined(CPU_SET)
  if (p.cpu_mask) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c = 0; c < 64; ++c)
      if (p.cpu_mask >> c & 1) CPU_SET(c, &set);
    (void)sched_setaffinity(0, sizeof set, &set);  // 0 = this thread on Linux
  }
#endif
  if (p.on_worker_start) p.on_worker_start(worker, p.user);
}

#if !defined(TINYSLM_NO_THREADS)
inline std::thread start_std_thread(std::function<void()> body) { return std::thread(std::move(body)); }

// Whether this build can start threads at all (emscripten without -pthread cannot).
#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
inline constexpr bool kCanStartThreads = false;
#else
inline constexpr bool kCanStartThreads = true;
#endif

// One thread from `factory`, or a non-joinable thread when it cannot be started.
inline std::thread try_start_thread(ThreadFactory factory, std::function<void()> body) {
#if defined(TINYSLM_NO_EXCEPTIONS)
  return factory(std::move(body));
#else
  try {
    return factory(std::move(body));
  } catch (const std::system_error&) {
    return std::thread();
  }
#endif
}
#endif
}  // namespace detail

class ThreadPool {
 public:
  // n_threads < 1 is treated as 1. With TINYSLM_NO_THREADS the pool always has size 1; when
  // fewer threads can be started than asked for, it has as many as were started (see top).
  explicit ThreadPool(int n_threads, const ThreadPlacement& placement = {}) : ThreadPool(n_threads, placement, nullptr) {}
#if !defined(TINYSLM_NO_THREADS)
  ThreadPool(int n_threads, const ThreadPlacement& placement, ThreadFactory factory) {
    start(n_threads < 1 ? 1 : n_threads, placement, factory ? factory : &detail::start_std_thread);
  }
#else
  ThreadPool(int, const ThreadPlacement&, std::nullptr_t) {}
#endif
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
#if !defined(TINYSLM_NO_THREADS)
    if (state_) {
      state_->stop.store(true, std::memory_order_seq_cst);
      { std::lock_guard<std::mutex> lock(state_->m); }
      state_->work_cv.notify_all();
      for (auto& w : workers_) w.join();
    }
#endif
  }

  int size() const { return n_threads_; }

  // The handle the kernels layer takes (core.hpp): valid while the pool lives.
  ParallelFor parallel() {
    ParallelFor p;
    p.ctx = this;
    p.n_threads = n_threads_;
    p.dispatch = &ThreadPool::dispatch;
    return p;
  }

  // Calls f(index, n_threads) once for every index of the pool and returns when all calls are
  // done; the calling thread runs every index no awake worker claimed first (see top). Not to be called from two threads at
  // once; a call from inside a job runs all indices inline on the calling thread.
  template <class F>
  void run(F&& f) {
    if (n_threads_ <= 1 || detail::inside_thread_pool()) {
      for (int t = 0; t < n_threads_; ++t) f(t, n_threads_);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run_task([](void* arg, int t, int n) { (*static_cast<Fn*>(arg))(t, n); },
             const_cast<void*>(static_cast<const void*>(&f)));
  }

  // How long (microseconds) an idle thread spins before it blocks. 0 when the pool has more
  // threads than the machine has cores: spinning would only take time from the ones working.
  void set_spin_microseconds(int us) { spin_us_.store(us < 0 ? 0 : us, std::memory_order_relaxed); }

 private:
  // ctl packs the job's generation (high 32 bits) with its next unclaimed index (low 32), so a
  // worker that wakes late cannot claim an index of a job other than the one it read.
  struct State {
    alignas(64) std::atomic<uint64_t> ctl{0};
    alignas(64) std::atomic<int> done{0};  // indices finished in the current job
    std::atomic<int> sleepers{0};          // workers blocked (or about to block) on work_cv
    std::atomic<bool> stop{false};
    ParallelFor::Task task = nullptr;
    void* arg = nullptr;
    std::mutex m;
    std::condition_variable work_cv, done_cv;
  };

  static void dispatch(void* ctx, ParallelFor::Task task, void* arg) {
    auto* pool = static_cast<ThreadPool*>(ctx);
    if (pool->n_threads_ <= 1 || detail::inside_thread_pool()) {
      for (int t = 0; t < pool->n_threads_; ++t) task(arg, t, pool->n_threads_);
      return;
    }
    pool->run_task(task, arg);
  }

#if defined(TINYSLM_NO_THREADS)
  void run_task(ParallelFor::Task task, void* arg) { task(arg, 0, 1); }
#else
  void start(int n, const ThreadPlacement& placement, ThreadFactory factory) {
    if (n <= 1 || !detail::kCanStartThreads) return;
    state_ = std::make_unique<State>();
    workers_.reserve(static_cast<size_t>(n - 1));
    for (int i = 1; i < n; ++i) {
      std::thread t = detail::try_start_thread(factory, [this, i, placement] {
        detail::apply_placement(placement, i);
        worker_loop();
      });
      if (!t.joinable()) break;
      workers_.push_back(std::move(t));
    }
    // Workers read n_threads_ only inside a job, which starts after this store.
    n_threads_ = 1 + static_cast<int>(workers_.size());
    const unsigned cores = std::thread::hardware_concurrency();
    if (cores != 0 && static_cast<unsigned>(n_threads_) > cores) spin_us_.store(0, std::memory_order_relaxed);
  }

  // Claims the next index of job `gen`; -1 when that job has none left (or is over).
  int claim(uint32_t gen) {
    uint64_t v = state_->ctl.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<uint32_t>(v >> 32) != gen || static_cast<uint32_t>(v) >= static_cast<uint32_t>(n_threads_)) return -1;
      if (state_->ctl.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return static_cast<int>(static_cast<uint32_t>(v));
    }
  }

  // Runs indices of job `gen` until none is left; returns how many it ran. task and arg are
  // read after a successful claim: the job cannot end (and be replaced) before it is counted.
  int run_claimed(uint32_t gen) {
    int ran = 0;
    for (int t = claim(gen); t >= 0; t = claim(gen), ++ran) state_->task(state_->arg, t, n_threads_);
    return ran;
  }

  void run_task(ParallelFor::Task task, void* arg) {
    State& s = *state_;
    s.task = task;
    s.arg = arg;
    s.done.store(0, std::memory_order_relaxed);
    const uint32_t gen = ++generation_;
    // seq_cst store, then seq_cst load of sleepers: a worker that registers as a sleeper after
    // this load sees the new generation when it re-checks under the mutex (and one that
    // registered before is woken here).
    s.ctl.store(static_cast<uint64_t>(gen) << 32, std::memory_order_seq_cst);
    if (s.sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(s.m); }
      s.work_cv.notify_all();
    }
    detail::inside_thread_pool() = true;
    const int ran = run_claimed(gen);
    detail::inside_thread_pool() = false;
    if (s.done.fetch_add(ran, std::memory_order_acq_rel) + ran == n_threads_) return;
    const auto finished = [&] { return s.done.load(std::memory_order_acquire) == n_threads_; };
    if (detail::spin_until(finished, spin_us_.load(std::memory_order_relaxed))) return;
    std::unique_lock<std::mutex> lock(s.m);
    s.done_cv.wait(lock, finished);
  }

  void worker_loop() {
    State& s = *state_;
    detail::inside_thread_pool() = true;
    uint32_t seen = 0;
    const auto news = [&] {
      return static_cast<uint32_t>(s.ctl.load(std::memory_order_seq_cst) >> 32) != seen ||
             s.stop.load(std::memory_order_seq_cst);
    };
    for (;;) {
      if (!detail::spin_until(news, spin_us_.load(std::memory_order_relaxed))) {
        std::unique_lock<std::mutex> lock(s.m);
        s.sleepers.fetch_add(1, std::memory_order_seq_cst);
        s.work_cv.wait(lock, news);
        s.sleepers.fetch_sub(1, std::memory_order_relaxed);
      }
      if (s.stop.load(std::memory_order_acquire)) return;
      seen = static_cast<uint32_t>(s.ctl.load(std::memory_order_acquire) >> 32);
      const int ran = run_claimed(seen);
      // The last index finished wakes the caller if it blocked; taking the mutex orders this
      // with its check-then-wait.
      if (ran > 0 && s.done.fetch_add(ran, std::memory_order_acq_rel) + ran == n_threads_) {
        { std::lock_guard<std::mutex> lock(s.m); }
        s.done_cv.notify_one();
      }
    }
  }

  std::unique_ptr<State> state_;
  std::vector<std::thread> workers_;
  uint32_t generation_ = 0;  // written by the caller only
#endif
  int n_threads_ = 1;
  std::atomic<int> spin_us_{50};
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_CPU_RELAX
