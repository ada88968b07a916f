// Bench entry of the hand-written convolution: the implicit GEMM that runs the folded stem's bf16 forward
// (kernels/conv16_forward.cu) at the stem's space-to-depth fold of the model's input, forced over cuDNN.
#include <fmt/format.h>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"

namespace dsmil::kernel_bench {

namespace {

// The stem (DESIGN section 3: kernel (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3), 64 filters) as the
// stride-1 convolution of its fold: 3x4x4 taps over 16 channels, depth padding 1 (tensor/cuda/conv3d.cpp).
constexpr int64_t kFilters = 64;
const Conv3dGeometry kFoldedStem{{3, 4, 4}, {1, 1, 1}, {1, 0, 0}};

Shape filter_shape(const Shape& xs) { return {kFilters, 3, 4, 4, xs[4]}; }

// The implicit GEMM on CUDA tensors, whatever the timing would pick (the CPU backend does not read the mode).
MathMode forced_implicit_gemm() {
  MathMode mode;
  mode.conv16_forward = ConvKernel::implicit_gemm;
  return mode;
}

KernelBench conv16_forward_bench() {
  KernelBench b =
      described_bench("conv16_forward", "conv16_forward.cu", "xs[N,D,H,W,16] (the stem's fold; w[64,3,4,4,16])",
                      "read xs, w; write y", 5, {DType::BF16},
                      [](const ModelShapes& m) {
                        return Shape{m.input[0], m.input[1], m.stem[2] + 3, m.stem[3] + 3, 4 * m.input[4]};
                      },
                      {2, 3, 9, 21, 16});
  b.launchers = {"conv16_forward"};
  b.nature = Nature::Arithmetic;
  b.bytes = [](const Shape& s, DType d) {
    const Shape y = ops::conv3d_output_shape(s, filter_shape(s), kFoldedStem);
    return element_bytes(d) * (shape_numel(s) + shape_numel(filter_shape(s)) + shape_numel(y));
  };
  b.flops = [](const Shape& s) {
    const Shape y = ops::conv3d_output_shape(s, filter_shape(s), kFoldedStem);
    return 2.0 * static_cast<double>(shape_numel(y)) * 3 * 4 * 4 * s[4];
  };
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    p.add(uniform_tensor(filter_shape(s), -0.2f, 0.2f, stream_seed(seed, 1), dtype), true);
    return p;
  };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{ops::conv3d_forward(in[0], in[1], kFoldedStem, forced_implicit_gemm())};
  };
#ifdef DSMIL_WITH_CUDA
  b.launch_fast = [](const Shape& s, DType) {
    return fmt::format("one block of 256 per SM looping over {} tiles of 8x64 positions",
                       s[0] * s[1] * ((s[2] - 3 + 7) / 8) * ((s[3] - 3 + 63) / 64));
  };
#endif
  return b;
}

}  // namespace

void add_convolution_benches(std::vector<KernelBench>& list) { list.push_back(conv16_forward_bench()); }

}  // namespace dsmil::kernel_bench
