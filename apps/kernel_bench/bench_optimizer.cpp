// Bench entries of the linear layers' bias kernels at the head's shape h[B*n, F] (the value projection),
// and of the optimizer state updates (AdamW, EMA) on the largest weight, one tensor per launch as
// nn::AdamW and nn::Ema call them.
#include <fmt/format.h>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include "apps/kernel_bench/device_helpers.h"
#endif

namespace dsmil::kernel_bench {

namespace {

KernelBench bias_bench(const char* name, const char* bytes_meaning) {
  return described_bench(name, "bias.cu", "x[M,N]", bytes_meaning, 2, {DType::F32, DType::BF16},
                         [](const ModelShapes& m) { return m.embedding; }, {7, 45});
}

KernelBench add_bias_bench() {
  KernelBench b = bias_bench("add_bias", "read x, bias; write y");
  b.launchers = {"add_bias"};
  b.bytes = [](const Shape& s, DType d) { return 2 * element_bytes(d) * s[0] * s[1] + 4 * s[1]; };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    p.add(uniform_tensor({s[1]}, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::add_bias(in[0], in[1])}; };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[1]); };
#endif
  return b;
}

KernelBench bias_backward_bench() {
  KernelBench b = bias_bench("bias_backward", "read dy; write db[N]");
  b.launchers = {"bias_backward"};
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * s[0] * s[1] + 4 * s[1]; };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::bias_backward(in[0])}; };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return fmt::format("{} x (32, 8) (column tile per block)", (s[1] + 31) / 32); };
#endif
  return b;
}

KernelBench update_bench(const char* name, const char* bytes_meaning) {
  KernelBench b = described_bench(name, "optimizer_updates.cu", "param[...]", bytes_meaning, 0, {DType::F32},
                                  [](const ModelShapes& m) { return m.largest_weight; }, {5, 3, 3, 3, 4});
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(shape_numel(s)); };
#endif
  return b;
}

KernelBench adamw_bench() {
  KernelBench b = update_bench("adamw", "read param, grad, m, v; write param, m, v");
  b.launchers = {"adamw"};
  b.bytes = [](const Shape& s, DType) { return 28 * shape_numel(s); };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    p.add(uniform_tensor(s, -0.1f, 0.1f, stream_seed(seed, 2)), false);
    p.add(uniform_tensor(s, 1e-4f, 1e-2f, stream_seed(seed, 3)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    // recommended-v2's learning rate and weight decay, at a step where the bias corrections still matter.
    AdamWHyper h;
    h.lr = 3e-4f;
    h.weight_decay = 1e-4f;
    h.step = 10;
    ops::adamw_step(in[0], in[1], in[2], in[3], h);
    return std::vector<Tensor>{in[0], in[2], in[3]};
  };
  return b;
}

KernelBench ema_bench() {
  constexpr float kDecay = 0.999f;
  KernelBench b = update_bench("ema", "read ema, value; write ema");
  b.launchers = {"ema"};
  b.bytes = [](const Shape& s, DType) { return 12 * shape_numel(s); };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    ops::ema_update(in[0], in[1], kDecay);
    return std::vector<Tensor>{in[0]};
  };
  return b;
}

}  // namespace

void add_optimizer_benches(std::vector<KernelBench>& list) {
  list.push_back(add_bias_bench());
  list.push_back(bias_backward_bench());
  list.push_back(adamw_bench());
  list.push_back(ema_bench());
}

}  // namespace dsmil::kernel_bench
