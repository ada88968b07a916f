// The registry of `dsmil bench --kernel`: one entry per hand-written kernel (or kernel group), each
// knowing its shapes, how to draw random inputs, how to run the op, its byte count and its launch.
//
// An entry runs its op through the dispatching entry point (`ops::`, or Tensor's API for conversion and
// fill): on CPU tensors that is the CPU twin, the reference; on CUDA tensors the fast kernel. A kernel
// with no op of its own (batchnorm_statistics) calls its launcher, with the op that contains it as the
// reference. Where a plain version of the kernel exists (kernels/plain/), `plain` runs it on CUDA tensors.
//
// Adding a kernel: write `add_<group>_benches(std::vector<KernelBench>&)` in a bench_<group>.cpp of this
// folder, declare it below and call it in all_benches() (registry.cpp). tests/apps/test_kernel_bench_args
// fails until every launcher in kernels/*.h and kernels/plain/*.h is named by an entry.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "apps/kernel_bench/model_shapes.h"
#include "apps/kernel_bench/problem.h"
#include "tensor/tensor.h"

namespace dsmil::kernel_bench {

enum class Variant { Fast, Plain };
const char* variant_name(Variant v);

// What limits the kernel once its shape is large enough not to be limited by launch latency.
enum class Nature { Memory, Arithmetic };

// Runs the op on `inputs` (CPU or CUDA tensors of a problem drawn at `shape`) and returns its outputs,
// compared one by one with the reference's. `storage` is the dtype of the stored inputs (F32 on the CPU).
// May modify `inputs` (in-place ops such as adamw_step return the modified tensors as outputs).
using OpRun = std::function<std::vector<Tensor>(std::vector<Tensor>& inputs, const Shape& shape, DType storage)>;
// The same op without a host synchronisation, for timing (ops that return a host value synchronise).
using TimedRun = std::function<void(std::vector<Tensor>& inputs, const Shape& shape, DType storage)>;

struct KernelBench {
  std::string name;
  std::string file;                          // kernels/<file>: where the fast kernel lives
  std::string shape_meaning;                 // what --shape gives, e.g. "x[N,D,H,W,C]"
  std::string bytes_meaning;                 // what the byte count counts, e.g. "read x, write y"
  int shape_rank = 0;                        // values --shape takes; 0: any number (a flat tensor of that shape)
  std::vector<std::string> launchers;        // launchers of kernels/*.h this entry runs
  std::vector<std::string> plain_launchers;  // launchers of kernels/plain/*.h (empty: no plain variant)
  std::vector<DType> dtypes;                 // storage dtypes it runs in (F32, BF16)
  Nature nature = Nature::Memory;
  std::function<Shape(const ModelShapes&)> model_shape;
  Shape tiny_shape;  // for the CPU tests
  // Bytes the op must read and write at least once (its inputs and outputs), counted from the shape.
  std::function<int64_t(const Shape&, DType)> bytes;
  std::function<double(const Shape&)> flops;  // empty where arithmetic is not counted
  std::function<Problem(const Shape&, DType, uint64_t seed)> draw;
  OpRun run;
  OpRun reference;  // empty: `run` on the CPU tensors
  // CUDA builds only (empty otherwise): the plain variant, timing overrides and the launch description.
  OpRun plain;
  TimedRun timed_fast, timed_plain;  // empty: time `run` / `plain`
  std::function<std::string(const Shape&, DType)> launch_fast, launch_plain;

  bool has_plain() const { return !plain_launchers.empty(); }
};

// Every entry, in table order.
const std::vector<KernelBench>& all_benches();

// One run of the table: an entry in one variant and dtype.
struct Selection {
  const KernelBench* bench;
  Variant variant;
  DType dtype;
};

// `kernel`: a name or "all"; `variant`: fast | plain | both; `dtype`: f32 | bf16 | all. Throws dsmil::Error
// naming the valid choices for an unknown name, a variant or dtype the kernel does not have.
std::vector<Selection> select_benches(const std::string& kernel, const std::string& variant, const std::string& dtype);

// Comma- or x-separated positive sizes ("64,4,64,64,64"), checked against the entry's rank.
Shape parse_shape(const std::string& text, const KernelBench& bench);

// "masked_softmax, masked_softmax_backward, ...": for error messages and --kernel list.
std::string bench_names();

// Groups of the registry, one per bench_<group>.cpp.
void add_mil_head_benches(std::vector<KernelBench>& list);
void add_norm_pool_benches(std::vector<KernelBench>& list);
void add_batchnorm_relu_benches(std::vector<KernelBench>& list);
void add_elementwise_benches(std::vector<KernelBench>& list);
void add_reduction_benches(std::vector<KernelBench>& list);
void add_optimizer_benches(std::vector<KernelBench>& list);
void add_data_path_benches(std::vector<KernelBench>& list);
void add_convolution_benches(std::vector<KernelBench>& list);

}  // namespace dsmil::kernel_bench
