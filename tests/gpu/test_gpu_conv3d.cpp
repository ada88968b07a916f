// GPU tests of conv3d forward, backward-data and backward-filter (cuDNN) against the CPU backend at the
// model's shapes (the (kd,7,7) stride-(1,2,2) stem, block convs, 1x1x1 stride-2 projections) in f32, TF32
// and bf16: the cuDNN 9.10.2-9.15 releases gave wrong bf16 / TF32 3-D convolutions (PERF-NOTES.md). Stems with
// C = 4 (bf16), 3 and 5 (both dtypes) run on channel-padded copies (tensor/cuda/conv3d.cpp, aligned_channels);
// every stem runs both on its input as it is and as its space-to-depth fold (FoldedConv there), the bf16
// fold both on cuDNN and on the hand-written implicit GEMM (kernels/conv16_forward.cu), which the 16-channel
// cases also run directly.
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

struct ConvCase {
  const char* name;
  Shape x, w;
  Conv3dGeometry g;
  bool stem = false;  // few channels, stride (1,2,2): the space-to-depth fold applies
};

// One way of running a case: the fold and the kernel of a 16-channel bf16 forward.
struct ConvWay {
  ConvFolding folding;
  ConvKernel conv16;
  const char* name;
};

// Bags of instances at the model's scales, with batch and spatial sizes cut so that the CPU reference
// stays fast; the channel counts are the model's (width 64).
const std::vector<ConvCase> kConvCases = {
    {"stem (3,7,7) s(1,2,2)", {2, 4, 64, 64, 4}, {64, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, true},
    {"stem kd=1 (1,7,7) s(1,2,2)", {2, 2, 48, 48, 4}, {64, 1, 7, 7, 4}, {{1, 7, 7}, {1, 2, 2}, {0, 3, 3}}, true},
    {"block (3,3,3) 64->64", {2, 4, 16, 16, 64}, {64, 3, 3, 3, 64}, {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},
    {"down (3,3,3) s(1,2,2) 64->128", {2, 4, 16, 16, 64}, {128, 3, 3, 3, 64}, {{3, 3, 3}, {1, 2, 2}, {1, 1, 1}}},
    {"projection 1x1x1 s(1,2,2) 64->128", {2, 4, 16, 16, 64}, {128, 1, 1, 1, 64}, {{1, 1, 1}, {1, 2, 2}, {0, 0, 0}}},
    {"projection 1x1x1 s(1,2,2) 256->512", {4, 4, 8, 8, 256}, {512, 1, 1, 1, 256}, {{1, 1, 1}, {1, 2, 2}, {0, 0, 0}}},
    {"deep (3,3,3) s(1,2,2) 256->512", {2, 4, 8, 8, 256}, {512, 3, 3, 3, 256}, {{3, 3, 3}, {1, 2, 2}, {1, 1, 1}}},
    {"stem C=3 (3,7,7) s(1,2,2)", {2, 4, 32, 32, 3}, {64, 3, 7, 7, 3}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, true},
    {"stem C=5 (3,7,7) s(1,2,2) odd sizes",
     {2, 3, 27, 29, 5},
     {64, 3, 7, 7, 5},
     {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}},
     true},
    // The implicit GEMM's own edges: partial tiles in H and W, two 64-filter slices, padding on every axis.
    {"16 channels (3,4,4) 16->128 pad (1,1,2) odd sizes",
     {2, 3, 9, 70, 16},
     {128, 3, 4, 4, 16},
     {{3, 4, 4}, {1, 1, 1}, {1, 1, 2}}},
    {"16 channels (1,3,3) 16->64 pad (0,1,1)", {3, 2, 5, 17, 16}, {64, 1, 3, 3, 16}, {{1, 3, 3}, {1, 1, 1}, {0, 1, 1}}},
};

std::string label(const ConvCase& c, const char* pass) { return std::string("conv3d ") + pass + " " + c.name; }

std::vector<ConvWay> ways_of(const ConvCase& c) {
  if (c.stem)
    return {{ConvFolding::never, ConvKernel::cudnn, " unfolded"},
            {ConvFolding::always, ConvKernel::cudnn, " folded"},
            {ConvFolding::always, ConvKernel::implicit_gemm, " folded, implicit GEMM where it applies"}};
  if (c.x[4] == 16)
    return {{ConvFolding::measured, ConvKernel::cudnn, " cuDNN"},
            {ConvFolding::measured, ConvKernel::implicit_gemm, " implicit GEMM where it applies"}};
  return {{ConvFolding::measured, ConvKernel::measured, ""}};
}

}  // namespace

TEST_CASE("gpu conv3d forward, backward data and backward filter at model shapes in f32, TF32 and bf16") {
  if (skip_without_gpu()) return;
  for (const ConvCase& c : kConvCases) {
    const Shape y_shape = ops::conv3d_output_shape(c.x, c.w, c.g);
    const Tensor x_values = test::random_tensor(c.x), w_values = test::random_tensor(c.w, -0.2f, 0.2f);
    const Tensor dy_values = test::random_tensor(y_shape);
    for (const ConvWay& way : ways_of(c))
      for (Precision p : {Precision::F32, Precision::TF32, Precision::BF16}) {
        const auto mode = math_for(p, /*deterministic=*/false, way.folding, way.conv16);
        const DType dt = storage_dtype(p);
        const Twin x = twin_of(x_values, dt), w = twin_of(w_values, dt), dy = twin_of(dy_values, dt);
        const std::string how = way.name, tag = std::string(" [") + precision_name(p) + "]";
        guarded(label(c, "forward") + how + tag, [&] {
          const int64_t launches = cuda::conv16_forward_launches();
          check_runs(label(c, "forward") + how,
                     run_poisoned([&] { return ops::conv3d_forward(x.device, w.device, c.g, mode); }),
                     cpu::conv3d_forward(x.host, w.host, c.g, mode), p);
          // Forced, the implicit GEMM must have run wherever it applies: bf16 with 16 channels, the stem's as its fold.
          const int64_t channels = c.stem ? (c.x[4] * 4 + 7) / 8 * 8 : c.x[4];
          if (way.conv16 == ConvKernel::implicit_gemm && p == Precision::BF16 && channels == 16)
            CHECK(cuda::conv16_forward_launches() > launches);
        });
        guarded(label(c, "dgrad") + how + tag, [&] {
          check_runs(label(c, "dgrad") + how,
                     run_poisoned([&] { return ops::conv3d_backward_data(dy.device, w.device, c.x, c.g, mode); }),
                     cpu::conv3d_backward_data(dy.host, w.host, c.x, c.g, mode), p);
        });
        guarded(label(c, "wgrad") + how + tag, [&] {
          check_runs(label(c, "wgrad") + how,
                     run_poisoned([&] { return ops::conv3d_backward_filter(x.device, dy.device, c.w, c.g, mode); }),
                     cpu::conv3d_backward_filter(x.host, dy.host, c.w, c.g, mode), p);
        });
      }
  }
}

TEST_CASE("gpu implicit GEMM: blocks that loop over several tiles, the same filter slice reused") {
  if (skip_without_gpu()) return;
  // 80 x 8 planes of one 8x16 tile each: 640 tiles, several per block on any GPU of up to 320 SMs (the
  // grid has one block per SM), with the reuse of the input window and the staging area between tiles.
  const ConvCase c{"16 channels (1,2,2) 16->64, 640 tiles",
                   {80, 8, 9, 17, 16},
                   {64, 1, 2, 2, 16},
                   {{1, 2, 2}, {1, 1, 1}, {0, 0, 0}}};
  const auto mode =
      math_for(Precision::BF16, /*deterministic=*/false, ConvFolding::measured, ConvKernel::implicit_gemm);
  const Twin x = random_twin(c.x, DType::BF16), w = random_twin(c.w, DType::BF16, -0.2f, 0.2f);
  guarded(label(c, "forward") + " [bf16]", [&] {
    const int64_t launches = cuda::conv16_forward_launches();
    check_runs(label(c, "forward"), run_poisoned([&] { return ops::conv3d_forward(x.device, w.device, c.g, mode); }),
               cpu::conv3d_forward(x.host, w.host, c.g, mode), Precision::BF16);
    CHECK(cuda::conv16_forward_launches() > launches);
  });
}

TEST_CASE("gpu conv3d in deterministic mode: deterministic algorithms, bit-identical reruns") {
  if (skip_without_gpu()) return;
  for (const ConvCase& c : {kConvCases[0], kConvCases[3], kConvCases[4], kConvCases[7]}) {
    const Shape y_shape = ops::conv3d_output_shape(c.x, c.w, c.g);
    for (Precision p : {Precision::TF32, Precision::BF16}) {
      const auto mode = math_for(p, /*deterministic=*/true);
      const DType dt = storage_dtype(p);
      const Twin x = random_twin(c.x, dt), w = random_twin(c.w, dt, -0.2f, 0.2f), dy = random_twin(y_shape, dt);
      const std::string tag = std::string(" deterministic [") + precision_name(p) + "]";
      guarded(label(c, "dgrad") + tag, [&] {
        const auto dgrad = run_poisoned([&] { return ops::conv3d_backward_data(dy.device, w.device, c.x, c.g, mode); });
        check_identical(label(c, "dgrad") + tag, dgrad[0], dgrad[1]);
        check_runs(label(c, "dgrad deterministic"), dgrad, cpu::conv3d_backward_data(dy.host, w.host, c.x, c.g, mode),
                   p);
      });
      guarded(label(c, "wgrad") + tag, [&] {
        const auto wgrad =
            run_poisoned([&] { return ops::conv3d_backward_filter(x.device, dy.device, c.w, c.g, mode); });
        check_identical(label(c, "wgrad") + tag, wgrad[0], wgrad[1]);
        check_runs(label(c, "wgrad deterministic"), wgrad, cpu::conv3d_backward_filter(x.host, dy.host, c.w, c.g, mode),
                   p);
      });
    }
  }
}

TEST_CASE("gpu conv3d refuses inputs that do not fit, naming the op and the shapes") {
  if (skip_without_gpu()) return;
  const Conv3dGeometry g{{3, 3, 3}, {1, 1, 1}, {1, 1, 1}};
  const Tensor x = Tensor::zeros({1, 4, 8, 8, 16}, DType::F32, Device::CUDA);
  const Tensor w_wrong_channels = Tensor::zeros({8, 3, 3, 3, 12}, DType::F32, Device::CUDA);
  CHECK_THROWS_AS(ops::conv3d_forward(x, w_wrong_channels, g, MathMode{}), ShapeError);
  const Tensor w_bf16 = Tensor::zeros({8, 3, 3, 3, 16}, DType::BF16, Device::CUDA);
  CHECK_THROWS_WITH_AS(ops::conv3d_forward(x, w_bf16, g, MathMode{}), doctest::Contains("conv3d_forward"), ShapeError);
  const Tensor dy_wrong = Tensor::zeros({1, 4, 8, 8, 9}, DType::F32, Device::CUDA);
  const Tensor w = Tensor::zeros({8, 3, 3, 3, 16}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(ops::conv3d_backward_data(dy_wrong, w, x.shape(), g, MathMode{}),
                       doctest::Contains("[1,4,8,8,9]"), ShapeError);
}
