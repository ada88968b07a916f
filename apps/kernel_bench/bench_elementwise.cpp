// Bench entries of the elementwise kernels at the shapes the step runs them: ReLU and its backward on the
// stem's output, the residual add and drop-path on a stage-1 block, gradient accumulation (axpy) and fill
// on the largest weight, feature dropout on the embeddings, f32 <-> bf16 conversion of input and weights.
#include <fmt/format.h>

#include "apps/kernel_bench/registry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include "apps/kernel_bench/device_helpers.h"
#endif

namespace dsmil::kernel_bench {

namespace {

int64_t elem(DType dtype) { return static_cast<int64_t>(dtype_size(dtype)); }

// An elementwise entry over a tensor of any shape: `streams` tensors of its size read or written.
KernelBench elementwise_bench(const char* name, const char* file, const char* bytes_meaning, int64_t streams) {
  KernelBench b;
  b.name = name;
  b.file = file;
  b.shape_meaning = "x[...]";
  b.bytes_meaning = bytes_meaning;
  b.dtypes = {DType::F32, DType::BF16};
  b.tiny_shape = {3, 5, 7};
  b.bytes = [streams](const Shape& s, DType d) { return streams * elem(d) * shape_numel(s); };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(shape_numel(s)); };
#endif
  return b;
}

// `count` stored tensors of the shape, uniform in (lo, hi).
std::function<Problem(const Shape&, DType, uint64_t)> uniform_inputs(int count, float lo, float hi) {
  return [=](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    for (int k = 0; k < count; ++k) p.add(uniform_tensor(s, lo, hi, stream_seed(seed, k), dtype), true);
    return p;
  };
}

KernelBench relu_bench() {
  KernelBench b = elementwise_bench("relu", "elementwise.cu", "read x; write y", 2);
  b.launchers = {"unary"};
  b.model_shape = [](const ModelShapes& m) { return m.stem; };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::relu(in[0])}; };
  return b;
}

KernelBench relu_backward_bench() {
  KernelBench b = elementwise_bench("relu_backward", "elementwise.cu", "read dy, y; write dx", 3);
  b.launchers = {"binary"};
  b.model_shape = [](const ModelShapes& m) { return m.stem; };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    // y = relu(random): about half of it exactly 0, as after a real ReLU.
    p.add(ops::relu(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 1), dtype)), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::relu_backward(in[0], in[1])};
  };
  return b;
}

KernelBench add_bench() {
  KernelBench b = elementwise_bench("add", "elementwise.cu", "read a, b; write y", 3);
  b.launchers = {"binary"};
  b.model_shape = [](const ModelShapes& m) { return m.stages[0]; };
  b.draw = uniform_inputs(2, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::add(in[0], in[1])}; };
  return b;
}

KernelBench axpy_bench() {
  constexpr float kAlpha = 0.75f;
  KernelBench b = elementwise_bench("axpy", "elementwise.cu", "read y, x; write y", 3);
  b.launchers = {"axpy"};
  b.dtypes = {DType::F32};
  b.model_shape = [](const ModelShapes& m) { return m.largest_weight; };
  b.draw = uniform_inputs(2, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    ops::axpy_(in[0], kAlpha, in[1]);
    return std::vector<Tensor>{in[0]};
  };
  return b;
}

KernelBench dropout_bench() {
  // The counter-based mask's seed and offset, and the recommended feature dropout.
  constexpr uint64_t kSeed = 0x5eed, kOffset = 12345;
  constexpr float kP = 0.6f;
  KernelBench b = elementwise_bench("dropout", "random_masks.cu", "read x; write y", 2);
  b.launchers = {"dropout"};
  b.model_shape = [](const ModelShapes& m) { return m.embedding; };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::dropout(in[0], kP, kSeed, kOffset)};
  };
  return b;
}

KernelBench drop_path_bench() {
  constexpr uint64_t kSeed = 0x5eed, kOffset = 678;
  constexpr float kP = 0.1f;  // the recommended drop_path of the last block
  KernelBench b = elementwise_bench("drop_path", "random_masks.cu", "read x; write y", 2);
  b.launchers = {"drop_path"};
  b.model_shape = [](const ModelShapes& m) { return m.stages[0]; };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::drop_path(in[0], kP, kSeed, kOffset)};
  };
  return b;
}

KernelBench fill_bench() {
  constexpr float kValue = 0.37f;
  KernelBench b = elementwise_bench("fill", "convert_fill.cu", "write y", 1);
  b.launchers = {"fill"};
  b.model_shape = [](const ModelShapes& m) { return m.largest_weight; };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    in[0].fill(kValue);
    return std::vector<Tensor>{in[0]};
  };
  return b;
}

// The conversions run through Tensor::to_dtype, which only the CUDA backend has: their references are
// computed here (round to nearest even, or the bf16 values themselves).
#ifdef DSMIL_WITH_CUDA
std::string conversion_launch(const Shape& s, DType) {
  return grid_stride_launch(shape_numel(s) / 8 + 1) + ", 8 elements (16 bytes of bf16) per thread step";
}
#endif

KernelBench to_bf16_bench() {
  KernelBench b = elementwise_bench("convert_f32_to_bf16", "convert_fill.cu", "read x (F32); write y (BF16)", 0);
  b.launchers = {"convert_f32_to_bf16"};
  b.dtypes = {DType::F32};
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = conversion_launch;
#endif
  b.model_shape = [](const ModelShapes& m) { return m.input; };
  b.bytes = [](const Shape& s, DType) { return 6 * shape_numel(s); };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{in[0].to_dtype(DType::BF16)}; };
  b.reference = [](std::vector<Tensor>& in, const Shape&, DType) {
    Tensor y = in[0].clone();
    float* p = y.f32();
    for (int64_t i = 0; i < y.numel(); ++i) p[i] = round_to_bf16(p[i]);
    return std::vector<Tensor>{y};
  };
  return b;
}

KernelBench to_f32_bench() {
  KernelBench b = elementwise_bench("convert_bf16_to_f32", "convert_fill.cu", "read x (BF16); write y (F32)", 0);
  b.launchers = {"convert_bf16_to_f32"};
  b.dtypes = {DType::BF16};
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = conversion_launch;
#endif
  b.model_shape = [](const ModelShapes& m) { return m.largest_weight; };
  b.bytes = [](const Shape& s, DType) { return 6 * shape_numel(s); };
  b.draw = uniform_inputs(1, -1.0f, 1.0f);
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{in[0].to_dtype(DType::F32)}; };
  b.reference = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{in[0].clone()}; };
  return b;
}

}  // namespace

void add_elementwise_benches(std::vector<KernelBench>& list) {
  list.push_back(relu_bench());
  list.push_back(relu_backward_bench());
  list.push_back(add_bench());
  list.push_back(axpy_bench());
  list.push_back(dropout_bench());
  list.push_back(drop_path_bench());
  list.push_back(fill_bench());
  list.push_back(to_bf16_bench());
  list.push_back(to_f32_bench());
}

}  // namespace dsmil::kernel_bench
