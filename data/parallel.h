// A minimal parallel loop over indices with std::thread, for the data jobs (cohort writing,
// preprocessing, statistics); dsmil_data depends on no thread pool of the tensor layer.
#pragma once

#include <cstddef>
#include <functional>

namespace dsmil::data {

// Runs body(i) for i in [0, n) on `threads` threads (the caller's included), items handed out in
// order. When a body throws, no new items start; after all threads stop, the exception of the
// lowest failing index is rethrown.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& body);

}  // namespace dsmil::data
