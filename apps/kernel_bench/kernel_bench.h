// `dsmil bench --kernel NAME|all|list`: each hand-written kernel alone, on fresh seeded random inputs at
// the model's shapes (or --shape), checked against its CPU twin (largest error and the dtype's tolerance),
// then timed with CUDA events: warm-up, `reps` repetitions, median, inputs rotated over enough copies to
// exceed twice the L2 cache (and L2 evicted before each repetition where copies alone cannot), host
// overhead hidden behind a spin kernel. Prints the launch, median time, bytes, GB/s and the share of the
// device-to-device copy bandwidth measured at the start, GFLOP/s where arithmetic is counted.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "apps/kernel_bench/model_shapes.h"
#include "apps/kernel_bench/registry.h"

namespace dsmil::kernel_bench {

struct Options {
  std::string kernel;            // a name, "all" or "list"
  std::string variant = "both";  // fast | plain | both
  std::string dtype = "all";     // f32 | bf16 | all
  std::string shape;             // empty: the model's shape of each kernel
  int reps = 100, warmup = 10;
  std::optional<uint64_t> seed;  // empty: a fresh one (printed)
  std::string json_out;          // also write the table as JSON
  ModelDims model;
};

// Runs the command and returns the number of selections whose check failed (0: all passed). Throws
// dsmil::Error for an unknown kernel, variant, dtype or shape, and where there is no CUDA backend or device.
int run_kernel_bench(const Options& options);

// The `--kernel list` text: every entry with its variants, dtypes, shape meaning and model shape.
std::string list_text(const ModelShapes& model);

// The shape a selection runs at: --shape parsed for the entry, or the entry's model shape.
Shape shape_for(const KernelBench& bench, const std::string& shape_text, const ModelShapes& model);

// The entry's reference outputs (its CPU twin) on copies of the problem's inputs.
std::vector<Tensor> run_reference(const KernelBench& bench, const Problem& problem, const Shape& shape);

struct CheckOutcome {
  std::vector<Comparison> comparisons;
  bool pass = false;
  // The comparison that came closest to its tolerance (or a failed exact one): what the table prints.
  const Comparison& worst() const;
};

// Each output against its reference, in order; the counts must agree.
CheckOutcome compare_outputs(const std::vector<Tensor>& got, const std::vector<Tensor>& reference);

#ifdef DSMIL_WITH_CUDA
// Draws the problem with `seed`, runs the selection on the device (fresh outputs poisoned with NaN) and the
// reference on the CPU, and compares.
CheckOutcome check_selection(const Selection& selection, const Shape& shape, uint64_t seed);
#endif

}  // namespace dsmil::kernel_bench
