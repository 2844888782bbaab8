// Threads layer: the persistent pool runs every index exactly once per job, is reusable for
// many jobs, runs inline at size 1, and drives ParallelFor (the kernels' handle).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <set>
#include <system_error>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <sched.h>
#endif

#include "test_support.hpp"
#include "tinyslm/threads.hpp"

using namespace tinyslm;

TEST_CASE("every thread index runs exactly once per job") {
  for (int n : {1, 2, 3, 4, 7}) {
    ThreadPool pool(n);
    CHECK(pool.size() == n);
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    std::atomic<int> bad_count{0};
    pool.run([&](int t, int nt) {
      if (nt != n || t < 0 || t >= n) bad_count.fetch_add(1);
      else hits[static_cast<size_t>(t)].fetch_add(1);
    });
    CHECK(bad_count.load() == 0);
    for (auto& h : hits) CHECK(h.load() == 1);
  }
}

TEST_CASE("a pool is reusable across many short jobs") {
  ThreadPool pool(3);
  std::vector<int64_t> sums(3, 0);
  const int jobs = 2000;
  for (int j = 0; j < jobs; ++j)
    pool.run([&](int t, int) { sums[static_cast<size_t>(t)] += j; });  // each index owns its slot
  const int64_t want = int64_t(jobs) * (jobs - 1) / 2;
  for (int64_t s : sums) CHECK(s == want);
}

TEST_CASE("size 1 (and sizes below 1) run inline on the caller") {
  for (int n : {1, 0, -3}) {
    ThreadPool pool(n);
    CHECK(pool.size() == 1);
    const auto caller = std::this_thread::get_id();
    int calls = 0;
    bool same_thread = true;
    pool.run([&](int t, int nt) {
      ++calls;
      same_thread = same_thread && std::this_thread::get_id() == caller && t == 0 && nt == 1;
    });
    CHECK(calls == 1);
    CHECK(same_thread);
  }
}

TEST_CASE("the caller runs indices, workers run the others") {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  int by_caller = 0, by_worker = 0;
  for (int j = 0; j < 2000; ++j) {
    std::thread::id ids[2];
    pool.run([&](int t, int) {
      ids[t] = std::this_thread::get_id();
      volatile int x = 0;  // long enough for an awake worker to claim the other index
      for (int k = 0; k < 5000; ++k) x = x + k;
    });
    for (const auto& id : ids) (id == caller ? by_caller : by_worker) += 1;
  }
  CHECK(by_caller > 0);
#if !defined(TINYSLM_NO_THREADS)
  CHECK(by_worker > 0);
#endif
}

TEST_CASE("ParallelFor from the pool splits work with every item covered once") {
  for (int n : {1, 2, 3}) {
    ThreadPool pool(n);
    ParallelFor par = pool.parallel();
    CHECK(par.n_threads == n);
    const int64_t count = 1000;
    std::vector<int> seen(count, 0);
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(count, t, nt, 16, &b, &e);
      for (int64_t i = b; i < e; ++i) ++seen[static_cast<size_t>(i)];
    });
    for (int v : seen) CHECK(v == 1);
  }
  // A default ParallelFor (no pool) runs inline as one thread.
  ParallelFor none;
  int calls = 0;
  none([&](int t, int nt) { calls += (t == 0 && nt == 1); });
  CHECK(calls == 1);
}

TEST_CASE("a nested run from inside a job executes inline instead of deadlocking") {
  ThreadPool pool(2);
  std::atomic<int> inner{0};
  pool.run([&](int, int) { pool.run([&](int, int) { inner.fetch_add(1); }); });
  CHECK(inner.load() == 4);  // each of the 2 outer indices ran all 2 inner indices
}

TEST_CASE("pools can be created and destroyed repeatedly, idle or not") {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 2) {
      std::atomic<int> c{0};
      pool.run([&](int, int) { c.fetch_add(1); });
      CHECK(c.load() == pool.size());
    }
  }
  ThreadPool quiet(3);
  quiet.set_spin_microseconds(0);  // workers go straight to sleep between jobs
  std::atomic<int> c{0};
  for (int j = 0; j < 200; ++j) quiet.run([&](int, int) { c.fetch_add(1); });
  CHECK(c.load() == 600);
}

#if !defined(TINYSLM_NO_THREADS)
namespace {

// Runs body on its own thread and fails the whole test program (instead of hanging CI) when
// it does not finish within `seconds`: a lost wakeup shows up as a timeout.
template <class F>
void bounded(double seconds, const char* what, F&& body) {
  std::mutex m;
  std::condition_variable cv;
  bool finished = false;
  std::thread runner([&] {
    body();
    std::lock_guard<std::mutex> lock(m);
    finished = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(m);
  if (!cv.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return finished; })) {
    std::fprintf(stderr, "test_threads: '%s' did not finish in %.0f s (a lost wakeup?)\n", what, seconds);
    std::fflush(stderr);
    std::_Exit(3);
  }
  lock.unlock();
  runner.join();
}

// Threads that burn every core while a test runs, so the pool's threads get descheduled.
struct Hogs {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  explicit Hogs(unsigned n) {
    for (unsigned i = 0; i < n; ++i)
      threads.emplace_back([this] {
        volatile uint64_t x = 0;
        while (!stop.load(std::memory_order_relaxed)) x = x + 1;
      });
  }
  ~Hogs() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

std::thread always_fails(std::function<void()>) {
  throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
}
std::thread returns_nothing(std::function<void()>) { return std::thread(); }

std::atomic<int> g_started{0};
std::thread fails_after_two(std::function<void()> body) {
  if (g_started.fetch_add(1) >= 2) throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
  return std::thread(std::move(body));
}

// Threads that do not start their body until the gate opens: workers that never woke up.
std::mutex g_gate_m;
std::condition_variable g_gate_cv;
bool g_gate_open = false;
std::thread gated(std::function<void()> body) {
  return std::thread([body = std::move(body)] {
    {
      std::unique_lock<std::mutex> lock(g_gate_m);
      g_gate_cv.wait(lock, [] { return g_gate_open; });
    }
    body();
  });
}

}  // namespace

TEST_CASE("many fork-joins under contention: no hang, every index once per job, the join waits for all") {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (int spin : {0, 2, 50}) {
    for (int n : {2, 3, 4, 8}) {
      CAPTURE(n);
      CAPTURE(spin);
      bounded(120, "contended fork-joins", [&] {
        Hogs hogs(cores);
        ThreadPool pool(n);
        REQUIRE(pool.size() == n);
        pool.set_spin_microseconds(spin);
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> total{0};
        std::atomic<int> wrong{0};
        const int jobs = 2000;
        for (int j = 0; j < jobs; ++j) {
          pool.run([&](int t, int nt) {
            if (nt != n) wrong.fetch_add(1);
            // Long enough that workers claim indices (and the caller waits for them); uneven.
            volatile int x = 0;
            for (int k = 0, e = t % 3 == j % 3 ? 4000 : 1000; k < e; ++k) x = x + k;
            hits[static_cast<size_t>(t)].fetch_add(1, std::memory_order_relaxed);
            total.fetch_add(1, std::memory_order_relaxed);
          });
          if (total.load() != n * (j + 1)) wrong.fetch_add(1);  // run returned before every index finished
        }
        CHECK(wrong.load() == 0);
        for (auto& h : hits) CHECK(h.load() == jobs);
      });
    }
  }
}

TEST_CASE("workers that have not started hold nothing up: the caller runs every index") {
  g_gate_open = false;
  bounded(60, "jobs with workers that never started", [&] {
    ThreadPool pool(4, {}, &gated);
    REQUIRE(pool.size() == 4);
    const auto caller = std::this_thread::get_id();
    std::atomic<int> on_caller{0}, calls{0};
    for (int j = 0; j < 500; ++j)
      pool.run([&](int, int) {
        calls.fetch_add(1);
        if (std::this_thread::get_id() == caller) on_caller.fetch_add(1);
      });
    CHECK(calls.load() == 2000);
    CHECK(on_caller.load() == 2000);
    {
      std::lock_guard<std::mutex> lock(g_gate_m);
      g_gate_open = true;
    }
    g_gate_cv.notify_all();
    std::vector<std::atomic<int>> hits(4);
    for (int j = 0; j < 500; ++j) pool.run([&](int t, int) { hits[static_cast<size_t>(t)].fetch_add(1); });
    for (auto& h : hits) CHECK(h.load() == 500);
  });
}

TEST_CASE("threads that cannot be created: the pool falls back to the ones it has, no error") {
  for (ThreadFactory f : {&always_fails, &returns_nothing}) {
    ThreadPool pool(4, {}, f);
    CHECK(pool.size() == 1);
    std::vector<int> hits(4, 0);
    pool.run([&](int t, int nt) { hits[static_cast<size_t>(t)] += nt; });
    CHECK(hits == std::vector<int>{1, 0, 0, 0});
    CHECK(pool.parallel().n_threads == 1);
  }
  g_started = 0;
  bounded(60, "a partly started pool", [&] {
    ThreadPool pool(8, {}, &fails_after_two);
    CHECK(pool.size() == 3);
    std::vector<std::atomic<int>> hits(3);
    for (int j = 0; j < 1000; ++j) pool.run([&](int t, int nt) { hits[static_cast<size_t>(t)].fetch_add(nt == 3); });
    for (auto& h : hits) CHECK(h.load() == 1000);
  });
}

TEST_CASE("placement: on_worker_start runs once on every worker, never on the caller") {
  struct Seen {
    std::mutex m;
    std::multiset<int> workers;
    std::set<std::thread::id> ids;
  } seen;
  ThreadPlacement place;
  place.user = &seen;
  place.on_worker_start = [](int worker, void* user) {
    auto* s = static_cast<Seen*>(user);
    std::lock_guard<std::mutex> lock(s->m);
    s->workers.insert(worker);
    s->ids.insert(std::this_thread::get_id());
  };
  {
    ThreadPool pool(4, place);
    pool.run([](int, int) {});
  }  // joined: every worker has started
  CHECK(seen.workers == std::multiset<int>{1, 2, 3});
  CHECK(seen.ids.size() == 3);
  CHECK(seen.ids.count(std::this_thread::get_id()) == 0);
}

#if defined(__linux__) && defined(CPU_SET)
TEST_CASE("placement: cpu_mask sets the workers' affinity on Linux") {
  cpu_set_t mine;
  REQUIRE(sched_getaffinity(0, sizeof mine, &mine) == 0);
  int cpu = 0;
  while (cpu < 64 && !CPU_ISSET(cpu, &mine)) ++cpu;
  REQUIRE(cpu < 64);
  struct Got {
    std::mutex m;
    std::vector<int> counts;  // CPUs in each worker's affinity, and whether it is `cpu`
    int cpu = 0;
  } got;
  got.cpu = cpu;
  ThreadPlacement place;
  place.cpu_mask = uint64_t{1} << cpu;
  place.user = &got;
  place.on_worker_start = [](int, void* user) {
    auto* g = static_cast<Got*>(user);
    cpu_set_t set;
    const bool ok = sched_getaffinity(0, sizeof set, &set) == 0;
    std::lock_guard<std::mutex> lock(g->m);
    g->counts.push_back(ok && CPU_COUNT(&set) == 1 && CPU_ISSET(g->cpu, &set) ? 1 : 0);
  };
  { ThreadPool pool(3, place); }
  CHECK(got.counts == std::vector<int>{1, 1});
  cpu_set_t after;
  REQUIRE(sched_getaffinity(0, sizeof after, &after) == 0);
  CHECK(CPU_EQUAL(&after, &mine));  // the caller's thread is left alone
}
#endif
#endif
