// Bench entries of the MIL head's kernels at the head's shapes (B bags of n instances, F features):
// masked softmax (fast and plain) and its backward, top-k, gather_mean, the bag contractions, focal loss.
#include <fmt/format.h>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include "apps/kernel_bench/device_helpers.h"
#include "kernels/plain/masked_softmax_plain.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#endif

namespace dsmil::kernel_bench {

namespace {

// The attention temperature of the entries (not 1, so that the division by T is exercised).
constexpr float kTemperature = 0.8f;

#ifdef DSMIL_WITH_CUDA
// The block-per-bag kernels (masked_softmax.cu, topk_gather.cu) run 128 threads per block.
std::string per_bag_launch(int64_t bags) { return fmt::format("{} x 128 (block per bag)", bags); }

std::string thread_per_bag_launch(int64_t bags) {
  constexpr int threads = kernels::plain::kBagsPerBlockPlain;
  return fmt::format("{} x {} (thread per bag)", (bags + threads - 1) / threads, threads);
}
#endif

// An F32 entry running the launcher `name`; --shape takes as many sizes as the tiny shape has.
KernelBench head_bench(const std::string& name, const char* file, const char* shape_meaning, const char* bytes_meaning,
                       std::function<Shape(const ModelShapes&)> model_shape, const Shape& tiny_shape) {
  KernelBench b = described_bench(name, file, shape_meaning, bytes_meaning, static_cast<int>(tiny_shape.size()),
                                  {DType::F32}, std::move(model_shape), tiny_shape);
  b.launchers = {name};
  return b;
}

// The masked softmax and its backward: over [B, n], with a plain variant "<name>_plain", block per bag.
KernelBench masked_softmax_family_bench(const std::string& name, const char* shape_meaning, const char* bytes_meaning) {
  KernelBench b = head_bench(name, "masked_softmax.cu", shape_meaning, bytes_meaning,
                             [](const ModelShapes& m) {
                               return Shape{m.bags, m.instances};
                             },
                             {3, 7});
  b.plain_launchers = {name + "_plain"};
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return per_bag_launch(s[0]); };
  b.launch_plain = [](const Shape& s, DType) { return thread_per_bag_launch(s[0]); };
#endif
  return b;
}

KernelBench masked_softmax_bench() {
  KernelBench b = masked_softmax_family_bench("masked_softmax", "e[B,n]", "read e, mask; write a, stats");
  b.bytes = [](const Shape& s, DType) { return 3 * 4 * s[0] * s[1] + 3 * 4 * s[0]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -4.0f, 4.0f, stream_seed(seed, 0)), false);
    p.add(random_mask(s[0], s[1], stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    MaskedSoftmaxOut out = ops::masked_softmax(in[0], in[1], kTemperature);
    return std::vector<Tensor>{out.a, out.stats};
  };
#ifdef DSMIL_WITH_CUDA
  b.plain = [](std::vector<Tensor>& in, const Shape&, DType) {
    const int64_t bags = in[0].size(0), n = in[0].size(1);
    std::vector<Tensor> out{Tensor::empty(in[0].shape(), DType::F32, Device::CUDA),
                            Tensor::empty({bags, 3}, DType::F32, Device::CUDA)};
    DSMIL_CUDA_CHECK(kernels::plain::masked_softmax_plain(in[0].f32(), in[1].i32(), bags, n, kTemperature, out[0].f32(),
                                                          out[1].f32(), cuda::stream()),
                     cuda::op_context("masked_softmax_plain", {{"e", &in[0]}, {"mask", &in[1]}}));
    return out;
  };
#endif
  return b;
}

KernelBench masked_softmax_backward_bench() {
  KernelBench b = masked_softmax_family_bench("masked_softmax_backward", "a[B,n]", "read da, a; write de");
  b.bytes = [](const Shape& s, DType) { return 3 * 4 * s[0] * s[1]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    // The attention weights of random scores, as the forward gives them.
    const Tensor e = uniform_tensor(s, -4.0f, 4.0f, stream_seed(seed, 1));
    p.add(ops::masked_softmax(e, random_mask(s[0], s[1], stream_seed(seed, 2)), kTemperature).a, false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::masked_softmax_backward(in[0], in[1], kTemperature)};
  };
#ifdef DSMIL_WITH_CUDA
  b.plain = [](std::vector<Tensor>& in, const Shape&, DType) {
    Tensor de = Tensor::empty(in[0].shape(), DType::F32, Device::CUDA);
    DSMIL_CUDA_CHECK(
        kernels::plain::masked_softmax_backward_plain(in[0].f32(), in[1].f32(), in[0].size(0), in[0].size(1),
                                                      kTemperature, de.f32(), cuda::stream()),
        cuda::op_context("masked_softmax_backward_plain", {{"da", &in[0]}, {"a", &in[1]}}));
    return std::vector<Tensor>{de};
  };
#endif
  return b;
}

KernelBench topk_bench() {
  KernelBench b = head_bench("topk_indices", "topk_gather.cu", "score[B,n],K", "read score, mask; write idx",
                             [](const ModelShapes& m) {
                               return Shape{m.bags, m.instances, m.topk};
                             },
                             {3, 9, 4});
  b.nature = Nature::Arithmetic;  // n^2 comparisons per bag
  b.bytes = [](const Shape& s, DType) { return 8 * s[0] * s[1] + 4 * s[0] * s[2]; };
  b.flops = [](const Shape& s) { return static_cast<double>(s[0]) * s[1] * s[1]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], s[1]}, -3.0f, 3.0f, stream_seed(seed, 0)), false);
    p.add(random_mask(s[0], s[1], stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    return std::vector<Tensor>{ops::topk_indices(in[0], in[1], static_cast<int>(s[2]))};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return per_bag_launch(s[0]); };
#endif
  return b;
}

// Top-k indices of random scores over a random mask, computed on the CPU (gather_mean's idx input).
Tensor random_topk(int64_t bags, int64_t n, int64_t k, uint64_t seed) {
  return ops::topk_indices(uniform_tensor({bags, n}, -3.0f, 3.0f, stream_seed(seed, 0)),
                           random_mask(bags, n, stream_seed(seed, 1)), static_cast<int>(k));
}

// gather_mean and its backward: B bags of n instances of F features, K of them selected.
Shape gather_model_shape(const ModelShapes& m) { return Shape{m.bags, m.instances, m.features, m.topk}; }

KernelBench gather_mean_bench() {
  KernelBench b = head_bench("gather_mean", "topk_gather.cu", "x[B,n,F],K",
                             "read idx and the K selected rows of x; write y", gather_model_shape, {3, 9, 5, 4});
  b.bytes = [](const Shape& s, DType) { return 4 * s[0] * s[3] * s[2] + 4 * s[0] * s[3] + 4 * s[0] * s[2]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], s[1], s[2]}, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(random_topk(s[0], s[1], s[3], stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::gather_mean(in[0], in[1])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[2]); };
#endif
  return b;
}

KernelBench gather_mean_backward_bench() {
  KernelBench b = head_bench("gather_mean_backward", "topk_gather.cu", "dx[B,n,F],K", "read dy, idx; write dx",
                             gather_model_shape, {3, 9, 5, 4});
  b.bytes = [](const Shape& s, DType) { return 4 * s[0] * s[2] + 4 * s[0] * s[3] + 4 * s[0] * s[1] * s[2]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], s[2]}, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(random_topk(s[0], s[1], s[3], stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    return std::vector<Tensor>{ops::gather_mean_backward(in[0], in[1], s[1])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[1] * s[2]); };
#endif
  return b;
}

// The three bag contractions share their inputs' shapes: a[B, n], v or q [B, n, F], m[B, F].
KernelBench contraction_bench(const char* name, const char* bytes_meaning) {
  KernelBench b = head_bench(name, "bag_contractions.cu", "v[B,n,F]", bytes_meaning,
                             [](const ModelShapes& m) {
                               return Shape{m.bags, m.instances, m.features};
                             },
                             {3, 7, 33});
  // Each reads or writes one [B, n, F], one [B, n] and one [B, F] tensor.
  b.bytes = [](const Shape& s, DType) { return 4 * (s[0] * s[1] * s[2] + s[0] * s[1] + s[0] * s[2]); };
  return b;
}

KernelBench weighted_sum_bench() {
  KernelBench b = contraction_bench("bag_weighted_sum", "read a, v; write y[B,F]");
  b.flops = [](const Shape& s) { return 2.0 * s[0] * s[1] * s[2]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], s[1]}, 0.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::bag_weighted_sum(in[0], in[1])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[2]) + " (thread per (b, f))"; };
#endif
  return b;
}

KernelBench dot_bench() {
  KernelBench b = contraction_bench("bag_dot", "read q, m; write y[B,n]");
  b.flops = [](const Shape& s) { return 2.0 * s[0] * s[1] * s[2]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(uniform_tensor({s[0], s[2]}, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::bag_dot(in[0], in[1])}; };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[1] * 32) + " (warp per (b, i))"; };
#endif
  return b;
}

KernelBench outer_bench() {
  KernelBench b = contraction_bench("bag_outer", "read a, m; write y[B,n,F]");
  b.flops = [](const Shape& s) { return 1.0 * s[0] * s[1] * s[2]; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], s[1]}, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    p.add(uniform_tensor({s[0], s[2]}, -1.0f, 1.0f, stream_seed(seed, 1)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::bag_outer(in[0], in[1])};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(s[0] * s[1] * s[2]); };
#endif
  return b;
}

KernelBench focal_loss_bench() {
  // The recommended-v2 loss: label smoothing 0.2, focal gamma 2.
  constexpr float kSmoothing = 0.2f, kGamma = 2.0f;
  KernelBench b = head_bench("focal_loss", "focal_loss.cu", "logits[B,C]",
                             "read logits, target, weight; write loss, grad, per_sample",
                             [](const ModelShapes& m) {
                               return Shape{m.bags, m.classes};
                             },
                             {5, 3});
  b.bytes = [](const Shape& s, DType) { return 8 * s[0] * s[1] + 12 * s[0] + 4; };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -4.0f, 4.0f, stream_seed(seed, 0)), false);
    p.add(random_ints({s[0]}, static_cast<int32_t>(s[1]), stream_seed(seed, 1)), false);
    p.add(uniform_tensor({s[0]}, 0.5f, 2.0f, stream_seed(seed, 2)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    FocalLossOut out = ops::focal_loss(in[0], in[1], in[2], kSmoothing, kGamma);
    return std::vector<Tensor>{out.loss, out.grad, out.per_sample};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape&, DType) { return std::string("1 x 256 (one block, thread per sample)"); };
#endif
  return b;
}

}  // namespace

void add_mil_head_benches(std::vector<KernelBench>& list) {
  list.push_back(masked_softmax_bench());
  list.push_back(masked_softmax_backward_bench());
  list.push_back(topk_bench());
  list.push_back(gather_mean_bench());
  list.push_back(gather_mean_backward_bench());
  list.push_back(weighted_sum_bench());
  list.push_back(dot_bench());
  list.push_back(outer_bench());
  list.push_back(focal_loss_bench());
}

}  // namespace dsmil::kernel_bench
