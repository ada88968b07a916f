// parallel_for: indices [0, n) handed to worker threads one at a time; first-failure rethrow.
#include "data/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dsmil::data {

void parallel_for(size_t n, int threads, const std::function<void(size_t)>& body) {
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex failure_mutex;
  std::exception_ptr failure;
  size_t failure_index = n;
  auto work = [&] {
    for (size_t i = next++; i < n && !stop; i = next++) {
      try {
        body(i);
      } catch (...) {
        std::lock_guard lock(failure_mutex);
        if (i < failure_index) {
          failure_index = i;
          failure = std::current_exception();
        }
        stop = true;
      }
    }
  };
  const auto thread_count = static_cast<size_t>(std::max(1, threads));
  std::vector<std::thread> workers;
  for (size_t t = 1; t < std::min(thread_count, n); ++t) workers.emplace_back(work);
  work();
  for (auto& w : workers) w.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace dsmil::data
