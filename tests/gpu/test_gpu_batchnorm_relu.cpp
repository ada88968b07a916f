// GPU tests of the fused batch norm + ReLU (training and eval forward, the recomputation of y from saved
// statistics, backward with and without residual and per-sample factor, and without y, its mask from x) against
// its CPU twin in f32 and bf16, on shapes that reach every vector width (16 bytes, 8 bytes, one element), partial
// channel tiles, many reduction chunks and unaligned views.
#include <cmath>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// x[..., c] = offset_c + scale_c u, u uniform in [-1, 1), scale_c from 0.1 to 10, |offset_c| <= scale_c:
// channels of different scales whose mean stays within a few ulps of agreement between the two sides.
Tensor channel_scaled(const Shape& shape) {
  Tensor t = test::random_tensor(shape);
  const int64_t c = shape.back();
  std::uniform_real_distribution<float> exponent(-1.0f, 1.0f), shift(-1.0f, 1.0f);
  std::vector<float> scale(c), offset(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    scale[ch] = std::pow(10.0f, exponent(test::rng()));
    offset[ch] = scale[ch] * shift(test::rng());
  }
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = offset[i % c] + scale[i % c] * p[i];
  return t;
}

// The values of `values`, held on the device one element past an aligned address (a view into a larger
// buffer), so that the kernels must take their one-element path.
Twin unaligned_twin(const Tensor& values, DType dtype) {
  const int64_t n = values.numel();
  std::vector<float> padded(n + 1, 0.5f);
  const std::vector<float> v = values.to_vector();
  std::copy(v.begin(), v.end(), padded.begin() + 1);
  const Twin base = twin_of(Tensor::from_vector({n + 1}, padded), dtype);
  return {base.device.narrow0(1, n + 1).view(values.shape()), base.host.narrow0(1, n + 1).view(values.shape())};
}

Twin make_twin(const Tensor& values, DType dtype, bool unaligned) {
  return unaligned ? unaligned_twin(values, dtype) : twin_of(values, dtype);
}

struct FusedCase {
  Shape shape;
  bool unaligned;  // residual and dy (the apply test: x) are unaligned views
};

constexpr float kMomentum = 0.1f, kEps = 1e-5f;

// C = 64 (bf16 16-byte groups, 8 per row), 512 (two channel tiles), 40 (5 or 10 groups), 12 (8-byte bf16
// groups), 6 (8-byte f32, one-element bf16), 5 (one element), and an unaligned case.
const std::vector<FusedCase> kWidthCases = {
    {{4, 3, 8, 8, 64}, false}, {{2, 4, 8, 8, 512}, false}, {{3, 2, 5, 7, 40}, false}, {{5, 3, 4, 6, 12}, false},
    {{4, 2, 3, 5, 6}, false},  {{3, 2, 3, 5, 5}, false},   {{4, 3, 8, 8, 64}, true}};

struct TrainResult {
  Tensor y, save_mean, save_invstd, running_mean, running_var;
};

}  // namespace

TEST_CASE("gpu fused batch norm + ReLU train / eval / backward match the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  // The widths and tiles, and 32768 rows (512 reduction chunks).
  std::vector<FusedCase> cases = kWidthCases;
  cases.push_back({{8, 4, 32, 32, 64}, false});
  for (const FusedCase& fc : cases)
    for (Precision p : {Precision::F32, Precision::BF16})
      for (const bool with_branch : {false, true}) {
        const Shape& shape = fc.shape;
        const int64_t c = shape.back(), samples = shape[0];
        const DType dtype = storage_dtype(p);
        const std::string where =
            " " + shape_str(shape) + (fc.unaligned ? " unaligned" : "") + (with_branch ? " +residual*factor" : "");
        const std::string tagged = where + " [" + precision_name(p) + "]";
        guarded("batchnorm_relu" + tagged, [&] {
          const Twin x = twin_of(channel_scaled(shape), dtype);
          const Twin gamma = random_twin({c}, DType::F32, -1.5f, 1.5f), beta = random_twin({c}, DType::F32);
          const Twin mean0 = random_twin({c}, DType::F32), var0 = random_twin({c}, DType::F32, 0.5f, 2.0f);
          Twin residual, factor;
          if (with_branch) {
            residual = make_twin(test::random_tensor(shape, -2.0f, 2.0f), dtype, fc.unaligned);
            Tensor f = test::random_tensor({samples}, 0.5f, 2.0f);
            f.f32()[samples / 2] = 0.0f;  // a dropped sample
            factor = twin_of(f, DType::F32);
          }

          const auto train = run_poisoned([&] {
            TrainResult r{Tensor(), Tensor(), Tensor(), mean0.device.clone(), var0.device.clone()};
            BatchNormTrainOut out =
                ops::batchnorm_relu_forward_train(x.device, gamma.device, beta.device, r.running_mean, r.running_var,
                                                  kMomentum, kEps, residual.device, factor.device);
            r.y = out.y;
            r.save_mean = out.save_mean;
            r.save_invstd = out.save_invstd;
            return r;
          });
          Tensor ref_mean = mean0.host.clone(), ref_var = var0.host.clone();
          const BatchNormTrainOut ref = cpu::batchnorm_relu_forward_train(
              x.host, gamma.host, beta.host, ref_mean, ref_var, kMomentum, kEps, residual.host, factor.host);
          for (const TrainResult& run : train) check_close("batchnorm_relu train y" + where, run.y, ref.y, p);
          check_close("batchnorm_relu save_mean" + where, train[0].save_mean, ref.save_mean, Precision::F32);
          check_close("batchnorm_relu save_invstd" + where, train[0].save_invstd, ref.save_invstd, Precision::F32);
          check_close("batchnorm_relu running_mean" + where, train[0].running_mean, ref_mean, Precision::F32);
          check_close("batchnorm_relu running_var" + where, train[0].running_var, ref_var, Precision::F32);
          check_identical("batchnorm_relu train y" + tagged, train[0].y, train[1].y);

          check_runs("batchnorm_relu eval" + where, run_poisoned([&] {
                       return ops::batchnorm_relu_forward_eval(x.device, gamma.device, beta.device, mean0.device,
                                                               var0.device, kEps, residual.device, factor.device);
                     }),
                     cpu::batchnorm_relu_forward_eval(x.host, gamma.host, beta.host, mean0.host, var0.host, kEps,
                                                      residual.host, factor.host),
                     p);

          // Backward from the CPU forward's y and statistics (bf16 rounding keeps y's signs, so both sides
          // mask the same elements).
          const Twin dy = make_twin(test::random_tensor(shape), dtype, fc.unaligned);
          const Twin y = twin_of(ref.y, dtype);
          const Twin save_mean = twin_of(ref.save_mean, DType::F32), save_invstd = twin_of(ref.save_invstd, DType::F32);
          const auto grads = run_poisoned([&] {
            return ops::batchnorm_relu_backward(dy.device, y.device, x.device, gamma.device, Tensor(), save_mean.device,
                                                save_invstd.device, factor.device, with_branch);
          });
          const BatchNormReluGrads ref_grads =
              cpu::batchnorm_relu_backward(dy.host, y.host, x.host, gamma.host, Tensor(), save_mean.host,
                                           save_invstd.host, factor.host, with_branch);
          for (const BatchNormReluGrads& run : grads) {
            check_close("batchnorm_relu backward dx" + where, run.dx, ref_grads.dx, p);
            check_close("batchnorm_relu backward dgamma" + where, run.dgamma, ref_grads.dgamma, Precision::F32);
            check_close("batchnorm_relu backward dbeta" + where, run.dbeta, ref_grads.dbeta, Precision::F32);
            if (with_branch)
              check_equal("batchnorm_relu backward d_residual" + tagged, run.d_residual, ref_grads.d_residual);
            else
              CHECK_FALSE(run.d_residual.defined());
          }
          check_identical("batchnorm_relu backward dx" + tagged, grads[0].dx, grads[1].dx);
          check_identical("batchnorm_relu backward dgamma" + tagged, grads[0].dgamma, grads[1].dgamma);
        });
      }
}

TEST_CASE("gpu batchnorm_relu_apply gives the training forward's y bit for bit and matches the CPU apply") {
  if (skip_without_gpu()) return;
  // The unaligned case holds x itself one element off.
  for (const FusedCase& fc : kWidthCases)
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const Shape& shape = fc.shape;
      const int64_t c = shape.back();
      const std::string where = " " + shape_str(shape) + (fc.unaligned ? " unaligned" : "");
      const std::string tagged = where + " [" + precision_name(p) + "]";
      guarded("batchnorm_relu_apply" + tagged, [&] {
        const Twin x = make_twin(channel_scaled(shape), storage_dtype(p), fc.unaligned);
        const Twin gamma = random_twin({c}, DType::F32, -1.5f, 1.5f), beta = random_twin({c}, DType::F32);
        Tensor running_mean = Tensor::zeros({c}).to(Device::CUDA),
               running_var = Tensor::full({c}, 1.0f).to(Device::CUDA);
        const BatchNormTrainOut forward = ops::batchnorm_relu_forward_train(
            x.device, gamma.device, beta.device, running_mean, running_var, kMomentum, kEps, Tensor(), Tensor());
        const auto applied = run_poisoned([&] {
          return ops::batchnorm_relu_apply(x.device, gamma.device, beta.device, forward.save_mean, forward.save_invstd);
        });
        // Recomputation must not change the gradients: the forward's very bits, in both poisoned runs.
        for (const Tensor& run : applied) {
          CHECK(run.dtype() == forward.y.dtype());
          check_equal("batchnorm_relu_apply = train y" + tagged, run, forward.y);
        }
        check_runs("batchnorm_relu_apply" + where, applied,
                   cpu::batchnorm_relu_apply(x.host, gamma.host, beta.host, forward.save_mean.to(Device::CPU),
                                             forward.save_invstd.to(Device::CPU)),
                   p);
      });
    }
}

TEST_CASE("gpu fused batch norm + ReLU backward without y (mask from x) matches the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  // No residual (the y-less path has none).
  for (const FusedCase& fc : kWidthCases)
    for (Precision p : {Precision::F32, Precision::BF16})
      for (const bool with_factor : {false, true}) {
        const Shape& shape = fc.shape;
        const int64_t c = shape.back(), samples = shape[0];
        const DType dtype = storage_dtype(p);
        const std::string where =
            " " + shape_str(shape) + (fc.unaligned ? " unaligned" : "") + (with_factor ? " factor" : "");
        const std::string tagged = where + " [" + precision_name(p) + "]";
        guarded("batchnorm_relu y-less backward" + tagged, [&] {
          const Twin x = twin_of(channel_scaled(shape), dtype);
          const Twin gamma = random_twin({c}, DType::F32, -1.5f, 1.5f), beta = random_twin({c}, DType::F32);
          Twin factor;
          if (with_factor) {
            Tensor f = test::random_tensor({samples}, 0.5f, 2.0f);
            f.f32()[samples / 2] = 0.0f;  // a dropped sample
            factor = twin_of(f, DType::F32);
          }
          // The device's own forward: the recomputed mask must be the one its y holds, bit for bit, so the CPU
          // reference masks with that y and the device's statistics (a CPU mask from x would round the
          // pre-activation its own way and may flip an element lying within an ulp of 0).
          Tensor running_mean = Tensor::zeros({c}).to(Device::CUDA),
                 running_var = Tensor::full({c}, 1.0f).to(Device::CUDA);
          const BatchNormTrainOut forward = ops::batchnorm_relu_forward_train(
              x.device, gamma.device, beta.device, running_mean, running_var, kMomentum, kEps, Tensor(), factor.device);
          const auto host = [](const Tensor& t) { return Tensor::from_vector(t.shape(), t.to_vector()); };
          const Twin dy = make_twin(test::random_tensor(shape), dtype, fc.unaligned);

          const auto grads = run_poisoned([&] {
            return ops::batchnorm_relu_backward(dy.device, Tensor(), x.device, gamma.device, beta.device,
                                                forward.save_mean, forward.save_invstd, factor.device, false);
          });
          const BatchNormReluGrads ref_grads =
              cpu::batchnorm_relu_backward(dy.host, host(forward.y), x.host, gamma.host, Tensor(),
                                           host(forward.save_mean), host(forward.save_invstd), factor.host, false);
          for (const BatchNormReluGrads& run : grads) {
            check_close("batchnorm_relu y-less backward dx" + where, run.dx, ref_grads.dx, p);
            check_close("batchnorm_relu y-less backward dgamma" + where, run.dgamma, ref_grads.dgamma, Precision::F32);
            check_close("batchnorm_relu y-less backward dbeta" + where, run.dbeta, ref_grads.dbeta, Precision::F32);
            CHECK_FALSE(run.d_residual.defined());
          }
          // The same mask and the same sums as the y path: the same bits.
          const BatchNormReluGrads from_y =
              ops::batchnorm_relu_backward(dy.device, forward.y, x.device, gamma.device, Tensor(), forward.save_mean,
                                           forward.save_invstd, factor.device, false);
          check_equal("batchnorm_relu y-less dx = y path's" + tagged, grads[0].dx, from_y.dx);
          check_equal("batchnorm_relu y-less dgamma = y path's" + tagged, grads[0].dgamma, from_y.dgamma);
          check_equal("batchnorm_relu y-less dbeta = y path's" + tagged, grads[0].dbeta, from_y.dbeta);
          check_identical("batchnorm_relu y-less backward dx" + tagged, grads[0].dx, grads[1].dx);
        });
      }
}
