// Bench entries of the fused batch norm + ReLU kernels (kernels/batchnorm_relu.cu) in their full form,
// a residual block's second norm: y = relu(s[n] BN(x) + residual) at a stage-1 block x[N, D, H, W, C],
// with drop-path's per-sample factor s; training and eval forward, the recomputation of y from saved statistics
// (no residual or factor), backward with the residual's gradient.
#include <fmt/format.h>

#include "apps/kernel_bench/bench_entry.h"
#include "base/counter_rng.h"
#include "tensor/ops.h"

namespace dsmil::kernel_bench {

namespace {

constexpr float kMomentum = 0.1f, kEps = 1e-5f;
constexpr float kDropPath = 0.1f;  // the recommended drop_path of the last block

#ifdef DSMIL_WITH_CUDA
// The fused kernels size their blocks from the channel count and the vector width they can load.
constexpr const char* kTiles = " (vectorised channel tiles x row blocks, kernels/batchnorm_relu.cu)";
#endif

KernelBench fused_bench(const char* name, const char* bytes_meaning) {
  return described_bench(name, "batchnorm_relu.cu", "x[N,D,H,W,C]", bytes_meaning, 5, {DType::F32, DType::BF16},
                         [](const ModelShapes& m) { return m.stages[0]; }, {3, 2, 5, 6, 40});
}

// Drop-path's factor per sample: 0 (dropped) or 1 / (1 - p) (kept).
Tensor sample_factors(int64_t samples, uint64_t seed) {
  std::vector<float> s(samples);
  for (int64_t n = 0; n < samples; ++n)
    s[n] = counter_uniform(seed, static_cast<uint64_t>(n)) < kDropPath ? 0.0f : 1.0f / (1.0f - kDropPath);
  return Tensor::from_vector({samples}, s);
}

// x, gamma, beta, running mean and var, residual, sample factor.
Problem forward_inputs(const Shape& s, DType dtype, uint64_t seed) {
  const Shape c{s.back()};
  Problem p;
  p.add(uniform_tensor(s, -1.0f, 3.0f, stream_seed(seed, 0), dtype), true);
  p.add(uniform_tensor(c, 0.5f, 1.5f, stream_seed(seed, 1)), false);
  p.add(uniform_tensor(c, -0.5f, 0.5f, stream_seed(seed, 2)), false);
  p.add(uniform_tensor(c, -0.5f, 0.5f, stream_seed(seed, 3)), false);
  p.add(uniform_tensor(c, 0.5f, 2.0f, stream_seed(seed, 4)), false);
  p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 5), dtype), true);
  p.add(sample_factors(s[0], stream_seed(seed, 6)), false);
  return p;
}

KernelBench train_bench() {
  KernelBench b =
      fused_bench("batchnorm_relu_forward_train", "read x, residual; write y (statistics read x once more)");
  b.launchers = {"batchnorm_relu_forward_train"};
  b.bytes = [](const Shape& s, DType d) { return 3 * element_bytes(d) * shape_numel(s) + 32 * s.back() + 4 * s[0]; };
  b.draw = forward_inputs;
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    BatchNormTrainOut out =
        ops::batchnorm_relu_forward_train(in[0], in[1], in[2], in[3], in[4], kMomentum, kEps, in[5], in[6]);
    return std::vector<Tensor>{out.y, out.save_mean, out.save_invstd, in[3], in[4]};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape&, DType) { return std::string("batchnorm_statistics + fused pass") + kTiles; };
#endif
  return b;
}

KernelBench eval_bench() {
  KernelBench b = fused_bench("batchnorm_relu_forward_eval", "read x, residual; write y");
  b.launchers = {"batchnorm_relu_forward_eval"};
  b.bytes = [](const Shape& s, DType d) { return 3 * element_bytes(d) * shape_numel(s) + 16 * s.back() + 4 * s[0]; };
  b.draw = forward_inputs;
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::batchnorm_relu_forward_eval(in[0], in[1], in[2], in[3], in[4], kEps, in[5], in[6])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape&, DType) { return std::string("fused pass") + kTiles; };
#endif
  return b;
}

// The training forward's y recomputed from x and its saved statistics (no residual, no sample factor).
KernelBench apply_bench() {
  KernelBench b = fused_bench("batchnorm_relu_apply", "read x; write y");
  b.launchers = {"batchnorm_relu_apply"};
  b.bytes = [](const Shape& s, DType d) { return 2 * element_bytes(d) * shape_numel(s) + 16 * s.back(); };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    std::vector<Tensor> in = forward_inputs(s, dtype, seed).inputs;
    const BatchNormTrainOut saved = ops::batchnorm_statistics(in[0], in[3], in[4], kMomentum, kEps);
    Problem p;
    p.add(in[0], true);
    p.add(in[1], false);
    p.add(in[2], false);
    p.add(saved.save_mean, false);
    p.add(saved.save_invstd, false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::batchnorm_relu_apply(in[0], in[1], in[2], in[3], in[4])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape&, DType) { return std::string("fused pass") + kTiles; };
#endif
  return b;
}

KernelBench backward_bench() {
  KernelBench b = fused_bench("batchnorm_relu_backward",
                              "read dy, y, x; write dx, d_residual (the sums pass reads dy, y, x once more)");
  b.launchers = {"batchnorm_relu_backward"};
  b.bytes = [](const Shape& s, DType d) { return 5 * element_bytes(d) * shape_numel(s) + 20 * s.back() + 4 * s[0]; };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    const Problem forward = forward_inputs(s, dtype, seed);
    std::vector<Tensor> in = forward.inputs;
    const BatchNormTrainOut saved =
        ops::batchnorm_relu_forward_train(in[0], in[1], in[2], in[3], in[4], kMomentum, kEps, in[5], in[6]);
    // y as the device holds it: only its sign matters (g = dy [y > 0]), which rounding keeps.
    Tensor y = saved.y.clone();
    if (dtype == DType::BF16)
      for (int64_t i = 0; i < y.numel(); ++i) y.f32()[i] = round_to_bf16(y.f32()[i]);
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 7), dtype), true);
    p.add(y, true);
    p.add(in[0], true);
    p.add(in[1], false);
    p.add(saved.save_mean, false);
    p.add(saved.save_invstd, false);
    p.add(in[6], false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    BatchNormReluGrads g =
        ops::batchnorm_relu_backward(in[0], in[1], in[2], in[3], Tensor(), in[4], in[5], in[6], true);
    return std::vector<Tensor>{g.dx, g.dgamma, g.dbeta, g.d_residual};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape&, DType) { return std::string("sums + finalize + dx") + kTiles; };
#endif
  return b;
}

}  // namespace

void add_batchnorm_relu_benches(std::vector<KernelBench>& list) {
  list.push_back(train_bench());
  list.push_back(eval_bench());
  list.push_back(apply_bench());
  list.push_back(backward_bench());
}

}  // namespace dsmil::kernel_bench
