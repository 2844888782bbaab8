// tinyslm threads: a small persistent thread pool. The caller's thread takes part as index 0,
// so a pool of n threads starts n - 1 workers; a pool of 1 starts none and runs work inline.
// Workers spin briefly after each job (decode issues many short jobs back to back), then
// sleep on an atomic wait so an idle pool costs no CPU.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#if !defined(TINYSLM_NO_THREADS)
#include <thread>
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
  const auto deadline = clock::now() + std::chrono::microseconds(spin_us);
  for (uint32_t i = 0;; ++i) {
    if (pred()) return true;
    TINYSLM_CPU_RELAX();
    if ((i & 63) == 63 && clock::now() >= deadline) return pred();
  }
}
}  // namespace detail

class ThreadPool {
 public:
  // n_threads < 1 is treated as 1. With TINYSLM_NO_THREADS the pool always has size 1.
  explicit ThreadPool(int n_threads) {
#if defined(TINYSLM_NO_THREADS)
    (void)n_threads;
    n_threads_ = 1;
#else
    n_threads_ = n_threads < 1 ? 1 : n_threads;
    if (n_threads_ > 1) {
      state_ = std::make_unique<State>();
      workers_.reserve(static_cast<size_t>(n_threads_ - 1));
      for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
    }
#endif
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
#if !defined(TINYSLM_NO_THREADS)
    if (state_) {
      state_->stop.store(true, std::memory_order_relaxed);
      state_->generation.fetch_add(1, std::memory_order_release);
      state_->generation.notify_all();
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

  // Calls f(thread_index, n_threads) once on every thread of the pool (index 0 on the
  // caller) and returns when all calls are done. Not to be called from two threads at once;
  // a call from inside a job runs all indices inline on the calling thread.
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

  // How long (microseconds) an idle worker spins before it sleeps.
  void set_spin_microseconds(int us) { spin_us_.store(us < 0 ? 0 : us, std::memory_order_relaxed); }

 private:
  struct State {
    std::atomic<uint32_t> generation{0};
    std::atomic<int> pending{0};
    std::atomic<bool> stop{false};
    ParallelFor::Task task = nullptr;
    void* arg = nullptr;
  };

  static void dispatch(void* ctx, ParallelFor::Task task, void* arg) {
    auto* pool = static_cast<ThreadPool*>(ctx);
    if (pool->n_threads_ <= 1 || detail::inside_thread_pool()) {
      for (int t = 0; t < pool->n_threads_; ++t) task(arg, t, pool->n_threads_);
      return;
    }
    pool->run_task(task, arg);
  }

  void run_task(ParallelFor::Task task, void* arg) {
#if defined(TINYSLM_NO_THREADS)
    task(arg, 0, 1);
#else
    State& s = *state_;
    s.task = task;
    s.arg = arg;
    s.pending.store(n_threads_ - 1, std::memory_order_relaxed);
    s.generation.fetch_add(1, std::memory_order_release);  // publishes task and arg
    s.generation.notify_all();
    detail::inside_thread_pool() = true;
    task(arg, 0, n_threads_);
    detail::inside_thread_pool() = false;
    // Wait for the workers: spin first (jobs are short), then sleep on the counter.
    if (!detail::spin_until([&] { return s.pending.load(std::memory_order_acquire) == 0; }, spin_us_.load(std::memory_order_relaxed))) {
      for (int p = s.pending.load(std::memory_order_acquire); p != 0;
           p = s.pending.load(std::memory_order_acquire))
        s.pending.wait(p, std::memory_order_acquire);
    }
#endif
  }

#if !defined(TINYSLM_NO_THREADS)
  void worker_loop(int index) {
    State& s = *state_;
    detail::inside_thread_pool() = true;
    uint32_t seen = 0;
    for (;;) {
      if (!detail::spin_until([&] { return s.generation.load(std::memory_order_acquire) != seen; },
                              spin_us_.load(std::memory_order_relaxed))) {
        s.generation.wait(seen, std::memory_order_acquire);
        continue;  // re-check (wait may return spuriously)
      }
      seen = s.generation.load(std::memory_order_acquire);
      if (s.stop.load(std::memory_order_relaxed)) return;
      s.task(s.arg, index, n_threads_);
      if (s.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) s.pending.notify_one();
    }
  }
  std::unique_ptr<State> state_;
  std::vector<std::thread> workers_;
#endif
  int n_threads_ = 1;
  std::atomic<int> spin_us_{50};
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_CPU_RELAX
