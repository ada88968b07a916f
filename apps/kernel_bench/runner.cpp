// The kernel bench's driver: selection and shapes, the check of each selection against the CPU twin,
// the device-to-device copy bandwidth, event timing over rotated input copies, and the table (and JSON).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <random>

#include "apps/kernel_bench/kernel_bench.h"
#ifdef DSMIL_WITH_CUDA
#include <cuda_runtime.h>

#include "apps/kernel_bench/device_helpers.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"
#include "tensor/device.h"
#endif

namespace dsmil::kernel_bench {

const Comparison& CheckOutcome::worst() const {
  const auto ratio = [](const Comparison& c) {
    if (c.exact) return c.pass ? 0.0 : INFINITY;
    return c.tolerance > 0.0 ? c.error / c.tolerance : c.error;
  };
  return *std::max_element(comparisons.begin(), comparisons.end(),
                           [&](const Comparison& a, const Comparison& b) { return ratio(a) < ratio(b); });
}

CheckOutcome compare_outputs(const std::vector<Tensor>& got, const std::vector<Tensor>& reference) {
  if (got.size() != reference.size() || got.empty())
    throw Error(fmt::format("kernel bench: {} outputs against {} reference outputs", got.size(), reference.size()));
  CheckOutcome outcome;
  outcome.pass = true;
  for (size_t i = 0; i < got.size(); ++i) {
    outcome.comparisons.push_back(compare_output("output " + std::to_string(i), got[i], reference[i]));
    outcome.pass = outcome.pass && outcome.comparisons.back().pass;
  }
  return outcome;
}

std::vector<Tensor> run_reference(const KernelBench& bench, const Problem& problem, const Shape& shape) {
  std::vector<Tensor> inputs;
  for (const Tensor& t : problem.inputs) inputs.push_back(t.clone());
  return bench.reference ? bench.reference(inputs, shape, DType::F32) : bench.run(inputs, shape, DType::F32);
}

Shape shape_for(const KernelBench& bench, const std::string& shape_text, const ModelShapes& model) {
  return shape_text.empty() ? bench.model_shape(model) : parse_shape(shape_text, bench);
}

std::string list_text(const ModelShapes& model) {
  std::string text = fmt::format("{:<29} {:<11} {:<9} {:<14} {:<22} {}\n", "kernel", "variants", "dtypes", "shape",
                                 "model shape", "bytes counted (kernels/ file)");
  for (const KernelBench& b : all_benches()) {
    std::string dtypes;
    for (DType d : b.dtypes) dtypes += (dtypes.empty() ? "" : ",") + std::string(dtype_name(d));
    text += fmt::format("{:<29} {:<11} {:<9} {:<14} {:<22} {} ({})\n", b.name, b.has_plain() ? "fast,plain" : "fast",
                        dtypes, b.shape_meaning, shape_str(b.model_shape(model)), b.bytes_meaning, b.file);
  }
  return text;
}

#ifdef DSMIL_WITH_CUDA

namespace {

// The device copies of a problem's inputs, stored inputs in `storage`.
std::vector<Tensor> upload(const Problem& problem, DType storage) {
  std::vector<Tensor> device;
  for (size_t i = 0; i < problem.inputs.size(); ++i) {
    Tensor t = problem.inputs[i].to(Device::CUDA);
    device.push_back(problem.stored[i] && storage != DType::F32 ? t.to_dtype(storage) : t);
  }
  return device;
}

std::vector<Tensor> clone_all(const std::vector<Tensor>& tensors) {
  std::vector<Tensor> copies;
  for (const Tensor& t : tensors) copies.push_back(t.clone());
  return copies;
}

const OpRun& op_of(const Selection& s) { return s.variant == Variant::Fast ? s.bench->run : s.bench->plain; }

CheckOutcome check_on_device(const Selection& s, const Problem& problem, const std::vector<Tensor>& device_inputs,
                             const Shape& shape) {
  const std::vector<Tensor> reference = run_reference(*s.bench, problem, shape);
  std::vector<Tensor> inputs = clone_all(device_inputs);
  std::vector<Tensor> got;
  {
    // Every output the op allocates starts as NaN: an element it never writes fails the comparison.
    struct PoisonScope {
      PoisonScope() { cuda::set_allocation_poison(0xFF); }
      ~PoisonScope() { cuda::set_allocation_poison(std::nullopt); }
    } poison;
    got = op_of(s)(inputs, shape, s.dtype);
    cuda::synchronize();
  }
  return compare_outputs(got, reference);
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Per-repetition times (microseconds) of `call`, each between two events on the library stream.
struct Timing {
  double median_us = 0.0, best_us = 0.0;
};

// Holds what every timing needs: a buffer twice the L2 size to evict it with, and its sink.
class Timer {
 public:
  Timer()
      : l2_bytes_(cuda::device_properties().l2CacheSize),
        evict_bytes_(std::max<int64_t>(2 * l2_bytes_, 16 << 20)),
        evict_buffer_(static_cast<size_t>(evict_bytes_)),
        sink_(sizeof(int)) {
    DSMIL_CUDA_CHECK(cudaMemsetAsync(evict_buffer_.data(), 1, evict_buffer_.bytes(), cuda::stream()),
                     "kernel bench L2 eviction buffer");
  }
  int64_t l2_bytes() const { return l2_bytes_; }

  template <typename Call>
  Timing time(Call&& call, int sets, bool evict, int reps, int warmup) {
    const cudaStream_t stream = cuda::stream();
    // Warm-up, and the host's time to queue one call (the median, past the first call's one-time set-up):
    // the spin before each timed call covers three times it, so that the GPU never waits for the host
    // between the events.
    std::vector<double> host_ns;
    for (int r = 0; r < std::max(warmup, 2); ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      call(r % sets);
      if (r > 0)
        host_ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    }
    cuda::synchronize();
    const int64_t spin_ns = std::clamp<int64_t>(static_cast<int64_t>(3.0 * median_of(host_ns)) + 20000, 20000, 2000000);
    device::DeviceClock clock(Device::CUDA, 2 * static_cast<size_t>(reps));
    for (int r = 0; r < reps; ++r) {
      if (evict) DSMIL_CUDA_CHECK(evict_l2(evict_buffer_.data(), evict_bytes_, sink_.as<int>(), stream), "evict_l2");
      DSMIL_CUDA_CHECK(spin(spin_ns, stream), "spin");
      clock.mark(2 * r);
      call(r % sets);
      clock.mark(2 * r + 1);
    }
    cuda::synchronize();
    std::vector<double> us(reps);
    for (int r = 0; r < reps; ++r) us[r] = 1e6 * clock.seconds(2 * r, 2 * r + 1);
    return {median_of(us), *std::min_element(us.begin(), us.end())};
  }

 private:
  int64_t l2_bytes_, evict_bytes_;
  cuda::DeviceBuffer evict_buffer_, sink_;
};

// Device-to-device cudaMemcpy of a buffer well beyond L2, counting its read and its write: the bandwidth
// the kernels' shares are of.
double copy_bandwidth_gbps(Timer& timer, int reps) {
  const int64_t bytes = std::max<int64_t>(256 << 20, 8 * timer.l2_bytes());
  cuda::DeviceBuffer src(bytes), dst(bytes);
  DSMIL_CUDA_CHECK(cudaMemsetAsync(src.data(), 1, bytes, cuda::stream()), "copy bandwidth");
  const Timing t = timer.time(
      [&](int) {
        DSMIL_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, cuda::stream()),
                         "copy bandwidth");
      },
      1, false, reps, 3);
  std::printf("device-to-device copy: %.0f GB/s (read + write of %lld MiB, median of %d copies)\n",
              2.0 * bytes / (t.median_us * 1e3), static_cast<long long>(bytes >> 20), reps);
  return 2.0 * bytes / (t.median_us * 1e3);
}

struct Row {
  std::string kernel, variant, dtype, shape, launch, bound, check_text;
  bool pass = false;
  double error = 0.0, tolerance = 0.0;
  double median_us = 0.0, best_us = 0.0, gbps = 0.0, copy_share = 0.0, gflops = 0.0;
  int64_t bytes = 0;
  int sets = 0;
  bool evicted = false;
};

std::string check_text(const CheckOutcome& c) {
  const Comparison& w = c.worst();
  if (w.exact) return w.pass ? "exact" : fmt::format("{:.0f} differ", w.error);
  return fmt::format("{:.1e}/{:.1e}", w.error, w.tolerance);
}

// A kernel whose ideal time at copy bandwidth is below this is limited by launch latency, not by its bound.
constexpr double kLaunchBoundUs = 5.0;

Row bench_one(const Selection& s, const Options& o, const ModelShapes& model, uint64_t seed, double copy_gbps,
              Timer& timer) {
  const KernelBench& b = *s.bench;
  const Shape shape = shape_for(b, o.shape, model);
  Row row;
  row.kernel = b.name;
  row.variant = variant_name(s.variant);
  row.dtype = dtype_name(s.dtype);
  row.shape = shape_str(shape);
  const auto& launch = s.variant == Variant::Fast ? b.launch_fast : b.launch_plain;
  row.launch = launch ? launch(shape, s.dtype) : "-";
  row.bytes = b.bytes(shape, s.dtype);

  const Problem problem = b.draw(shape, s.dtype, seed);
  std::vector<std::vector<Tensor>> sets{upload(problem, s.dtype)};
  const CheckOutcome check = check_on_device(s, problem, sets[0], shape);
  row.pass = check.pass;
  row.check_text = check_text(check);
  row.error = check.worst().error;
  row.tolerance = check.worst().tolerance;

  // Copies of the inputs until they exceed twice the L2 size (at most 64); below that, L2 is evicted too.
  const int64_t set_bytes = std::max<int64_t>(problem.device_bytes(s.dtype), 1);
  row.sets = static_cast<int>(std::clamp<int64_t>((2 * timer.l2_bytes() + set_bytes - 1) / set_bytes, 2, 64));
  row.evicted = row.sets * set_bytes < 2 * timer.l2_bytes();
  while (static_cast<int>(sets.size()) < row.sets) sets.push_back(clone_all(sets[0]));

  const TimedRun& timed = s.variant == Variant::Fast ? b.timed_fast : b.timed_plain;
  const OpRun& op = op_of(s);
  const Timing t = timer.time(
      [&](int set) {
        if (timed)
          timed(sets[set], shape, s.dtype);
        else
          op(sets[set], shape, s.dtype);
      },
      row.sets, row.evicted, o.reps, o.warmup);
  row.median_us = t.median_us;
  row.best_us = t.best_us;
  row.gbps = row.bytes / (t.median_us * 1e3);
  row.copy_share = row.gbps / copy_gbps;
  if (b.flops) row.gflops = b.flops(shape) / (t.median_us * 1e3);
  const double ideal_us = row.bytes / (copy_gbps * 1e3);
  row.bound = ideal_us < kLaunchBoundUs ? "launch" : b.nature == Nature::Memory ? "memory" : "arith";
  return row;
}

void print_header() {
  std::printf("%-29s %-5s %-4s %-19s %-17s %10s %12s %8s %6s %8s %-6s %s\n", "kernel", "var", "type", "shape",
              "max err/tol", "median us", "bytes", "GB/s", "%copy", "GFLOP/s", "bound", "launch (grid x block)");
}

void print_row(const Row& r) {
  const std::string gflops = r.gflops > 0.0 ? fmt::format("{:.1f}", r.gflops) : "-";
  std::printf("%-29s %-5s %-4s %-19s %-17s %10.2f %12lld %8.1f %5.1f%% %8s %-6s %s%s\n", r.kernel.c_str(),
              r.variant.c_str(), r.dtype.c_str(), r.shape.c_str(), (r.check_text + (r.pass ? "" : " FAIL")).c_str(),
              r.median_us, static_cast<long long>(r.bytes), r.gbps, 100.0 * r.copy_share, gflops.c_str(),
              r.bound.c_str(), r.launch.c_str(), r.evicted ? " [L2 evicted]" : "");
  std::fflush(stdout);
}

void write_json(const std::string& path, const std::vector<Row>& rows, double copy_gbps, uint64_t seed,
                const Options& o) {
  nlohmann::json j = {{"device", cuda::backend_versions()},
                      {"copy_gbps", copy_gbps},
                      {"seed", seed},
                      {"reps", o.reps},
                      {"rows", nlohmann::json::array()}};
  for (const Row& r : rows)
    j["rows"].push_back({{"kernel", r.kernel},
                         {"variant", r.variant},
                         {"dtype", r.dtype},
                         {"shape", r.shape},
                         {"launch", r.launch},
                         {"pass", r.pass},
                         {"max_error", r.error},
                         {"tolerance", r.tolerance},
                         {"median_us", r.median_us},
                         {"best_us", r.best_us},
                         {"bytes", r.bytes},
                         {"gbps", r.gbps},
                         {"copy_share", r.copy_share},
                         {"gflops", r.gflops},
                         {"bound", r.bound},
                         {"input_copies", r.sets},
                         {"l2_evicted", r.evicted}});
  std::ofstream(path) << j.dump(1) << "\n";
}

}  // namespace

CheckOutcome check_selection(const Selection& selection, const Shape& shape, uint64_t seed) {
  const Problem problem = selection.bench->draw(shape, selection.dtype, seed);
  return check_on_device(selection, problem, upload(problem, selection.dtype), shape);
}

#endif  // DSMIL_WITH_CUDA

int run_kernel_bench(const Options& o) {
  const ModelShapes model = model_shapes(o.model);
  if (o.kernel == "list") {
    std::printf("%s", list_text(model).c_str());
    return 0;
  }
  const std::vector<Selection> selections = select_benches(o.kernel, o.variant, o.dtype);
  if (!o.shape.empty() && o.kernel == "all")
    throw Error("dsmil bench: --shape needs one --kernel NAME (each kernel's shape means something else)");
  if (!o.shape.empty()) parse_shape(o.shape, *selections.front().bench);
  if (o.reps < 1 || o.warmup < 0) throw Error("dsmil bench: --reps must be >= 1 and --warmup >= 0");
#ifdef DSMIL_WITH_CUDA
  if (!cuda::device_available())
    throw DeviceError("dsmil bench --kernel: no CUDA device is visible; the kernel benchmarks run on the GPU");
  const uint64_t seed = o.seed ? *o.seed : std::random_device{}();
  std::printf("device: %s\n", cuda::backend_versions().c_str());
  std::printf("seed %llu (rerun with --seed %llu); %d timed repetitions after %d warm-up, median\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), o.reps, o.warmup);
  Timer timer;
  const double copy_gbps = copy_bandwidth_gbps(timer, 20);
  std::printf("L2 %lld MiB: inputs rotate over copies exceeding %lld MiB, or L2 is evicted before each repetition\n",
              static_cast<long long>(timer.l2_bytes() >> 20), static_cast<long long>(timer.l2_bytes() >> 19));
  print_header();
  std::vector<Row> rows;
  int failed = 0;
  for (const Selection& s : selections) {
    rows.push_back(bench_one(s, o, model, seed, copy_gbps, timer));
    print_row(rows.back());
    failed += !rows.back().pass;
  }
  std::printf("%zu checks, %d failed\n", rows.size(), failed);
  if (!o.json_out.empty()) write_json(o.json_out, rows, copy_gbps, seed, o);
  return failed;
#else
  throw Error(
      "dsmil bench --kernel: this dsmil was built without the CUDA backend (DSMIL_CUDA=OFF or no CUDA toolkit); "
      "the kernel benchmarks need it (--kernel list works everywhere)");
#endif
}

}  // namespace dsmil::kernel_bench
