// What the bench_<group>.cpp files share when they build their entries: the bytes of one stored element
// and an entry holding the description every entry states (the op, run, bytes and draw are added by each).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "apps/kernel_bench/registry.h"

namespace dsmil::kernel_bench {

// Bytes of one element stored in `dtype` (the byte counts of entries that run in F32 and BF16).
inline int64_t element_bytes(DType dtype) { return static_cast<int64_t>(dtype_size(dtype)); }

// The description of an entry named `name`, its fast kernel in kernels/<file>. `shape_rank` 0: --shape
// takes any number of sizes.
inline KernelBench described_bench(std::string name, std::string file, std::string shape_meaning,
                                   std::string bytes_meaning, int shape_rank, std::vector<DType> dtypes,
                                   std::function<Shape(const ModelShapes&)> model_shape, Shape tiny_shape) {
  KernelBench b;
  b.name = std::move(name);
  b.file = std::move(file);
  b.shape_meaning = std::move(shape_meaning);
  b.bytes_meaning = std::move(bytes_meaning);
  b.shape_rank = shape_rank;
  b.dtypes = std::move(dtypes);
  b.model_shape = std::move(model_shape);
  b.tiny_shape = std::move(tiny_shape);
  return b;
}

}  // namespace dsmil::kernel_bench
