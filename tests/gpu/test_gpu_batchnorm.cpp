// GPU tests of batch norm (train, eval, backward), each against its CPU twin in f32 and bf16.
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

struct BatchNormTrainResult {
  Tensor y, save_mean, save_invstd, running_mean, running_var;
};

BatchNormTrainResult batchnorm_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& mean0,
                                     const Tensor& var0, float momentum, float eps) {
  Tensor running_mean = mean0.clone(), running_var = var0.clone();
  BatchNormTrainOut out = ops::batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps);
  return {out.y, out.save_mean, out.save_invstd, running_mean, running_var};
}

}  // namespace

TEST_CASE("gpu batch norm train / eval / backward match the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  // Channel counts off the 32-channel tiles and off the 16-byte packs (C = 6: one channel a thread in bf16, 8-byte
  // packs in f32; C = 12: 8-byte packs in bf16), row counts from a few hundred to many chunks, chunks that leave
  // some of a block's rows empty; inputs centred at 2 so that a one-pass variance would lose digits.
  const std::vector<Shape> shapes = {{4, 3, 8, 8, 64},  {8, 4, 32, 32, 64}, {3, 2, 5, 7, 40},
                                     {2, 4, 8, 8, 512}, {3, 5, 7, 6},       {2, 3, 50, 12}};
  const float momentum = 0.1f, eps = 1e-5f;
  for (const Shape& shape : shapes)
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const int64_t c = shape.back();
      const std::string where = " " + shape_str(shape);
      const std::string tagged = where + " [" + precision_name(p) + "]";
      const Twin x = random_twin(shape, storage_dtype(p), -1.0f, 5.0f);
      const Twin gamma = random_twin({c}, DType::F32, 0.5f, 1.5f), beta = random_twin({c}, DType::F32);
      const Twin mean0 = random_twin({c}, DType::F32), var0 = random_twin({c}, DType::F32, 0.5f, 2.0f);

      const auto train = run_poisoned([&] {
        return batchnorm_train(x.device, gamma.device, beta.device, mean0.device, var0.device, momentum, eps);
      });
      Tensor ref_mean = mean0.host.clone(), ref_var = var0.host.clone();
      const BatchNormTrainOut ref =
          cpu::batchnorm_forward_train(x.host, gamma.host, beta.host, ref_mean, ref_var, momentum, eps);
      for (const BatchNormTrainResult& run : train) {
        check_close("batchnorm train y" + where, run.y, ref.y, p);
        check_close("batchnorm train save_mean" + where, run.save_mean, ref.save_mean, Precision::F32);
        check_close("batchnorm train save_invstd" + where, run.save_invstd, ref.save_invstd, Precision::F32);
        check_close("batchnorm train running_mean" + where, run.running_mean, ref_mean, Precision::F32);
        check_close("batchnorm train running_var" + where, run.running_var, ref_var, Precision::F32);
      }
      check_identical("batchnorm train y" + tagged, train[0].y, train[1].y);

      check_runs("batchnorm eval" + where, run_poisoned([&] {
                   return ops::batchnorm_forward_eval(x.device, gamma.device, beta.device, mean0.device, var0.device,
                                                      eps);
                 }),
                 cpu::batchnorm_forward_eval(x.host, gamma.host, beta.host, mean0.host, var0.host, eps), p);

      const Twin dy = random_twin(shape, storage_dtype(p));
      const Twin save_mean = twin_of(ref.save_mean, DType::F32), save_invstd = twin_of(ref.save_invstd, DType::F32);
      const auto grads = run_poisoned([&] {
        return ops::batchnorm_backward(dy.device, x.device, gamma.device, save_mean.device, save_invstd.device);
      });
      const BatchNormGrads ref_grads =
          cpu::batchnorm_backward(dy.host, x.host, gamma.host, save_mean.host, save_invstd.host);
      for (const BatchNormGrads& run : grads) {
        check_close("batchnorm backward dx" + where, run.dx, ref_grads.dx, p);
        check_close("batchnorm backward dgamma" + where, run.dgamma, ref_grads.dgamma, Precision::F32);
        check_close("batchnorm backward dbeta" + where, run.dbeta, ref_grads.dbeta, Precision::F32);
      }
      check_identical("batchnorm backward dgamma" + tagged, grads[0].dgamma, grads[1].dgamma);
    }
}

TEST_CASE("gpu batch norm eval: channels off the 16-byte packs, misaligned views, several rows per thread") {
  if (skip_without_gpu()) return;
  // C = 6 takes 8-byte packs in f32 and one channel at a time in bf16, C = 12 16-byte packs in f32 and 8-byte
  // packs in bf16; [2, 180000, 6] gives each thread more than one step of its two-row loop; a view one element
  // into its storage is misaligned whatever C is, one 8 elements in is aligned again.
  struct EvalCase {
    Shape shape;
    int64_t offset;
  };
  const std::vector<EvalCase> cases = {
      {{3, 5, 7, 6}, 0}, {{2, 3, 5, 12}, 0}, {{2, 180000, 6}, 0}, {{3, 111, 64}, 1}, {{3, 111, 64}, 8}};
  const float eps = 1e-5f;
  for (const EvalCase& ec : cases)
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const int64_t c = ec.shape.back(), n = shape_numel(ec.shape);
      const std::string where = " " + shape_str(ec.shape) + " offset " + std::to_string(ec.offset);
      const Twin base = random_twin({ec.offset + n}, storage_dtype(p), -1.0f, 5.0f);
      const Tensor x_device = base.device.narrow0(ec.offset, ec.offset + n).view(ec.shape);
      const Tensor x_host = base.host.narrow0(ec.offset, ec.offset + n).view(ec.shape);
      const Twin gamma = random_twin({c}, DType::F32, 0.5f, 1.5f), beta = random_twin({c}, DType::F32);
      const Twin mean = random_twin({c}, DType::F32), var = random_twin({c}, DType::F32, 0.5f, 2.0f);
      check_runs("batchnorm eval" + where, run_poisoned([&] {
                   return ops::batchnorm_forward_eval(x_device, gamma.device, beta.device, mean.device, var.device,
                                                      eps);
                 }),
                 cpu::batchnorm_forward_eval(x_host, gamma.host, beta.host, mean.host, var.host, eps), p);
    }
}
