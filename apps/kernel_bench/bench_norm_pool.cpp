// Bench entries of the encoder's normalisation and pooling kernels at the encoder's activation shapes
// x[N, D, H, W, C]: batch-norm statistics, training and eval forward, backward; max pooling (the stem's
// window) forward and backward; global average pooling and its backward; the space-to-depth fold the CUDA
// backend runs the stem convolution on (tensor/cuda/conv3d.cpp) and its adjoint, at the model's input.
#include <fmt/format.h>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include <cuda_bf16.h>

#include "apps/kernel_bench/device_helpers.h"
#include "kernels/batchnorm.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#endif

namespace dsmil::kernel_bench {

namespace {

constexpr float kMomentum = 0.1f, kEps = 1e-5f;
// The stem's max pooling (DESIGN section 3): kernel (1, 3, 3), stride (1, 2, 2), padding (0, 1, 1).
const Pool3dGeometry kStemPool{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}};

int64_t channels(const Shape& s) { return s.back(); }
int64_t rows(const Shape& s) { return shape_numel(s) / s.back(); }

// An entry over an activation x[N, D, H, W, C] at the stem's output (the largest the step normalises).
KernelBench activation_bench(const char* name, const char* file, const char* bytes_meaning) {
  return described_bench(name, file, "x[N,D,H,W,C]", bytes_meaning, 5, {DType::F32, DType::BF16},
                         [](const ModelShapes& m) { return m.stem; }, {2, 3, 5, 6, 40});
}

// x (centred off zero so that a one-pass variance would lose digits), gamma, beta, running mean and var.
Problem batchnorm_inputs(const Shape& s, DType dtype, uint64_t seed) {
  const Shape c{channels(s)};
  Problem p;
  p.add(uniform_tensor(s, -1.0f, 3.0f, stream_seed(seed, 0), dtype), true);
  p.add(uniform_tensor(c, 0.5f, 1.5f, stream_seed(seed, 1)), false);
  p.add(uniform_tensor(c, -0.5f, 0.5f, stream_seed(seed, 2)), false);
  p.add(uniform_tensor(c, -0.5f, 0.5f, stream_seed(seed, 3)), false);
  p.add(uniform_tensor(c, 0.5f, 2.0f, stream_seed(seed, 4)), false);
  return p;
}

#ifdef DSMIL_WITH_CUDA
std::string statistics_launch(const Shape& s) {
  return fmt::format("sums (vectorised channel tiles x at most 512 row chunks, kernels/channel_groups.cuh) + "
                     "finalize {} x 256 (a warp per channel)",
                     (32 * channels(s) + 255) / 256);
}
#endif

KernelBench batchnorm_statistics_bench() {
  KernelBench b = activation_bench("batchnorm_statistics", "batchnorm.cu",
                                   "read x; read and write running stats; write save_mean, save_invstd");
  b.launchers = {"batchnorm_statistics"};
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * shape_numel(s) + 24 * channels(s); };
  b.draw = batchnorm_inputs;
  // The statistics have no op of their own: the reference is the training forward's.
  b.reference = [](std::vector<Tensor>& in, const Shape&, DType) {
    BatchNormTrainOut out = ops::batchnorm_forward_train(in[0], in[1], in[2], in[3], in[4], kMomentum, kEps);
    return std::vector<Tensor>{out.save_mean, out.save_invstd, in[3], in[4]};
  };
#ifdef DSMIL_WITH_CUDA
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    const int64_t c = channels(s);
    std::vector<Tensor> out{Tensor::empty({c}, DType::F32, Device::CUDA), Tensor::empty({c}, DType::F32, Device::CUDA),
                            in[3], in[4]};
    cuda::DeviceBuffer scratch(kernels::batchnorm_scratch_size(rows(s), c) * sizeof(double));
    const auto statistics = [&](auto* x) {
      DSMIL_CUDA_CHECK(kernels::batchnorm_statistics(x, in[3].f32(), in[4].f32(), kMomentum, kEps, rows(s), c,
                                                     out[0].f32(), out[1].f32(), scratch.as<double>(), cuda::stream()),
                       cuda::op_context("batchnorm_statistics", {{"x", &in[0]}}));
    };
    if (in[0].dtype() == DType::BF16)
      statistics(in[0].data<__nv_bfloat16>());
    else
      statistics(in[0].f32());
    return out;
  };
  b.launch_fast = [](const Shape& s, DType) { return statistics_launch(s); };
#endif
  return b;
}

KernelBench batchnorm_train_bench() {
  KernelBench b = activation_bench("batchnorm_forward_train", "batchnorm.cu",
                                   "read x; write y (the statistics pass reads x once more)");
  b.launchers = {"batchnorm_forward_train"};
  b.bytes = [](const Shape& s, DType d) { return 2 * element_bytes(d) * shape_numel(s) + 32 * channels(s); };
  b.draw = batchnorm_inputs;
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    BatchNormTrainOut out = ops::batchnorm_forward_train(in[0], in[1], in[2], in[3], in[4], kMomentum, kEps);
    return std::vector<Tensor>{out.y, out.save_mean, out.save_invstd, in[3], in[4]};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) {
    return statistics_launch(s) + " + normalize " + grid_stride_launch(shape_numel(s));
  };
#endif
  return b;
}

KernelBench batchnorm_eval_bench() {
  KernelBench b = activation_bench("batchnorm_forward_eval", "batchnorm.cu", "read x; write y");
  b.launchers = {"batchnorm_forward_eval"};
  b.bytes = [](const Shape& s, DType d) { return 2 * element_bytes(d) * shape_numel(s) + 16 * channels(s); };
  b.draw = batchnorm_inputs;
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::batchnorm_forward_eval(in[0], in[1], in[2], in[3], in[4], kEps)};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) {
    return fmt::format("one launch: {} channel groups of 16 bytes, rows strided over the grid", channels(s));
  };
#endif
  return b;
}

KernelBench batchnorm_backward_bench() {
  KernelBench b = activation_bench("batchnorm_backward", "batchnorm.cu",
                                   "read dy, x; write dx (the sums pass reads dy, x once more)");
  b.launchers = {"batchnorm_backward"};
  b.bytes = [](const Shape& s, DType d) { return 3 * element_bytes(d) * shape_numel(s) + 20 * channels(s); };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    const Problem forward = batchnorm_inputs(s, dtype, seed);
    std::vector<Tensor> in = forward.inputs;
    const BatchNormTrainOut saved = ops::batchnorm_forward_train(in[0], in[1], in[2], in[3], in[4], kMomentum, kEps);
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 5), dtype), true);
    p.add(in[0], true);
    p.add(in[1], false);
    p.add(saved.save_mean, false);
    p.add(saved.save_invstd, false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    BatchNormGrads g = ops::batchnorm_backward(in[0], in[1], in[2], in[3], in[4]);
    return std::vector<Tensor>{g.dx, g.dgamma, g.dbeta};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) {
    return statistics_launch(s) + " + dx " + grid_stride_launch(shape_numel(s));
  };
#endif
  return b;
}

#ifdef DSMIL_WITH_CUDA
// The max-pool kernels' grid over `elements`: a thread per 16 bytes of channels where C allows (the
// bench's tensors are aligned), else per channel.
std::string maxpool_launch(int64_t elements, const Shape& s, DType d) {
  const int64_t wide = 16 / element_bytes(d), group = channels(s) % wide == 0 ? wide : 1;
  return fmt::format("{} ({} channels a thread)", grid_stride_launch(elements / group), group);
}
#endif

KernelBench maxpool_forward_bench() {
  KernelBench b = activation_bench("maxpool3d_forward", "maxpool3d.cu", "read x; write y, argmax");
  b.launchers = {"maxpool3d_forward"};
  b.bytes = [](const Shape& s, DType d) {
    return element_bytes(d) * shape_numel(s) +
           (element_bytes(d) + 1) * shape_numel(ops::pool3d_output_shape(s, kStemPool));
  };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    MaxPoolOut out = ops::maxpool3d_forward(in[0], kStemPool);
    return std::vector<Tensor>{out.y, out.argmax};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType d) {
    return maxpool_launch(shape_numel(ops::pool3d_output_shape(s, kStemPool)), s, d) + " per output";
  };
#endif
  return b;
}

// dy and argmax of the stem's pooling of a random x (argmax from the CPU forward).
Problem maxpool_backward_inputs(const Shape& s, DType dtype, uint64_t seed) {
  const MaxPoolOut forward =
      ops::maxpool3d_forward(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), kStemPool);
  Problem p;
  p.add(uniform_tensor(forward.y.shape(), -1.0f, 1.0f, stream_seed(seed, 1), dtype), true);
  p.add(forward.argmax, false);
  return p;
}

KernelBench maxpool_backward_bench() {
  KernelBench b = activation_bench("maxpool3d_backward", "maxpool3d.cu", "read dy, argmax; write dx");
  b.launchers = {"maxpool3d_backward"};
  b.bytes = [](const Shape& s, DType d) {
    return element_bytes(d) * shape_numel(s) +
           (element_bytes(d) + 1) * shape_numel(ops::pool3d_output_shape(s, kStemPool));
  };
  b.draw = maxpool_backward_inputs;
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    return std::vector<Tensor>{ops::maxpool3d_backward(in[0], in[1], s, kStemPool)};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType d) { return maxpool_launch(shape_numel(s), s, d) + " per input, gathered"; };
#endif
  return b;
}

KernelBench global_avg_pool_bench() {
  KernelBench b = activation_bench("global_avg_pool", "global_avg_pool.cu", "read x; write y[N,C] (F32)");
  b.launchers = {"global_avg_pool"};
  b.model_shape = [](const ModelShapes& m) { return m.stages[3]; };
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * shape_numel(s) + 4 * s[0] * channels(s); };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) { return std::vector<Tensor>{ops::global_avg_pool(in[0])}; };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) {
    return fmt::format("({}, {}) x (32, 8)", (channels(s) + 31) / 32, s[0]);
  };
#endif
  return b;
}

KernelBench global_avg_pool_backward_bench() {
  KernelBench b = activation_bench("global_avg_pool_backward", "global_avg_pool.cu", "read dy[N,C] (F32); write dx");
  b.launchers = {"global_avg_pool_backward"};
  b.model_shape = [](const ModelShapes& m) { return m.stages[3]; };
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * shape_numel(s) + 4 * s[0] * channels(s); };
  b.draw = [](const Shape& s, DType, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor({s[0], channels(s)}, -1.0f, 1.0f, stream_seed(seed, 0)), false);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType storage) {
    return std::vector<Tensor>{ops::global_avg_pool_backward(in[0], s, storage)};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) { return grid_stride_launch(shape_numel(s)); };
#endif
  return b;
}

// The stem's fold (DESIGN section 3: kernel (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3)) of an input
// x[N, D, H, W, C]: 2x2 blocks, the 7-tap filter in 4 taps, channels rounded up to 8 (16 bytes of bf16, as
// the convolution aligns them; the same in both dtypes so that the CPU twin folds alike).
SpaceToDepthGeometry stem_fold(const Shape& x) {
  const int64_t out_h = (x[2] + 6 - 7) / 2 + 1, out_w = (x[3] + 6 - 7) / 2 + 1;
  return {2, 2, 3, 3, out_h + 3, out_w + 3, (4 * x[4] + 7) / 8 * 8};
}

#ifdef DSMIL_WITH_CUDA
// The fold kernels' grid: a thread per written word, the widest of 16, 8, 4, 2 bytes that divides a run of
// C channels and a folded pixel (kernels/space_to_depth.cu; the bench's tensors are aligned).
std::string fold_launch(int64_t written_elements, const Shape& s, DType d) {
  const int64_t run_bytes = channels(s) * element_bytes(d), pixel_bytes = stem_fold(s).folded_c * element_bytes(d);
  int64_t word = 16;
  while (run_bytes % word != 0 || pixel_bytes % word != 0) word /= 2;
  return fmt::format("{} (a thread per {}-byte word)", grid_stride_launch(written_elements * element_bytes(d) / word),
                     word);
}
#endif

int64_t fold_bytes(const Shape& s, DType d) {
  return element_bytes(d) *
         (shape_numel(s) + shape_numel(ops::space_to_depth_shape("space_to_depth", s, stem_fold(s))));
}

// An entry of a fold kernel: its launcher has the entry's name; bytes of x and of the stem's fold.
KernelBench fold_bench(const char* name, const char* bytes_meaning) {
  KernelBench b =
      described_bench(name, "space_to_depth.cu", "x[N,D,H,W,C] (unfolded)", bytes_meaning, 5, {DType::F32, DType::BF16},
                      [](const ModelShapes& m) { return m.input; }, {2, 3, 9, 10, 3});
  b.launchers = {name};
  b.bytes = fold_bytes;
  return b;
}

KernelBench space_to_depth_bench() {
  KernelBench b = fold_bench("space_to_depth", "read x; write xs");
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    return std::vector<Tensor>{ops::space_to_depth(in[0], stem_fold(s))};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType d) {
    return fold_launch(shape_numel(ops::space_to_depth_shape("space_to_depth", s, stem_fold(s))), s, d);
  };
#endif
  return b;
}

KernelBench depth_to_space_bench() {
  KernelBench b = fold_bench("depth_to_space", "read xs; write x");
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(ops::space_to_depth_shape("depth_to_space", s, stem_fold(s)), -1.0f, 1.0f,
                         stream_seed(seed, 0), dtype),
          true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) {
    return std::vector<Tensor>{ops::depth_to_space(in[0], stem_fold(s), s)};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType d) { return fold_launch(shape_numel(s), s, d); };
#endif
  return b;
}

}  // namespace

void add_norm_pool_benches(std::vector<KernelBench>& list) {
  list.push_back(batchnorm_statistics_bench());
  list.push_back(batchnorm_train_bench());
  list.push_back(batchnorm_eval_bench());
  list.push_back(batchnorm_backward_bench());
  list.push_back(maxpool_forward_bench());
  list.push_back(maxpool_backward_bench());
  list.push_back(global_avg_pool_bench());
  list.push_back(global_avg_pool_backward_bench());
  list.push_back(space_to_depth_bench());
  list.push_back(depth_to_space_bench());
}

}  // namespace dsmil::kernel_bench
