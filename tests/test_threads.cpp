// Threads layer: the persistent pool runs every index exactly once per job, is reusable for
// many jobs, runs inline at size 1, and drives ParallelFor (the kernels' handle).
#include <doctest/doctest.h>

#include <atomic>
#include <thread>
#include <vector>

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

TEST_CASE("index 0 runs on the calling thread, others on workers") {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  std::thread::id ids[2];
  pool.run([&](int t, int) { ids[t] = std::this_thread::get_id(); });
  CHECK(ids[0] == caller);
#if !defined(TINYSLM_NO_THREADS)
  CHECK(ids[1] != caller);
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
