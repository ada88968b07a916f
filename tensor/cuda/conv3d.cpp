// CUDA 3-D convolution through cuDNN's legacy API: forward y[N, D', H', W', K], backward data dx[N, D, H, W, C]
// and backward filter dw[K, T, R, S, C], channels-last (NDHWC activations, KTRSC filters), f32 / TF32 / bf16.
//
// Every pass runs under the MathMode its caller passes (ConvProblem::mode). Algorithm choice, once per (pass,
// shape, dtype, TF32, determinism), cached for the process:
// - default: cudnnFind*AlgorithmEx times the candidates on the real buffers and the fastest acceptable one
//   wins (the choice can differ between processes, so results may differ in the last bits);
// - MathMode::deterministic: the first acceptable algorithm of cuDNN's heuristic list (the same on every
//   run with the same device and cuDNN) among those cuDNN marks deterministic.
// Acceptable: supported, workspace under the bound, and numerics that match the mode: never the
// fp16 down-conversion math, and only FMA math for f32 when TF32 is off. Among the measured ones, the
// smallest workspace within kWorkspaceTimeSlack of the fastest time wins: a cuDNN workspace is transient
// memory at the moment of the pass, and the stem's fastest fp32 algorithms borrowed ~330 MiB each in the
// backward pass, where the step's memory peaks (notes/PERF.md).
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
#include "tensor/cuda/op_helpers.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/space_to_depth.h"

namespace dsmil::cuda {

namespace {

// Workspace bound for one convolution: 1 GiB, or a quarter of the free device memory if less.
constexpr size_t kWorkspaceLimit = size_t{1} << 30;
// How much slower than the fastest measured algorithm one with a smaller workspace may be: 3%, about the
// spread of cudnnFind's single timings between runs.
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

struct ConvAlgorithm {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
  std::string problem;  // the pass and shapes it was chosen for (the context of its first call)
  std::string why;      // the measured time, and the fastest algorithm when this one is not it
  bool traded = false;  // slower than the fastest, kept for its smaller workspace
};

// A row of cuDNN's per-pass perf structs (they share these fields). time_ms: cudnnFind's measurement
// (the heuristic list's estimate, unused, in deterministic mode).
struct Candidate {
  int algo;
  cudnnStatus_t status;
  size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t math;
  float time_ms;
};

template <typename Perf>
std::vector<Candidate> to_candidates(const Perf* perf, int count) {
  std::vector<Candidate> out;
  for (int i = 0; i < count; ++i)
    out.push_back({static_cast<int>(perf[i].algo), perf[i].status, perf[i].memory, perf[i].determinism,
                   perf[i].mathType, perf[i].time});
  return out;
}

cudnnDataType_t cudnn_type(DType dtype) { return dtype == DType::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }

// The math the descriptor asks for before the search: FMA only for strict f32, tensor cores otherwise
// (TF32 for f32: CUDNN_DEFAULT_MATH permits it on Ampere and later).
cudnnMathType_t requested_math(DType dtype, const MathMode& mode) {
  if (dtype == DType::BF16) return CUDNN_TENSOR_OP_MATH;
  return mode.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

bool acceptable(const Candidate& c, DType dtype, const MathMode& mode, size_t workspace_limit) {
  if (c.status != CUDNN_STATUS_SUCCESS || c.memory > workspace_limit) return false;
  if (mode.deterministic && c.determinism != CUDNN_DETERMINISTIC) return false;
  if (c.math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) return false;
  if (dtype == DType::F32 && !mode.allow_tf32 && c.math != CUDNN_FMA_MATH) return false;
  return true;
}

class ConvDescriptors {
 public:
  explicit ConvDescriptors(const ConvProblem& p) : context_(p.context) {
    DSMIL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x), context_);
    DSMIL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y), context_);
    DSMIL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w), context_);
    DSMIL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv), context_);
    set_channels_last(x, p.x_shape, p.dtype);
    set_channels_last(y, p.y_shape, p.dtype);
    const Shape& ws = p.w_shape;
    const int filter_dims[5] = {int(ws[0]), int(ws[4]), int(ws[1]), int(ws[2]), int(ws[3])};  // K, C, T, R, S
    DSMIL_CUDNN_CHECK(cudnnSetFilterNdDescriptor(w, cudnn_type(p.dtype), CUDNN_TENSOR_NHWC, 5, filter_dims), context_);
    const Conv3dGeometry& g = p.geometry;
    const int dilation[3] = {1, 1, 1};
    DSMIL_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(conv, 3, g.pad.data(), g.stride.data(), dilation,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                      context_);
    int out_dims[5];
    DSMIL_CUDNN_CHECK(cudnnGetConvolutionNdForwardOutputDim(conv, x, w, 5, out_dims), context_);
    const Shape cudnn_y{out_dims[0], out_dims[2], out_dims[3], out_dims[4], out_dims[1]};
    if (cudnn_y != p.y_shape)
      throw DeviceError(fmt::format("{}: cuDNN computes output {} where dsmil expects {}", context_, shape_str(cudnn_y),
                                    shape_str(p.y_shape)));
  }
  ~ConvDescriptors() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;

  void set_math(cudnnMathType_t math) { DSMIL_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math), context_); }

  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;

 private:
  // Dims in cuDNN's N, C, D, H, W order with the strides of an N, D, H, W, C array.
  void set_channels_last(cudnnTensorDescriptor_t desc, const Shape& s, DType dtype) {
    const int n = int(s[0]), d = int(s[1]), h = int(s[2]), wd = int(s[3]), c = int(s[4]);
    const int dims[5] = {n, c, d, h, wd};
    const int strides[5] = {d * h * wd * c, 1, h * wd * c, wd * c, c};
    DSMIL_CUDNN_CHECK(cudnnSetTensorNdDescriptor(desc, cudnn_type(dtype), 5, dims, strides), context_);
  }
  std::string context_;
};

std::vector<Candidate> measure_candidates(const ConvProblem& p, const ConvDescriptors& d, void* workspace,
                                          size_t workspace_bytes) {
  cudnnHandle_t h = cudnn_handle();
  int returned = 0;
  switch (p.pass) {
    case ConvPass::Forward: {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, d.x, p.x, d.w, p.w, d.conv, d.y, p.y,
                                                               CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf,
                                                               workspace, workspace_bytes),
                        p.context);
      return to_candidates(perf, returned);
    }
    case ConvPass::BackwardData: {
      cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w, p.w, d.y, p.y, d.conv, d.x, p.x,
                                                                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned,
                                                                    perf, workspace, workspace_bytes),
                        p.context);
      return to_candidates(perf, returned);
    }
    case ConvPass::BackwardFilter: {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x, p.x, d.y, p.y, d.conv, d.w, p.w,
                                                                      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                      &returned, perf, workspace, workspace_bytes),
                        p.context);
      return to_candidates(perf, returned);
    }
  }
  return {};
}

std::vector<Candidate> heuristic_candidates(const ConvProblem& p, const ConvDescriptors& d) {
  cudnnHandle_t h = cudnn_handle();
  int returned = 0;
  switch (p.pass) {
    case ConvPass::Forward: {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y,
                                                               CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                        p.context);
      return to_candidates(perf, returned);
    }
    case ConvPass::BackwardData: {
      cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
                            h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf),
                        p.context);
      return to_candidates(perf, returned);
    }
    case ConvPass::BackwardFilter: {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                            h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, perf),
                        p.context);
      return to_candidates(perf, returned);
    }
  }
  return {};
}

// The exact workspace of an algorithm under the descriptor's current math type.
size_t workspace_size(const ConvProblem& p, const ConvDescriptors& d, int algo) {
  cudnnHandle_t h = cudnn_handle();
  size_t bytes = 0;
  switch (p.pass) {
    case ConvPass::Forward:
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y,
                                                                static_cast<cudnnConvolutionFwdAlgo_t>(algo), &bytes),
                        p.context);
      break;
    case ConvPass::BackwardData:
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
                            h, d.w, d.y, d.conv, d.x, static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), &bytes),
                        p.context);
      break;
    case ConvPass::BackwardFilter:
      DSMIL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                            h, d.x, d.y, d.conv, d.w, static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), &bytes),
                        p.context);
      break;
  }
  return bytes;
}

// The problem and the parts of its mode that change cuDNN's algorithm choice (and the timing of cuDNN against
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

// The algorithm chosen per problem (cache_key); conv_algorithm_choices() lists them.
struct ChosenAlgorithms {
  std::mutex mutex;
  std::unordered_map<std::string, ConvAlgorithm> by_key;
};
ChosenAlgorithms& chosen_algorithms() {
  static ChosenAlgorithms chosen;
  return chosen;
}

// Deterministic mode: the first acceptable candidate of the heuristic list. Measured: the acceptable one of
// smallest workspace among those within kWorkspaceTimeSlack of the fastest (cuDNN lists them fastest first).
std::optional<ConvAlgorithm> pick_candidate(const ConvProblem& p, ConvDescriptors& d,
                                            const std::vector<Candidate>& candidates, size_t limit) {
  std::optional<ConvAlgorithm> fastest, chosen;
  float fastest_ms = 0.0f, chosen_ms = 0.0f;
  for (const Candidate& c : candidates) {
    if (!acceptable(c, p.dtype, p.mode, limit)) continue;
    d.set_math(c.math);
    const size_t bytes = workspace_size(p, d, c.algo);
    if (bytes > limit) continue;
    const ConvAlgorithm algorithm{c.algo, c.math, bytes, p.context, "", false};
    if (p.mode.deterministic) return algorithm;
    if (!fastest) {
      fastest = chosen = algorithm;
      fastest_ms = chosen_ms = c.time_ms;
      continue;
    }
    if (c.time_ms <= fastest_ms * (1.0f + kWorkspaceTimeSlack) && bytes < chosen->workspace) {
      chosen = algorithm;
      chosen_ms = c.time_ms;
    }
  }
  if (!chosen) return std::nullopt;
  chosen->why = fmt::format("{:.3f} ms", chosen_ms);
  chosen->traded = chosen->algo != fastest->algo || chosen->math != fastest->math;
  if (chosen->traded)
    chosen->why += fmt::format("; fastest: algorithm {}, {:.3f} ms, {:.1f} MiB", fastest->algo, fastest_ms,
                               static_cast<double>(fastest->workspace) / (1 << 20));
  return chosen;
}

// A reference into the cache: its entries are never removed, and an unordered_map's elements stay put.
const ConvAlgorithm& choose_algorithm(const ConvProblem& p, ConvDescriptors& d) {
  ChosenAlgorithms& chosen = chosen_algorithms();
  auto& cache = chosen.by_key;
  const std::string key = cache_key(p);
  std::lock_guard<std::mutex> lock(chosen.mutex);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;

  const size_t limit = workspace_limit(p.context);
  d.set_math(requested_math(p.dtype, p.mode));
  std::vector<Candidate> candidates;
  if (p.mode.deterministic) {
    candidates = heuristic_candidates(p, d);
  } else {
    DeviceBuffer search_workspace(limit);
    candidates = measure_candidates(p, d, search_workspace.data(), limit);
  }
  if (const std::optional<ConvAlgorithm> algorithm = pick_candidate(p, d, candidates, limit))
    return cache[key] = *algorithm;
  std::string tried;
  for (const Candidate& c : candidates)
    tried += fmt::format(" [algo {} status {} math {} det {} workspace {}]", c.algo, cudnnGetErrorString(c.status),
                         static_cast<int>(c.math), static_cast<int>(c.determinism), c.memory);
  throw DeviceError(
      fmt::format("{}: no cuDNN algorithm fits (tf32={}, deterministic={}, workspace limit {} bytes);"
                  " candidates:{}",
                  p.context, p.mode.allow_tf32, p.mode.deterministic, limit, tried));
}

void run_cudnn_convolution(const ConvProblem& p) {
  ConvDescriptors d(p);
  const ConvAlgorithm& chosen = choose_algorithm(p, d);
  d.set_math(chosen.math);
  DeviceBuffer workspace(chosen.workspace);
  cudnnHandle_t h = cudnn_handle();
  const float alpha = 1.0f, beta = 0.0f;
  switch (p.pass) {
    case ConvPass::Forward:
      DSMIL_CUDNN_CHECK(cudnnConvolutionForward(h, &alpha, d.x, p.x, d.w, p.w, d.conv,
                                                static_cast<cudnnConvolutionFwdAlgo_t>(chosen.algo), workspace.data(),
                                                chosen.workspace, &beta, d.y, p.y),
                        p.context);
      break;
    case ConvPass::BackwardData:
      DSMIL_CUDNN_CHECK(cudnnConvolutionBackwardData(h, &alpha, d.w, p.w, d.y, p.y, d.conv,
                                                     static_cast<cudnnConvolutionBwdDataAlgo_t>(chosen.algo),
                                                     workspace.data(), chosen.workspace, &beta, d.x, p.x),
                        p.context);
      break;
    case ConvPass::BackwardFilter:
      DSMIL_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &alpha, d.x, p.x, d.y, p.y, d.conv,
                                                       static_cast<cudnnConvolutionBwdFilterAlgo_t>(chosen.algo),
                                                       workspace.data(), chosen.workspace, &beta, d.w, p.w),
                        p.context);
      break;
  }
}

// Device milliseconds of one run of `pass` on the library stream, after one untimed run (which may search
// cuDNN's algorithms).
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
  ChosenAlgorithms& chosen = chosen_algorithms();
  std::lock_guard<std::mutex> lock(chosen.mutex);
  std::vector<ConvAlgorithmChoice> out;
  for (const auto& entry : chosen.by_key) {
    const ConvAlgorithm& algorithm = entry.second;
    out.push_back({algorithm.workspace,
                   fmt::format("{} (algorithm {}{}{})", algorithm.problem, algorithm.algo,
                               algorithm.why.empty() ? "" : ", ", algorithm.why),
                   algorithm.traded});
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
