// conv_fusion_probe: does cuDNN's graph API fuse batch norm into the training step's bf16 3D convolutions, and at
// what cost? For each forward convolution of the DESIGN section 11 step (x, y channels-last bf16 [N, D, H, W, C]) it
// builds three operation graphs: the convolution alone; the convolution with the batch-norm statistics of its output
// (genstats: per-channel sum and sum of squares, fp32 [C]); and the same with the previous batch norm's scale, bias
// and ReLU applied to its input (a prologue). It prints, per graph, how many engine configurations cuDNN offers and
// builds, the median device time of the fastest of them, and the fused statistics' largest relative error against
// the same sums of the convolution's output computed on the host in double.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/cuda/cudnn_backend.h"

namespace {

using dsmil::cuda::BackendDescriptor;

enum class Fusion { None, Statistics, PrologueAndStatistics };

const char* fusion_name(Fusion f) {
  switch (f) {
    case Fusion::None:
      return "conv";
    case Fusion::Statistics:
      return "conv+stats";
    case Fusion::PrologueAndStatistics:
      return "bn-relu+conv+stats";
  }
  return "?";
}

// One forward convolution of the step: input [n, d, h, w, c], k filters of [t, r, s], stride and padding.
struct Problem {
  std::string name;
  int64_t n, d, h, w, c, k, t, r, s;
  std::array<int64_t, 3> stride, pad;
  int64_t out(int axis, int64_t size, int64_t kernel) const {
    return (size + 2 * pad[axis] - kernel) / stride[axis] + 1;
  }
  int64_t od() const { return out(0, d, t); }
  int64_t oh() const { return out(1, h, r); }
  int64_t ow() const { return out(2, w, s); }
};

// Unique ids of the graph's tensors in the variant pack.
enum Uid : int64_t { kX = 1, kW, kY, kSum, kSqSum, kScale, kBias, kScaled, kShifted, kActivated };

// The probe's tensors declare 16-byte alignment, as dsmil's convolution plans do at most.
constexpr int64_t kAlignment = 16;

// The graph and every descriptor it was built from (cuDNN keeps pointers to them).
struct Graph {
  std::vector<BackendDescriptor> parts;
  std::optional<BackendDescriptor> graph;
};

BackendDescriptor pointwise_op(cudnnPointwiseMode_t mode, const BackendDescriptor& x, const BackendDescriptor* b,
                               const BackendDescriptor& y, std::vector<BackendDescriptor>& parts,
                               const std::string& context) {
  BackendDescriptor pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, context);
  const cudnnDataType_t precision = CUDNN_DATA_FLOAT;
  pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  pw.set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
  pw.finalize();
  BackendDescriptor op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, context);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
  if (b != nullptr) op.set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
  op.finalize();
  parts.push_back(std::move(pw));
  return op;
}

Graph build_graph(const Problem& p, Fusion fusion) {
  const std::string context = fmt::format("{} {}", p.name, fusion_name(fusion));
  const auto tensor = [&](int64_t uid, const std::vector<int64_t>& ndhwc, cudnnDataType_t type, bool is_virtual) {
    return dsmil::cuda::channels_last_tensor(uid, ndhwc, type, kAlignment, context, is_virtual);
  };
  Graph g;
  auto& parts = g.parts;
  parts.reserve(32);
  const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  const std::vector<int64_t> x_shape{p.n, p.d, p.h, p.w, p.c}, channel_in{1, 1, 1, 1, p.c};
  const std::vector<int64_t> y_shape{p.n, p.od(), p.oh(), p.ow(), p.k}, channel_out{1, 1, 1, 1, p.k};
  parts.push_back(tensor(kX, x_shape, bf16, false));
  parts.push_back(tensor(kW, {p.k, p.t, p.r, p.s, p.c}, bf16, false));
  parts.push_back(tensor(kY, y_shape, bf16, false));
  const size_t x = 0, w = 1, y = 2;
  std::vector<size_t> ops;

  size_t conv_input = x;
  if (fusion == Fusion::PrologueAndStatistics) {
    parts.push_back(tensor(kScale, channel_in, f32, false));
    parts.push_back(tensor(kBias, channel_in, f32, false));
    parts.push_back(tensor(kScaled, x_shape, f32, true));
    parts.push_back(tensor(kShifted, x_shape, f32, true));
    parts.push_back(tensor(kActivated, x_shape, bf16, true));
    const size_t scale = parts.size() - 5, bias = scale + 1, scaled = scale + 2, shifted = scale + 3,
                 activated = scale + 4;
    BackendDescriptor mul = pointwise_op(CUDNN_POINTWISE_MUL, parts[x], &parts[scale], parts[scaled], parts, context);
    parts.push_back(std::move(mul));
    ops.push_back(parts.size() - 1);
    BackendDescriptor add =
        pointwise_op(CUDNN_POINTWISE_ADD, parts[scaled], &parts[bias], parts[shifted], parts, context);
    parts.push_back(std::move(add));
    ops.push_back(parts.size() - 1);
    BackendDescriptor relu =
        pointwise_op(CUDNN_POINTWISE_RELU_FWD, parts[shifted], nullptr, parts[activated], parts, context);
    parts.push_back(std::move(relu));
    ops.push_back(parts.size() - 1);
    conv_input = activated;
  }

  parts.push_back(dsmil::cuda::convolution_3d(p.stride, p.pad, context));
  const size_t conv_desc = parts.size() - 1;
  BackendDescriptor conv_op(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, context);
  const float alpha = 1.0f, beta = 0.0f;
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, parts[conv_input]);
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, parts[w]);
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, parts[y]);
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, parts[conv_desc]);
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
  conv_op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
  conv_op.finalize();
  parts.push_back(std::move(conv_op));
  ops.push_back(parts.size() - 1);

  if (fusion != Fusion::None) {
    parts.push_back(tensor(kSum, channel_out, f32, false));
    parts.push_back(tensor(kSqSum, channel_out, f32, false));
    const size_t sum = parts.size() - 2, sqsum = sum + 1;
    BackendDescriptor stats(CUDNN_BACKEND_OPERATION_GEN_STATS_DESCRIPTOR, context);
    const cudnnGenStatsMode_t stats_mode = CUDNN_GENSTATS_SUM_SQSUM;
    stats.set(CUDNN_ATTR_OPERATION_GENSTATS_MODE, CUDNN_TYPE_GENSTATS_MODE, 1, &stats_mode);
    stats.set(CUDNN_ATTR_OPERATION_GENSTATS_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    stats.set(CUDNN_ATTR_OPERATION_GENSTATS_XDESC, parts[y]);
    stats.set(CUDNN_ATTR_OPERATION_GENSTATS_SUMDESC, parts[sum]);
    stats.set(CUDNN_ATTR_OPERATION_GENSTATS_SQSUMDESC, parts[sqsum]);
    stats.finalize();
    parts.push_back(std::move(stats));
    ops.push_back(parts.size() - 1);
  }

  std::vector<cudnnBackendDescriptor_t> raw_ops;
  for (const size_t i : ops) raw_ops.push_back(parts[i].get());
  BackendDescriptor graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, context);
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw_ops.size()),
            raw_ops.data());
  cudnnHandle_t handle = dsmil::cuda::cudnn_handle();
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  if (graph.try_finalize() != CUDNN_STATUS_SUCCESS) return g;  // cuDNN does not take this graph at all
  g.graph.emplace(std::move(graph));
  return g;
}

// Device buffers of one problem, filled from a normal distribution (never zeros).
struct Buffers {
  std::vector<void*> owned;
  void *x, *w, *y, *sum, *sqsum, *scale, *bias;
  ~Buffers() {
    for (void* p : owned) cudaFree(p);
  }
};

void* device_copy(const void* host, size_t bytes, std::vector<void*>& owned) {
  void* p = nullptr;
  DSMIL_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "conv_fusion_probe: cudaMalloc");
  owned.push_back(p);
  if (host != nullptr) DSMIL_CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "conv_fusion_probe: copy");
  return p;
}

void* bf16_buffer(size_t count, std::mt19937& rng, float sigma, std::vector<void*>& owned) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<__nv_bfloat16> values(count);
  for (__nv_bfloat16& v : values) v = __float2bfloat16_rn(normal(rng));
  return device_copy(values.data(), count * sizeof(__nv_bfloat16), owned);
}

Buffers make_buffers(const Problem& p, std::mt19937& rng) {
  Buffers b;
  const size_t x_count = static_cast<size_t>(p.n * p.d * p.h * p.w * p.c);
  const size_t w_count = static_cast<size_t>(p.k * p.t * p.r * p.s * p.c);
  const size_t y_count = static_cast<size_t>(p.n * p.od() * p.oh() * p.ow() * p.k);
  b.x = bf16_buffer(x_count, rng, 1.0f, b.owned);
  b.w = bf16_buffer(w_count, rng, 1.0f / std::sqrt(static_cast<float>(p.t * p.r * p.s * p.c)), b.owned);
  b.y = device_copy(nullptr, y_count * sizeof(__nv_bfloat16), b.owned);
  b.sum = device_copy(nullptr, p.k * sizeof(float), b.owned);
  b.sqsum = device_copy(nullptr, p.k * sizeof(float), b.owned);
  std::uniform_real_distribution<float> scale_draw(0.5f, 1.5f), bias_draw(-0.2f, 0.2f);
  std::vector<float> scale(p.c), bias(p.c);
  for (int64_t c = 0; c < p.c; ++c) {
    scale[c] = scale_draw(rng);
    bias[c] = bias_draw(rng);
  }
  b.scale = device_copy(scale.data(), p.c * sizeof(float), b.owned);
  b.bias = device_copy(bias.data(), p.c * sizeof(float), b.owned);
  return b;
}

BackendDescriptor variant_pack(const Buffers& b, Fusion fusion, void* workspace, const std::string& context) {
  std::vector<int64_t> uids{kX, kW, kY};
  std::vector<void*> pointers{b.x, b.w, b.y};
  if (fusion != Fusion::None) {
    uids.insert(uids.end(), {kSum, kSqSum});
    pointers.insert(pointers.end(), {b.sum, b.sqsum});
  }
  if (fusion == Fusion::PrologueAndStatistics) {
    uids.insert(uids.end(), {kScale, kBias});
    pointers.insert(pointers.end(), {b.scale, b.bias});
  }
  BackendDescriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, context);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(pointers.size()),
           pointers.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  return pack;
}

void execute(const BackendDescriptor& plan, const BackendDescriptor& pack, const std::string& context) {
  DSMIL_CUDNN_CHECK(cudnnBackendExecute(dsmil::cuda::cudnn_handle(), plan.get(), pack.get()), context);
}

// Device milliseconds of one run: the median over `rounds` of `batch` runs queued back to back (so that the host's
// time to queue one never shows), after `batch` untimed runs.
template <typename Run>
float median_ms(Run&& run, const std::string& context, int batch = 10, int rounds = 7) {
  for (int i = 0; i < batch; ++i) run();
  cudaEvent_t start = nullptr, stop = nullptr;
  DSMIL_CUDA_CHECK(cudaEventCreate(&start), context);
  DSMIL_CUDA_CHECK(cudaEventCreate(&stop), context);
  std::vector<float> times;
  for (int round = 0; round < rounds; ++round) {
    DSMIL_CUDA_CHECK(cudaEventRecord(start, dsmil::cuda::stream()), context);
    for (int i = 0; i < batch; ++i) run();
    DSMIL_CUDA_CHECK(cudaEventRecord(stop, dsmil::cuda::stream()), context);
    DSMIL_CUDA_CHECK(cudaEventSynchronize(stop), context);
    float ms = 0.0f;
    DSMIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop), context);
    times.push_back(ms / static_cast<float>(batch));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(times.begin(), times.begin() + rounds / 2, times.end());
  return times[rounds / 2];
}

// The largest error of the fused per-channel sums, relative to the largest |sum| and |sum of squares|, against the
// same sums of the convolution's own output (copied back) in double.
double statistics_error(const Problem& p, const Buffers& b) {
  const size_t y_count = static_cast<size_t>(p.n * p.od() * p.oh() * p.ow() * p.k);
  std::vector<__nv_bfloat16> y(y_count);
  std::vector<float> sum(p.k), sqsum(p.k);
  DSMIL_CUDA_CHECK(cudaMemcpy(y.data(), b.y, y_count * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost), "read y");
  DSMIL_CUDA_CHECK(cudaMemcpy(sum.data(), b.sum, p.k * sizeof(float), cudaMemcpyDeviceToHost), "read sum");
  DSMIL_CUDA_CHECK(cudaMemcpy(sqsum.data(), b.sqsum, p.k * sizeof(float), cudaMemcpyDeviceToHost), "read sqsum");
  for (int64_t c = 0; c < p.k; ++c)
    if (!std::isfinite(sum[c]) || !std::isfinite(sqsum[c])) return std::numeric_limits<double>::infinity();
  std::vector<double> want_sum(p.k, 0.0), want_sqsum(p.k, 0.0);
  for (size_t i = 0; i < y_count; ++i) {
    const double v = __bfloat162float(y[i]);
    want_sum[i % p.k] += v;
    want_sqsum[i % p.k] += v * v;
  }
  double sum_scale = 0.0, sqsum_scale = 0.0, sum_err = 0.0, sqsum_err = 0.0;
  for (int64_t c = 0; c < p.k; ++c) {
    sum_scale = std::max(sum_scale, std::abs(want_sum[c]));
    sqsum_scale = std::max(sqsum_scale, std::abs(want_sqsum[c]));
    sum_err = std::max(sum_err, std::abs(sum[c] - want_sum[c]));
    sqsum_err = std::max(sqsum_err, std::abs(sqsum[c] - want_sqsum[c]));
  }
  return std::max(sum_err / std::max(sum_scale, 1e-30), sqsum_err / std::max(sqsum_scale, 1e-30));
}

struct Measured {
  size_t offered = 0, tried = 0, built = 0;  // engine configurations cuDNN lists, tried to build, built and timed
  float ms = 0.0f;
  int64_t engine = -1;
  double stats_error = 0.0;
  bool sums_accumulate = false;  // the engine adds to the sums' buffers: they need zeroing before each run
};

constexpr size_t kWorkspaceLimit = size_t{256} << 20;
constexpr size_t kTriedPlans = 4;

Measured measure(const Problem& p, Fusion fusion, const Buffers& b) {
  Measured m;
  const Graph g = build_graph(p, fusion);
  if (!g.graph) return m;
  const std::string context = fmt::format("{} {}", p.name, fusion_name(fusion));
  cudnnHandle_t handle = dsmil::cuda::cudnn_handle();
  void* workspace = nullptr;
  DSMIL_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceLimit), context);
  for (const cudnnBackendHeurMode_t heuristics : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    for (BackendDescriptor& config : dsmil::cuda::heuristic_engine_configs(*g.graph, heuristics)) {
      ++m.offered;
      // Runtime-compiled engines take seconds to build a plan: only the first few offered are tried.
      if (m.tried == kTriedPlans) continue;
      ++m.tried;
      BackendDescriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, context);
      plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      plan.set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, config);
      if (plan.try_finalize() != CUDNN_STATUS_SUCCESS) continue;
      if (static_cast<size_t>(plan.get_int64(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)) > kWorkspaceLimit) continue;
      ++m.built;
      const BackendDescriptor pack = variant_pack(b, fusion, workspace, context);
      const float ms = median_ms([&] { execute(plan, pack, context); }, context);
      if (m.engine < 0 || ms < m.ms) {
        BackendDescriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, context);
        config.get_descriptor(CUDNN_ATTR_ENGINECFG_ENGINE, engine);
        m.engine = engine.get_int64(CUDNN_ATTR_ENGINE_GLOBAL_INDEX);
        m.ms = ms;
        if (fusion != Fusion::None) {
          // Sums poisoned with NaN must be written anew; where they are not, the engine adds to what is there,
          // and the check runs again on zeroed sums.
          for (const int fill : {0xff, 0x00}) {
            DSMIL_CUDA_CHECK(cudaMemset(b.sum, fill, p.k * sizeof(float)), context);
            DSMIL_CUDA_CHECK(cudaMemset(b.sqsum, fill, p.k * sizeof(float)), context);
            execute(plan, pack, context);
            DSMIL_CUDA_CHECK(cudaStreamSynchronize(dsmil::cuda::stream()), context);
            m.stats_error = statistics_error(p, b);
            m.sums_accumulate = fill == 0x00;
            if (std::isfinite(m.stats_error)) break;
          }
        }
      }
    }
  }
  cudaFree(workspace);
  return m;
}

// The forward convolutions of the DESIGN section 11 step (2 bags x 32 slabs of 4 x 128 x 128, ResNet18-3D width 64)
// whose outputs go into a batch norm; the stem as dsmil runs it, on its space-to-depth fold (its prologue row applies a
// batch norm that the step does not have there).
std::vector<Problem> design_step_problems() {
  const int64_t n = 64, d = 4;
  return {
      {"stem (space-to-depth fold)", n, d, 67, 67, 16, 64, 3, 4, 4, {1, 1, 1}, {1, 0, 0}},
      {"layer1 conv 64->64 32x32", n, d, 32, 32, 64, 64, 3, 3, 3, {1, 1, 1}, {1, 1, 1}},
      {"layer2 conv1 64->128 s2", n, d, 32, 32, 64, 128, 3, 3, 3, {1, 2, 2}, {1, 1, 1}},
      {"layer2 downsample 64->128", n, d, 32, 32, 64, 128, 1, 1, 1, {1, 2, 2}, {0, 0, 0}},
      {"layer2 conv 128->128 16x16", n, d, 16, 16, 128, 128, 3, 3, 3, {1, 1, 1}, {1, 1, 1}},
      {"layer3 conv1 128->256 s2", n, d, 16, 16, 128, 256, 3, 3, 3, {1, 2, 2}, {1, 1, 1}},
      {"layer3 conv 256->256 8x8", n, d, 8, 8, 256, 256, 3, 3, 3, {1, 1, 1}, {1, 1, 1}},
      {"layer4 conv1 256->512 s2", n, d, 8, 8, 256, 512, 3, 3, 3, {1, 2, 2}, {1, 1, 1}},
      {"layer4 conv 512->512 4x4", n, d, 4, 4, 512, 512, 3, 3, 3, {1, 1, 1}, {1, 1, 1}},
  };
}

}  // namespace

int main() {
  try {
    fmt::print("{}\n", dsmil::cuda::backend_versions());
    fmt::print("{:28s} {:20s} {:>7s} {:>9s} {:>8s} {:>6s} {:>9s}\n", "problem", "graph", "offered", "built of", "ms",
               "engine", "stats err");
    std::mt19937 rng(20261206);
    for (const Problem& p : design_step_problems()) {
      const Buffers b = make_buffers(p, rng);
      for (const Fusion f : {Fusion::None, Fusion::Statistics, Fusion::PrologueAndStatistics}) {
        const Measured m = measure(p, f, b);
        const std::string ms = m.built > 0 ? fmt::format("{:.4f}", m.ms) : "-";
        const std::string err = f != Fusion::None && m.built > 0
                                    ? fmt::format("{:.1e}{}", m.stats_error, m.sums_accumulate ? " (adds)" : "")
                                    : "";
        fmt::print("{:28s} {:20s} {:>7d} {:>9s} {:>8s} {:>6d} {:>9s}\n", p.name, fusion_name(f), m.offered,
                   fmt::format("{} of {}", m.built, m.tried), ms, m.engine, err);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "conv_fusion_probe: {}\n", e.what());
    return 1;
  }
  return 0;
}
