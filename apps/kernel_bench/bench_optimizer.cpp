// Bench entries of the linear layers' bias kernels at the head's shape h[B*n, F] (the value projection),
// of the per-tensor optimizer state updates (AdamW, EMA) on the largest weight, and of the multi-tensor
// ones over the encoder's tensor list, as nn::AdamW and nn::Ema call them.
#include <fmt/format.h>

#include <map>
#include <memory>
#include <numeric>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include "apps/kernel_bench/device_helpers.h"
#include "kernels/optimizer.h"
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
  b.launch_fast = [](const Shape& s, DType) {
    return fmt::format("{} x (32, 8) (column tile per block)", (s[1] + 31) / 32);
  };
#endif
  return b;
}

KernelBench update_bench(const char* name, const char* bytes_meaning) {
  KernelBench b = described_bench(name, "optimizer.cu", "param[...]", bytes_meaning, 0, {DType::F32},
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

// Sizes of the ResNet-18-3D encoder's parameters at the model's shapes (nn/resnet3d.cpp: stem conv and batch
// norm, two BasicBlocks per stage, a 1x1x1 downsample conv and batch norm in the first block of stages 2-4);
// with_buffers adds each batch norm's running mean and variance. The MIL head's few small tensors are left out.
Shape encoder_tensor_sizes(const ModelShapes& m, bool with_buffers) {
  const int64_t kd = m.largest_weight[1], width = m.stem.back();
  Shape sizes{width * kd * 7 * 7 * m.input.back()};
  const auto batch_norm = [&](int64_t channels) { sizes.insert(sizes.end(), with_buffers ? 4 : 2, channels); };
  batch_norm(width);
  int64_t in = width;
  for (const Shape& stage : m.stages) {
    const int64_t out = stage.back();
    for (int block = 0; block < 2; ++block, in = out) {
      sizes.push_back(out * kd * 3 * 3 * in);
      batch_norm(out);
      sizes.push_back(out * kd * 3 * 3 * out);
      batch_norm(out);
      if (in != out) {
        sizes.push_back(out * in);
        batch_norm(out);
      }
    }
  }
  return sizes;
}

int64_t total_elements(const Shape& sizes) { return std::accumulate(sizes.begin(), sizes.end(), int64_t{0}); }

// A list entry's --shape holds the element count of each tensor.
KernelBench multi_tensor_bench(const char* name, const char* bytes_meaning, bool with_buffers) {
  KernelBench b = described_bench(
      name, "optimizer.cu", "numel of each tensor [n0,n1,...]", bytes_meaning, 0, {DType::F32},
      [with_buffers](const ModelShapes& m) { return encoder_tensor_sizes(m, with_buffers); }, {9000, 3, 70, 1});
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& sizes, DType) {
    int64_t blocks = 0;
    for (int64_t n : sizes) blocks += (n + kernels::kChunkElements - 1) / kernels::kChunkElements;
    return fmt::format("{} x 256 (a block per chunk of <= {} elements)", blocks, kernels::kChunkElements);
  };
#endif
  return b;
}

// The op's tensor list over the inputs, `per_tensor` inputs per tensor, kept per input set: its device table is
// built on the first call with that set, as nn::AdamW builds it once, and not timed again.
template <typename List>
class ListCache {
 public:
  List& of(const std::vector<Tensor>& inputs) { return lists_[inputs.front().raw()]; }

 private:
  std::map<const void*, List> lists_;
};

KernelBench multi_tensor_adamw_bench() {
  constexpr float kMaxGradNorm = 1.0f;
  KernelBench b =
      multi_tensor_bench("multi_tensor_adamw", "read param, grad (twice: norm), m, v; write param, m, v", false);
  b.launchers = {"multi_tensor_sum_squares", "multi_tensor_norm", "multi_tensor_adamw"};
  b.bytes = [](const Shape& sizes, DType) { return 32 * total_elements(sizes); };
  b.draw = [](const Shape& sizes, DType, uint64_t seed) {
    Problem p;
    for (size_t i = 0; i < sizes.size(); ++i) {
      p.add(uniform_tensor({sizes[i]}, -1.0f, 1.0f, stream_seed(seed, 4 * i)), false);
      p.add(uniform_tensor({sizes[i]}, -1.0f, 1.0f, stream_seed(seed, 4 * i + 1)), false);
      p.add(uniform_tensor({sizes[i]}, -0.1f, 0.1f, stream_seed(seed, 4 * i + 2)), false);
      p.add(uniform_tensor({sizes[i]}, 1e-4f, 1e-2f, stream_seed(seed, 4 * i + 3)), false);
    }
    return p;
  };
  // Inputs per tensor: param, grad, m, v; every other tensor weight-decayed. Outputs: every param, m, v and the norm.
  b.run = [cache = std::make_shared<ListCache<AdamWTensors>>()](std::vector<Tensor>& in, const Shape&, DType) {
    AdamWTensors& list = cache->of(in);
    std::vector<Tensor> grads;
    list.params.clear();
    list.m.clear();
    list.v.clear();
    list.decayed.clear();
    for (size_t k = 0; k < in.size(); k += 4) {
      list.params.push_back(&in[k]);
      grads.push_back(in[k + 1]);
      list.m.push_back(&in[k + 2]);
      list.v.push_back(&in[k + 3]);
      list.decayed.push_back(k % 8 == 0);
    }
    AdamWHyper h;
    h.lr = 3e-4f;
    h.weight_decay = 1e-4f;
    h.step = 10;
    Tensor norm = Tensor::zeros({1}, DType::F32, in.front().device());
    ops::multi_tensor_adamw(list, grads, h, kMaxGradNorm, norm);
    std::vector<Tensor> out{norm};
    for (size_t k = 0; k < in.size(); k += 4) out.insert(out.end(), {in[k], in[k + 2], in[k + 3]});
    return out;
  };
  return b;
}

KernelBench multi_tensor_ema_bench() {
  constexpr float kDecay = 0.999f;
  KernelBench b = multi_tensor_bench("multi_tensor_ema", "read ema, value; write ema", true);
  b.launchers = {"multi_tensor_ema"};
  b.bytes = [](const Shape& sizes, DType) { return 12 * total_elements(sizes); };
  b.draw = [](const Shape& sizes, DType, uint64_t seed) {
    Problem p;
    for (size_t i = 0; i < sizes.size(); ++i) {
      p.add(uniform_tensor({sizes[i]}, -1.0f, 1.0f, stream_seed(seed, 2 * i)), false);
      p.add(uniform_tensor({sizes[i]}, -1.0f, 1.0f, stream_seed(seed, 2 * i + 1)), false);
    }
    return p;
  };
  // Inputs per tensor: ema, value. Outputs: every ema.
  b.run = [cache = std::make_shared<ListCache<EmaTensors>>()](std::vector<Tensor>& in, const Shape&, DType) {
    EmaTensors& list = cache->of(in);
    list.ema.clear();
    list.values.clear();
    std::vector<Tensor> out;
    for (size_t k = 0; k < in.size(); k += 2) {
      list.ema.push_back(&in[k]);
      list.values.push_back(&in[k + 1]);
      out.push_back(in[k]);
    }
    ops::multi_tensor_ema(list, kDecay);
    return out;
  };
  return b;
}

}  // namespace

void add_optimizer_benches(std::vector<KernelBench>& list) {
  list.push_back(add_bias_bench());
  list.push_back(bias_backward_bench());
  list.push_back(adamw_bench());
  list.push_back(ema_bench());
  list.push_back(multi_tensor_adamw_bench());
  list.push_back(multi_tensor_ema_bench());
}

}  // namespace dsmil::kernel_bench
