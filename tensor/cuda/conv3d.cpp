// CUDA 3-D convolution through cuDNN's graph API: forward y[N, D', H', W', K], backward data dx[N, D, H, W, C]
// and backward filter dw[K, T, R, S, C], channels-last (NDHWC activations, KTRSC filters), f32 / TF32 / bf16.
//
// Every pass runs under the MathMode its caller passes (ConvProblem::mode). Each problem (pass, shapes, dtype,
// TF32, determinism, pointer alignment) becomes a one-operation graph whose execution plan is built and chosen
// once for the process and then only executed: cuDNN 9's legacy calls rebuild that graph on every call, 60-80 us
// of host time each, which made the training step wait for the host (notes/PERF.md). The choice:
// - default: up to kMaxTimedPlans engine configurations of cuDNN's heuristics, timed on the real buffers,
//   the fastest acceptable one wins (the choice can differ between processes, so results may differ in the
//   last bits);
// - MathMode::deterministic: the first acceptable configuration of the heuristics' list (the same on every
//   run with the same device and cuDNN).
// Acceptable: it builds, its workspace is under the bound, and its numerics match the mode (see acceptable).
// Among the timed ones, the smallest workspace within kWorkspaceTimeSlack of the fastest time wins: a cuDNN
// workspace is transient memory at the moment of the pass, and the stem's fastest fp32 algorithms borrowed
// ~330 MiB each in the backward pass, where the step's memory peaks (notes/PERF.md).
// Input channel counts that leave the channel rows unaligned for tensor cores (the bf16 / RGB-like stem)
// run on zero-padded copies: see aligned_channels. A strided convolution with few input channels (the
// stem) may run as the stride-1 convolution of its space-to-depth fold: see FoldedConv. A bf16 forward with
// 16 input channels (that fold) may run on the hand-written implicit GEMM instead of cuDNN: see run_kernel.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kernels/conv16_forward.h"
#include "tensor/cuda/cudnn_backend.h"
#include "tensor/cuda/op_helpers.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/space_to_depth.h"

namespace dsmil::cuda {

namespace {

// Workspace bound for one convolution: 1 GiB, or a quarter of the free device memory if less.
constexpr size_t kWorkspaceLimit = size_t{1} << 30;
// How much slower than the fastest timed plan one with a smaller workspace may be: 3%, about the spread of
// single timings between runs.
constexpr float kWorkspaceTimeSlack = 0.03f;

enum class ConvPass { Forward, BackwardData, BackwardFilter };

const char* pass_op_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::Forward:
      return "conv3d_forward";
    case ConvPass::BackwardData:
      return "conv3d_backward_data";
    case ConvPass::BackwardFilter:
      return "conv3d_backward_filter";
  }
  return "conv3d";
}

// One convolution to run: shapes of x, w, y (whichever of them are the outputs), device pointers, the context
// string its errors carry and the math mode it runs under.
struct ConvProblem {
  ConvPass pass;
  DType dtype;
  Shape x_shape, w_shape, y_shape;
  Conv3dGeometry geometry;
  void* x;
  void* w;
  void* y;
  std::string context;
  MathMode mode;
};

cudnnDataType_t cudnn_type(DType dtype) { return dtype == DType::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }

// Device milliseconds of one run of `pass` on the library stream, after one untimed run (which may search
// cuDNN's engines).
template <typename Pass>
float timed_ms(Pass&& pass, const std::string& context) {
  pass();
  cudaEvent_t start = nullptr, stop = nullptr;
  DSMIL_CUDA_CHECK(cudaEventCreate(&start), context);
  DSMIL_CUDA_CHECK(cudaEventCreate(&stop), context);
  DSMIL_CUDA_CHECK(cudaEventRecord(start, stream()), context);
  pass();
  DSMIL_CUDA_CHECK(cudaEventRecord(stop, stream()), context);
  DSMIL_CUDA_CHECK(cudaEventSynchronize(stop), context);
  float ms = 0.0f;
  DSMIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop), context);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

constexpr int64_t kUidX = 'x', kUidW = 'w', kUidY = 'y';

// The most alignment a convolution plan's tensors declare: 16 bytes, what cuDNN's vectorised engines ask for.
constexpr uint32_t kConvAlignmentCap = 16;

// A pass's operation descriptor and the names of its attributes: x (dx), w (dw), y (dy), the convolution, alpha, beta.
struct OperationAttributes {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
};

const OperationAttributes& operation_attributes(ConvPass pass) {
  static const OperationAttributes forward{CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                                           CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
  static const OperationAttributes backward_data{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                                                 CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
  static const OperationAttributes backward_filter{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                                                   CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  switch (pass) {
    case ConvPass::Forward:
      return forward;
    case ConvPass::BackwardData:
      return backward_data;
    case ConvPass::BackwardFilter:
      return backward_filter;
  }
  return forward;
}

// The problem as a one-operation graph. `parts` keeps the descriptors the graph was built from alive with it.
struct ConvGraph {
  std::vector<BackendDescriptor> parts;
  BackendDescriptor graph;
};

ConvGraph conv_graph(const ConvProblem& p, int64_t alignment) {
  const std::string& context = p.context;
  std::vector<BackendDescriptor> parts;
  const cudnnDataType_t type = cudnn_type(p.dtype);
  parts.push_back(channels_last_tensor(kUidX, p.x_shape, type, alignment, context));
  parts.push_back(channels_last_tensor(kUidW, p.w_shape, type, alignment, context));
  parts.push_back(channels_last_tensor(kUidY, p.y_shape, type, alignment, context));
  const BackendDescriptor &x = parts[0], &w = parts[1], &y = parts[2];

  const Conv3dGeometry& g = p.geometry;
  BackendDescriptor conv =
      convolution_3d({g.stride[0], g.stride[1], g.stride[2]}, {g.pad[0], g.pad[1], g.pad[2]}, context);

  const OperationAttributes& names = operation_attributes(p.pass);
  BackendDescriptor op(names.type, context);
  const float alpha = 1.0f, beta = 0.0f;
  op.set(names.x, x);
  op.set(names.w, w);
  op.set(names.y, y);
  op.set(names.conv, conv);
  op.set(names.alpha, CUDNN_TYPE_FLOAT, 1, &alpha);
  op.set(names.beta, CUDNN_TYPE_FLOAT, 1, &beta);
  op.finalize();

  BackendDescriptor graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, context);
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, op);
  cudnnHandle_t handle = cudnn_handle();
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  graph.finalize();
  parts.push_back(std::move(conv));
  parts.push_back(std::move(op));
  return {std::move(parts), std::move(graph)};
}

// An engine configuration that cuDNN built into an execution plan for the problem.
struct Candidate {
  BackendDescriptor config;
  BackendDescriptor plan;
  int64_t engine;  // cuDNN's global engine index
  size_t workspace;
  float time_ms = 0.0f;
};

// Numerics that match the mode: never inputs converted down or reductions in reduced precision, tensor cores
// for f32 only under TF32, only deterministic engines in deterministic mode; runtime-compiled engines (whose
// plans take seconds to build on cuDNN >= 9.10) only where asked.
bool acceptable(const BackendDescriptor& engine, DType dtype, const MathMode& mode, bool runtime_compiled) {
  for (const auto note : engine.get_enums<cudnnBackendNumericalNote_t>(
           CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT)) {
    if (note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS || note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)
      return false;
    if (note == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC && mode.deterministic) return false;
    if (note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE && dtype == DType::F32 && !mode.allow_tf32) return false;
  }
  for (const auto note : engine.get_enums<cudnnBackendBehaviorNote_t>(
           CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT))
    if (note == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION && !runtime_compiled) return false;
  return true;
}

// How many plans a measured choice times: cudnnFind timed up to 8 algorithms a pass.
constexpr size_t kMaxTimedPlans = 8;

// The acceptable engine configurations that build within the workspace limit, in cuDNN's order: heuristics
// mode A's list, else its fallback list; runtime-compiled engines only when neither has another. Deterministic
// mode needs only the first.
std::vector<Candidate> buildable_candidates(const ConvProblem& p, const ConvGraph& g, size_t limit) {
  const size_t wanted = p.mode.deterministic ? 1 : kMaxTimedPlans;
  std::vector<Candidate> out;
  cudnnHandle_t handle = cudnn_handle();
  for (const bool runtime_compiled : {false, true}) {
    for (const cudnnBackendHeurMode_t heuristics : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      for (BackendDescriptor& config : heuristic_engine_configs(g.graph, heuristics)) {
        BackendDescriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, p.context);
        config.get_descriptor(CUDNN_ATTR_ENGINECFG_ENGINE, engine);
        if (!acceptable(engine, p.dtype, p.mode, runtime_compiled)) continue;
        BackendDescriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, p.context);
        plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        plan.set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, config);
        if (plan.try_finalize() != CUDNN_STATUS_SUCCESS) continue;
        const auto workspace = static_cast<size_t>(plan.get_int64(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE));
        if (workspace > limit) continue;
        const int64_t index = engine.get_int64(CUDNN_ATTR_ENGINE_GLOBAL_INDEX);
        out.push_back({std::move(config), std::move(plan), index, workspace});
        if (out.size() == wanted) return out;
      }
      if (!out.empty()) return out;
    }
  }
  return out;
}

// Runs a built plan on the problem's buffers.
void execute(const BackendDescriptor& plan, const ConvProblem& p, void* workspace) {
  BackendDescriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, p.context);
  const int64_t uids[3] = {kUidX, kUidW, kUidY};
  void* pointers[3] = {p.x, p.w, p.y};
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers);
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  DSMIL_CUDNN_CHECK(cudnnBackendExecute(cudnn_handle(), plan.get(), pack.get()), p.context);
}

// The plan run for a problem: built and chosen once, then only executed.
struct ConvPlan {
  ConvGraph graph;
  Candidate chosen;
  std::string problem;  // the pass and shapes it was chosen for (the context of its first call)
  std::string why;      // the measured time, and the fastest engine when this one is not it
  bool traded = false;  // slower than the fastest, kept for its smaller workspace
};

// The problem and the parts of its mode that change cuDNN's engine choice (and the timing of cuDNN against
// the implicit GEMM, which runs whatever that choice is).
std::string cache_key(const ConvProblem& p) {
  const Conv3dGeometry& g = p.geometry;
  return fmt::format("{}|{}|tf32={}|det={}|x{}|w{}|s{},{},{}|p{},{},{}", static_cast<int>(p.pass), dtype_name(p.dtype),
                     p.mode.allow_tf32, p.mode.deterministic, shape_str(p.x_shape), shape_str(p.w_shape), g.stride[0],
                     g.stride[1], g.stride[2], g.pad[0], g.pad[1], g.pad[2]);
}

size_t workspace_limit(const std::string& context) {
  size_t free_bytes = 0, total_bytes = 0;
  DSMIL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), context);
  return std::min(kWorkspaceLimit, free_bytes / 4);
}

// The plan chosen per problem (cache_key and alignment); conv_algorithm_choices() lists them.
struct ChosenPlans {
  std::mutex mutex;
  std::unordered_map<std::string, ConvPlan> by_key;
};
ChosenPlans& chosen_plans() {
  static ChosenPlans chosen;
  return chosen;
}

// Deterministic mode: the first candidate. Measured: each candidate timed once on the real buffers (every pass
// writes its whole output), and the one of smallest workspace among those within kWorkspaceTimeSlack of the
// fastest kept.
ConvPlan choose_plan(const ConvProblem& p, ConvGraph graph, std::vector<Candidate> candidates) {
  if (p.mode.deterministic) return {std::move(graph), std::move(candidates.front()), p.context, "", false};
  size_t largest = 0;
  for (const Candidate& c : candidates) largest = std::max(largest, c.workspace);
  DeviceBuffer workspace(largest);
  for (Candidate& c : candidates) c.time_ms = timed_ms([&] { execute(c.plan, p, workspace.data()); }, p.context);
  size_t fastest = 0;
  for (size_t i = 1; i < candidates.size(); ++i)
    if (candidates[i].time_ms < candidates[fastest].time_ms) fastest = i;
  size_t chosen = fastest;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].time_ms <= candidates[fastest].time_ms * (1.0f + kWorkspaceTimeSlack) &&
        candidates[i].workspace < candidates[chosen].workspace)
      chosen = i;
  std::string why = fmt::format("{:.3f} ms", candidates[chosen].time_ms);
  if (chosen != fastest)
    why += fmt::format("; fastest: engine {}, {:.3f} ms, {:.1f} MiB", candidates[fastest].engine,
                       candidates[fastest].time_ms, static_cast<double>(candidates[fastest].workspace) / (1 << 20));
  return {std::move(graph), std::move(candidates[chosen]), p.context, std::move(why), chosen != fastest};
}

// A reference into the cache: its entries are never removed, and an unordered_map's elements stay put.
const ConvPlan& plan_for(const ConvProblem& p) {
  ChosenPlans& chosen = chosen_plans();
  const int64_t alignment = common_alignment({p.x, p.w, p.y}, kConvAlignmentCap);
  const std::string key = fmt::format("{}|a{}", cache_key(p), alignment);
  std::lock_guard<std::mutex> lock(chosen.mutex);
  if (const auto it = chosen.by_key.find(key); it != chosen.by_key.end()) return it->second;

  const size_t limit = workspace_limit(p.context);
  ConvGraph graph = conv_graph(p, alignment);
  std::vector<Candidate> candidates = buildable_candidates(p, graph, limit);
  if (candidates.empty())
    throw DeviceError(
        fmt::format("{}: no cuDNN engine builds for this convolution (tf32={}, deterministic={}, "
                    "workspace limit {} bytes, {}-byte aligned pointers)",
                    p.context, p.mode.allow_tf32, p.mode.deterministic, limit, alignment));
  return chosen.by_key.emplace(key, choose_plan(p, std::move(graph), std::move(candidates))).first->second;
}

void run_cudnn_convolution(const ConvProblem& p) {
  const ConvPlan& plan = plan_for(p);
  DeviceBuffer workspace(plan.chosen.workspace);
  execute(plan.chosen.plan, p, workspace.data());
}

// A choice between two ways of running a problem, made once per key (the problem and the parts of its mode that
// change either way's time) by timing both on the real buffers (every pass writes its whole output, so the timing
// runs leave nothing behind); the lines say what was timed and kept (conv_measured_choices()).
class MeasuredChoices {
 public:
  MeasuredChoices(const char* first_name, const char* second_name)
      : first_name_(first_name), second_name_(second_name) {}

  // True when `second` ran faster than `first` for this problem.
  template <typename First, typename Second>
  bool second_is_faster(const ConvProblem& p, const std::string& key, First&& first, Second&& second) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = second_faster_.find(key);
    if (it == second_faster_.end()) {
      const float first_ms = timed_ms(first, p.context), second_ms = timed_ms(second, p.context);
      const bool faster = second_ms < first_ms;
      lines_.push_back(fmt::format("{}: {} {:.3f} ms, {} {:.3f} ms: {}", p.context, first_name_, first_ms, second_name_,
                                   second_ms, faster ? second_name_ : first_name_));
      it = second_faster_.emplace(key, faster).first;
    }
    return it->second;
  }

  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }

 private:
  const char* first_name_;
  const char* second_name_;
  std::mutex mutex_;
  std::unordered_map<std::string, bool> second_faster_;
  std::vector<std::string> lines_;
};

MeasuredChoices& fold_choices() {
  static MeasuredChoices choices("as it is", "folded");
  return choices;
}

MeasuredChoices& conv16_choices() {
  static MeasuredChoices choices("cuDNN", "the implicit GEMM");
  return choices;
}

// The hand-written implicit GEMM's description of `p`, when it takes it: a bf16 stride-1 forward with 16
// input channels, K a multiple of 64, 16-byte aligned x, w and y (kernels/conv16_forward.cu). Why it exists:
// for the stem's fold ([64,4,67,67,16], 3x4x4, 64 filters) cuDNN 9.19's choice is an sm80 "indexed"
// implicit GEMM at ~65 TFLOP/s on the H200 where the model's 64-channel convolutions run at ~390 (notes/PERF.md).
std::optional<kernels::Conv16Forward> conv16_problem(const ConvProblem& p) {
  const Conv3dGeometry& g = p.geometry;
  if (p.pass != ConvPass::Forward || p.dtype != DType::BF16 || p.x_shape[4] != kernels::kConv16Channels ||
      g.stride != std::array<int, 3>{1, 1, 1} || reinterpret_cast<uintptr_t>(p.x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(p.w) % 16 != 0 || reinterpret_cast<uintptr_t>(p.y) % 16 != 0)
    return std::nullopt;
  kernels::Conv16Forward k;
  k.x = {p.x_shape[0], p.x_shape[1], p.x_shape[2], p.x_shape[3], p.x_shape[4]};
  k.k = p.w_shape[0];
  for (int axis = 0; axis < 3; ++axis) {
    k.taps[axis] = static_cast<int>(p.w_shape[1 + axis]);
    k.pad[axis] = g.pad[axis];
    k.out[axis] = p.y_shape[1 + axis];
  }
  if (!kernels::conv16_forward_supported(k)) return std::nullopt;
  return k;
}

std::atomic<int64_t> conv16_launches{0};

void run_conv16(const ConvProblem& p, const kernels::Conv16Forward& k) {
  ++conv16_launches;
  DSMIL_CUDA_CHECK(
      kernels::conv16_forward(static_cast<const __nv_bfloat16*>(p.x), static_cast<const __nv_bfloat16*>(p.w),
                              static_cast<__nv_bfloat16*>(p.y), k, stream()),
      p.context + " (the implicit GEMM, kernels/conv16_forward.cu)");
}

// Runs a pass whose channels are aligned: on the implicit GEMM where it applies and the mode's conv16_forward
// picks it, else on cuDNN.
void run_kernel(const ConvProblem& p) {
  const std::optional<kernels::Conv16Forward> k = conv16_problem(p);
  bool implicit_gemm = false;
  if (k) {
    switch (p.mode.conv16_forward) {
      case ConvKernel::cudnn:
        break;
      case ConvKernel::implicit_gemm:
        implicit_gemm = true;
        break;
      case ConvKernel::measured:
        implicit_gemm = !p.mode.deterministic &&
                        conv16_choices().second_is_faster(
                            p, cache_key(p), [&] { run_cudnn_convolution(p); }, [&] { run_conv16(p, *k); });
        break;
    }
  }
  if (implicit_gemm)
    run_conv16(p, *k);
  else
    run_cudnn_convolution(p);
}

// cuDNN's channels-last tensor-core kernels need 16-byte channel rows in x, w, dx and dw: C a multiple of
// 8 in bf16 and of 4 in f32 / TF32 (cuDNN legacy API, "Data and Filter Formats": NHWC data aligned to 128-bit
// boundaries; NVIDIA's Convolutional Layers guide, "Channels In And Out": 8 for 16-bit types, 4 for TF32).
// Otherwise cuDNN falls back to fp32 NCHW kernels: Nsight Compute on the H100, one bf16 training step of the
// reference model (2 bags x 32 slabs of 4x4x128x128, width 64, 18.5 ms), found the stem's forward (C = 4,
// 3x7x7, stride (1,2,2)) in sm80_xmma_fprop_implicit_gemm_indexed_f32f32_f32f32_f32_nchwkcrs_nchw, 4.2 ms in
// one launch, the most expensive kernel of the step. So such convolutions run on copies of x and w widened
// to this channel count with zeros: the zero channels of x meet the zero channels of w, y is unchanged, and
// dx / dw are the first C channels of the padded gradients. f32 with C = 4 is already aligned. Measured after
// the change (same profile): the stem now runs a bf16 NHWC kernel, but cuDNN's choice for it,
// sm80_xmma_fprop_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nh..., still takes 4.56 ms: the padding
// removed the fp32 fallback, not the slow algorithm (notes/PERF.md).
int64_t aligned_channels(int64_t channels, DType dtype) {
  const int64_t per_row = static_cast<int64_t>(16 / dtype_size(dtype));
  return (channels + per_row - 1) / per_row * per_row;
}

// A device copy of a channels-last tensor [..., C] whose rows are widened to padded_channels (the extra
// channels zero when filled from the original), in the library stream's order.
class ChannelPaddedCopy {
 public:
  ChannelPaddedCopy(const Shape& shape, int64_t padded_channels, DType dtype, const std::string& context)
      : shape_(with_channels(shape, padded_channels)),
        rows_(static_cast<size_t>(shape_numel(shape) / shape.back())),
        row_bytes_(static_cast<size_t>(shape.back()) * dtype_size(dtype)),
        padded_row_bytes_(static_cast<size_t>(padded_channels) * dtype_size(dtype)),
        buffer_(rows_ * padded_row_bytes_),
        context_(context) {}

  const Shape& shape() const { return shape_; }
  void* data() const { return buffer_.data(); }

  void fill_from(const void* original) {
    DSMIL_CUDA_CHECK(cudaMemsetAsync(buffer_.data(), 0, buffer_.bytes(), stream()), context_);
    DSMIL_CUDA_CHECK(cudaMemcpy2DAsync(buffer_.data(), padded_row_bytes_, original, row_bytes_, row_bytes_, rows_,
                                       cudaMemcpyDeviceToDevice, stream()),
                     context_);
  }

  void copy_channels_to(void* original) const {
    DSMIL_CUDA_CHECK(cudaMemcpy2DAsync(original, row_bytes_, buffer_.data(), padded_row_bytes_, row_bytes_, rows_,
                                       cudaMemcpyDeviceToDevice, stream()),
                     context_);
  }

 private:
  static Shape with_channels(Shape shape, int64_t channels) {
    shape.back() = channels;
    return shape;
  }
  Shape shape_;
  size_t rows_, row_bytes_, padded_row_bytes_;
  DeviceBuffer buffer_;
  std::string context_;
};

// Runs one pass, on channel-padded copies of x and w where aligned_channels asks for them. The algorithm
// cache sees the padded shapes.
void run_on_aligned_channels(const ConvProblem& p) {
  const int64_t channels = p.x_shape[4];
  const int64_t padded_channels = aligned_channels(channels, p.dtype);
  if (padded_channels == channels) {
    run_kernel(p);
    return;
  }
  const std::string context =
      fmt::format("{} (on copies padded from {} to {} channels)", p.context, channels, padded_channels);
  ChannelPaddedCopy x(p.x_shape, padded_channels, p.dtype, context);
  ChannelPaddedCopy w(p.w_shape, padded_channels, p.dtype, context);
  if (p.pass != ConvPass::BackwardData) x.fill_from(p.x);
  if (p.pass != ConvPass::BackwardFilter) w.fill_from(p.w);
  run_kernel({p.pass, p.dtype, x.shape(), w.shape(), p.y_shape, p.geometry, x.data(), w.data(), p.y, context, p.mode});
  if (p.pass == ConvPass::BackwardData) x.copy_channels_to(p.x);
  if (p.pass == ConvPass::BackwardFilter) w.copy_channels_to(p.w);
}

// A strided convolution with few input channels may run as the stride-1 convolution of its space-to-depth
// fold (ops::conv3d_fold, tensor/ops.h). Why: for the stem (C = 4, 3x7x7, stride (1,2,2)) cuDNN 9.19 picks a
// slow "indexed" implicit GEMM on the input as it is, 4.60 ms of an 18.0 ms bf16 step on the H100 (Nsight
// Compute, notes/PERF.md); the fold gives it a 16-channel stride-1 problem (3x4x4 taps over 16 channels:
// 768 multiply-adds per output where the stem has 588).
struct FoldedConv {
  Conv3dFold fold;
  Shape xs_shape, ws_shape;
};

// Folding pays only for few input channels (it multiplies them by s_h * s_w) and filters at least as large
// as the stride.
constexpr int64_t kMaxFoldedChannels = 64;

// The channel count of the fold: s_h * s_w * C, aligned for tensor cores; 0 when the fold does not apply.
int64_t folded_channels(const ConvProblem& p) {
  const Conv3dGeometry& g = p.geometry;
  const int64_t block_h = g.stride[1], block_w = g.stride[2], c = p.x_shape[4];
  if (block_h * block_w == 1 || p.w_shape[2] < block_h || p.w_shape[3] < block_w ||
      block_h * block_w * c > kMaxFoldedChannels)
    return 0;
  return aligned_channels(block_h * block_w * c, p.dtype);
}

// The fold with `folded_c` >= folded_channels(p) channels (the ones past s_h * s_w * C are zero).
FoldedConv space_to_depth_fold(const ConvProblem& p, int64_t folded_c) {
  FoldedConv f;
  f.fold = ops::conv3d_fold(p.x_shape, p.w_shape, p.geometry, folded_c);
  f.xs_shape = ops::space_to_depth_shape(pass_op_name(p.pass), p.x_shape, f.fold.x_fold);
  f.ws_shape = ops::space_to_depth_shape(pass_op_name(p.pass), p.w_shape, f.fold.w_fold);
  return f;
}

// Folds the pass's inputs, runs the folded convolution and unfolds its output (dx or dw; y needs none).
void run_folded(const ConvProblem& p, const FoldedConv& f) {
  const std::string context =
      fmt::format("{} (as the space-to-depth fold x{} w{})", p.context, shape_str(f.xs_shape), shape_str(f.ws_shape));
  const size_t element = dtype_size(p.dtype);
  DeviceBuffer xs(static_cast<size_t>(shape_numel(f.xs_shape)) * element);
  DeviceBuffer ws(static_cast<size_t>(shape_numel(f.ws_shape)) * element);
  if (p.pass != ConvPass::BackwardData)
    refold(FoldDirection::fold, p.x, xs.data(), p.x_shape, f.fold.x_fold, p.dtype, context);
  if (p.pass != ConvPass::BackwardFilter)
    refold(FoldDirection::fold, p.w, ws.data(), p.w_shape, f.fold.w_fold, p.dtype, context);
  run_kernel({p.pass, p.dtype, f.xs_shape, f.ws_shape, p.y_shape, f.fold.geometry, xs.data(), ws.data(), p.y, context,
              p.mode});
  if (p.pass == ConvPass::BackwardData)
    refold(FoldDirection::unfold, xs.data(), p.x, p.x_shape, f.fold.x_fold, p.dtype, context);
  if (p.pass == ConvPass::BackwardFilter)
    refold(FoldDirection::unfold, ws.data(), p.w, p.w_shape, f.fold.w_fold, p.dtype, context);
}

// The way to run `p` (std::nullopt: as it is) under its mode's conv_space_to_depth. `measured` times the
// pass both ways once per problem and keeps the faster (the key holds conv16_forward too: it picks what runs the
// fold); in deterministic mode it folds without timing. Folds widened with zero channels to 32 and 64 were timed
// too on the H200 and never won (bf16 stem forward: 1.72 ms at 16 channels, 1.99 at 32, 2.52 at 64; notes/PERF.md).
std::optional<FoldedConv> chosen_fold(const ConvProblem& p) {
  const int64_t narrowest = folded_channels(p);
  if (narrowest == 0) return std::nullopt;
  const FoldedConv f = space_to_depth_fold(p, narrowest);
  switch (p.mode.conv_space_to_depth) {
    case ConvFolding::always:
      return f;
    case ConvFolding::never:
      return std::nullopt;
    case ConvFolding::measured:
      break;
  }
  if (p.mode.deterministic) return f;
  const std::string key = fmt::format("{}|conv16={}", cache_key(p), static_cast<int>(p.mode.conv16_forward));
  if (!fold_choices().second_is_faster(
          p, key, [&] { run_on_aligned_channels(p); }, [&] { run_folded(p, f); }))
    return std::nullopt;
  return f;
}

void run_convolution(const ConvProblem& p) {
  if (const std::optional<FoldedConv> f = chosen_fold(p))
    run_folded(p, *f);
  else
    run_on_aligned_channels(p);
}

std::string conv_context(ConvPass pass, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name,
                         const Shape& other, const char* other_name, const Conv3dGeometry& g) {
  return fmt::format("{} {}={} stride ({},{},{}) pad ({},{},{})",
                     op_context(pass_op_name(pass), {{a_name, &a}, {b_name, &b}}), other_name, shape_str(other),
                     g.stride[0], g.stride[1], g.stride[2], g.pad[0], g.pad[1], g.pad[2]);
}

}  // namespace

std::vector<ConvAlgorithmChoice> conv_algorithm_choices() {
  ChosenPlans& chosen = chosen_plans();
  std::lock_guard<std::mutex> lock(chosen.mutex);
  std::vector<ConvAlgorithmChoice> out;
  for (const auto& entry : chosen.by_key) {
    const ConvPlan& plan = entry.second;
    out.push_back(
        {plan.chosen.workspace,
         fmt::format("{} (engine {}{}{})", plan.problem, plan.chosen.engine, plan.why.empty() ? "" : ", ", plan.why),
         plan.traded});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.workspace_bytes > b.workspace_bytes; });
  return out;
}

int64_t conv16_forward_launches() { return conv16_launches.load(); }

std::vector<std::string> conv_measured_choices() {
  std::vector<std::string> lines = fold_choices().lines();
  for (std::string& line : conv16_choices().lines()) lines.push_back(std::move(line));
  return lines;
}

Tensor conv3d_forward(const Tensor& x, const Tensor& w, const Conv3dGeometry& g, const MathMode& mode) {
  const Shape y_shape = ops::conv3d_output_shape(x.shape(), w.shape(), g);
  Tensor y = empty_device(y_shape, x.dtype());
  run_convolution({ConvPass::Forward, x.dtype(), x.shape(), w.shape(), y_shape, g, x.raw(), w.raw(), y.raw(),
                   conv_context(ConvPass::Forward, x, "x", w, "w", y_shape, "y", g), mode});
  return y;
}

Tensor conv3d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv3dGeometry& g,
                            const MathMode& mode) {
  const std::string context = conv_context(ConvPass::BackwardData, dy, "dy", w, "w", x_shape, "x_shape", g);
  Tensor dx = empty_device(x_shape, dy.dtype());
  run_convolution({ConvPass::BackwardData, dy.dtype(), x_shape, w.shape(), dy.shape(), g, dx.raw(), w.raw(), dy.raw(),
                   context, mode});
  return dx;
}

Tensor conv3d_backward_filter(const Tensor& x, const Tensor& dy, const Shape& w_shape, const Conv3dGeometry& g,
                              const MathMode& mode) {
  const std::string context = conv_context(ConvPass::BackwardFilter, x, "x", dy, "dy", w_shape, "w_shape", g);
  Tensor dw = empty_device(w_shape, x.dtype());
  run_convolution({ConvPass::BackwardFilter, x.dtype(), x.shape(), w_shape, dy.shape(), g, x.raw(), dw.raw(), dy.raw(),
                   context, mode});
  return dw;
}

}  // namespace dsmil::cuda
