// GPU tests of batch norm (train, eval, backward), max pooling with argmax and its backward,
// global average pooling and the dropout / drop-path masks, each against its CPU twin in f32 and bf16.
#include <random>

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

// 1 where y != 0: the kept elements of a dropout output (inputs are random, never exactly 0).
Tensor kept_mask(const Tensor& y) {
  std::vector<float> v = y.to_vector();
  for (float& e : v) e = e != 0.0f ? 1.0f : 0.0f;
  return Tensor::from_vector(y.shape(), v);
}

uint64_t random_u64() { return test::rng()(); }

// Values from {-1.5, -1, -0.5, 0.5, 1, 1.5} (exact in bf16): a 3x3 window almost always holds a tie.
Tensor small_set_tensor(const Shape& shape) {
  std::uniform_int_distribution<int> pick(0, 5);
  std::vector<float> v(shape_numel(shape));
  for (float& e : v) {
    const int k = pick(test::rng());
    e = 0.5f * static_cast<float>(k < 3 ? k - 3 : k - 2);
  }
  return Tensor::from_vector(shape, v);
}

}  // namespace

TEST_CASE("gpu batch norm train / eval / backward match the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  // Channel counts off the 32-channel tiles, and row counts from a few hundred to many chunks; inputs
  // centred at 2 so that a one-pass variance would lose digits.
  const std::vector<Shape> shapes = {{4, 3, 8, 8, 64}, {8, 4, 32, 32, 64}, {3, 2, 5, 7, 40}, {2, 4, 8, 8, 512}};
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
  // C = 6 is element by element in f32 and bf16, C = 12 takes 16-byte packs in f32 only (bf16 packs are 8
  // channels); [2, 180000, 6] gives each thread more than one step of its two-row loop; a view one element
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

TEST_CASE("gpu max pooling: values, argmax and the gathered backward equal the CPU's bit for bit") {
  if (skip_without_gpu()) return;
  struct PoolCase {
    Shape x;
    Pool3dGeometry g;
  };
  // C = 64 and 24 take the 16-byte channel groups in f32 and bf16, C = 12 only in f32 (bf16 groups are 8
  // channels), C = 6 in neither; odd sizes put windows on the padding at both ends.
  const std::vector<PoolCase> cases = {
      {{2, 4, 32, 32, 64}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},  // the stem's pool
      {{2, 3, 13, 15, 12}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},  // the stem's window, odd sizes
      {{3, 2, 9, 7, 6}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},
      {{2, 6, 9, 11, 24}, {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}}},   // overlapping windows on every axis
      {{1, 5, 7, 9, 8}, {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},     // stride 1: up to 27 windows per position
      {{2, 4, 10, 11, 16}, {{1, 2, 2}, {1, 3, 3}, {0, 0, 0}}},  // stride > kernel: positions no window covers
  };
  for (const PoolCase& pc : cases)
    for (Precision p : {Precision::F32, Precision::BF16})
      // Continuous values, then values from a small set so that windows hold ties (the first maximum in
      // (d, h, w) order must win, and a position may win several windows).
      for (const bool ties : {false, true}) {
        const std::string where = " " + shape_str(pc.x) + (ties ? " ties" : "");
        const std::string tagged = where + " [" + precision_name(p) + "]";
        const Twin x = ties ? twin_of(small_set_tensor(pc.x), storage_dtype(p)) : random_twin(pc.x, storage_dtype(p));
        const auto fwd = run_poisoned([&] { return ops::maxpool3d_forward(x.device, pc.g); });
        const MaxPoolOut ref = cpu::maxpool3d_forward(x.host, pc.g);
        for (const MaxPoolOut& run : fwd) {
          check_equal("maxpool3d y" + tagged, run.y, ref.y);
          check_equal("maxpool3d argmax" + tagged, run.argmax, ref.argmax);
        }
        // Each position sums its windows' dy in ascending output order, as the CPU does, in fp32 and
        // rounds once: the CPU's result rounded to the storage dtype, exactly.
        const Twin dy = random_twin(ref.y.shape(), storage_dtype(p));
        const Twin argmax = int_twin(ref.argmax);
        const Tensor ref_dx = twin_of(cpu::maxpool3d_backward(dy.host, argmax.host, pc.x, pc.g), storage_dtype(p)).host;
        const auto dx = run_poisoned([&] { return ops::maxpool3d_backward(dy.device, argmax.device, pc.x, pc.g); });
        check_equal("maxpool3d backward dx (NaN poison)" + tagged, dx[0], ref_dx);
        check_equal("maxpool3d backward dx (huge poison)" + tagged, dx[1], ref_dx);
      }
}

TEST_CASE("gpu global average pooling and its backward match the CPU") {
  if (skip_without_gpu()) return;
  const Shape shape{6, 4, 8, 8, 520};
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const Twin x = random_twin(shape, storage_dtype(p));
    // y is F32 whatever x is: only the summation order differs.
    const auto y = run_poisoned([&] { return ops::global_avg_pool(x.device); });
    check_runs(std::string("global_avg_pool x ") + precision_name(p), y, cpu::global_avg_pool(x.host), Precision::F32);
    const Twin dy = random_twin({shape[0], shape[4]}, DType::F32);
    check_runs("global_avg_pool_backward",
               run_poisoned([&] { return ops::global_avg_pool_backward(dy.device, shape, storage_dtype(p)); }),
               cpu::global_avg_pool_backward(dy.host, shape, DType::F32), p);
  }
}

TEST_CASE("gpu dropout and drop_path masks equal the CPU's bit for bit") {
  if (skip_without_gpu()) return;
  const uint64_t seed = random_u64(), offset = random_u64() >> 20;
  const float p_drop = std::uniform_real_distribution<float>(0.1f, 0.7f)(test::rng());
  std::printf("[gpu-check] dropout seed %llu offset %llu p %.3f\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(offset), p_drop);
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const std::string tag = std::string(" [") + precision_name(p) + "]";
    const Twin x = random_twin({3, 5, 7, 11, 13}, storage_dtype(p));
    const auto dropped = run_poisoned([&] { return ops::dropout(x.device, p_drop, seed, offset); });
    const Tensor ref = cpu::dropout(x.host, p_drop, seed, offset);
    check_equal("dropout mask" + tag, kept_mask(dropped[0]), kept_mask(ref));
    check_runs("dropout values", dropped, ref, p);

    const Twin samples = random_twin({64, 4, 5, 6}, storage_dtype(p));
    const auto paths = run_poisoned([&] { return ops::drop_path(samples.device, p_drop, seed, offset); });
    const Tensor ref_paths = cpu::drop_path(samples.host, p_drop, seed, offset);
    check_equal("drop_path mask" + tag, kept_mask(paths[0]), kept_mask(ref_paths));
    check_runs("drop_path values", paths, ref_paths, p);
  }
}
