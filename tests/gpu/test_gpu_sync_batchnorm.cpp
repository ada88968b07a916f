// GPU tests of what data-parallel training adds to batch norm: the statistics-only op against its CPU twin,
// and synchronised batch norm (over one rank: the eval-forward ops with exchanged statistics, the backward
// with its correction) on the device against the fused op on the CPU, in f32 and bf16.
#include <optional>

#include "dist/thread_communicator.h"
#include "nn/sync_batchnorm.h"
#include "tensor/functions.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu batchnorm_statistics matches the CPU (statistics and running update) in f32 and bf16") {
  if (skip_without_gpu()) return;
  for (const Precision p : {Precision::F32, Precision::BF16}) {
    for (const Shape& shape : std::vector<Shape>{{4, 3, 8, 8, 64}, {3, 2, 5, 7, 40}, {2, 9, 5}}) {
      const Twin x = random_twin(shape, storage_dtype(p), -2.0f, 3.0f);
      const int64_t c = shape.back();
      const Tensor mean0 = test::random_tensor({c}), var0 = test::random_tensor({c}, 0.5f, 2.0f);
      Tensor cpu_mean = mean0.clone(), cpu_var = var0.clone();
      Tensor gpu_mean = mean0.to(Device::CUDA), gpu_var = var0.to(Device::CUDA);
      const BatchNormTrainOut ref = ops::batchnorm_statistics(x.host, cpu_mean, cpu_var, 0.1f, 1e-5f);
      const BatchNormTrainOut got = ops::batchnorm_statistics(x.device, gpu_mean, gpu_var, 0.1f, 1e-5f);
      CHECK_FALSE(got.y.defined());
      const std::string tag = std::string("batchnorm_statistics ") + precision_name(p) + " " + shape_str(shape);
      // Statistics are summed in fp64 on both sides from the same (bf16-rounded) inputs: f32 tolerance.
      check_close(tag + " save_mean", got.save_mean, ref.save_mean, Precision::F32);
      check_close(tag + " save_invstd", got.save_invstd, ref.save_invstd, Precision::F32);
      check_close(tag + " running_mean", gpu_mean, cpu_mean, Precision::F32);
      check_close(tag + " running_var", gpu_var, cpu_var, Precision::F32);
    }
  }
}

TEST_CASE("gpu synchronised batch norm over one rank matches the fused batch norm + ReLU on the CPU") {
  if (skip_without_gpu()) return;
  auto group = std::make_shared<dist::ThreadGroup>(1);
  dist::ThreadCommunicator alone(group, 0);
  const Shape shape{3, 2, 6, 6, 16};
  const int64_t c = shape.back();
  for (const Precision p : {Precision::F32, Precision::BF16}) {
    const DType dtype = storage_dtype(p);
    const Twin x = random_twin(shape, dtype, -2.0f, 3.0f), residual = random_twin(shape, dtype),
               dy = random_twin(shape, dtype);
    const Tensor gamma = test::random_tensor({c}, 0.5f, 1.5f), beta = test::random_tensor({c});
    const Tensor factor = test::random_tensor({shape[0]}, 0.5f, 2.0f);
    auto run = [&](Device device, const Tensor& xv, const Tensor& rv, const Tensor& seed, bool synchronised) {
      Variable xs(xv, true), g(gamma.to(device), true), b(beta.to(device), true), r(rv, true);
      Tensor running_mean = Tensor::zeros({c}, DType::F32, device), running_var = Tensor::full({c}, 1.0f, device);
      const Variable y = synchronised ? nn::synchronised_batchnorm(xs, g, b, running_mean, running_var, 0.1f, 1e-5f,
                                                                   nn::ReluBranch{r, factor.to(device)}, alone)
                                      : fn::batchnorm_relu(xs, g, b, running_mean, running_var, true, 0.1f, 1e-5f, r,
                                                           factor.to(device));
      Variable(y).backward(seed);
      return std::vector<Tensor>{y.value(), xs.grad(), g.grad(), b.grad(), r.grad(), running_mean, running_var};
    };
    const std::vector<Tensor> ref = run(Device::CPU, x.host, residual.host, dy.host, false);
    const std::vector<Tensor> got = run(Device::CUDA, x.device, residual.device, dy.device, true);
    const char* names[] = {"y", "dx", "dgamma", "dbeta", "dresidual", "running_mean", "running_var"};
    for (size_t i = 0; i < ref.size(); ++i) {
      const Tensor g = got[i].dtype() == DType::F32 ? got[i] : got[i].to_dtype(DType::F32);
      // dx adds a correction pass in the activation dtype: bf16 outputs carry one more rounding.
      check_close(std::string("synchronised batch norm ") + precision_name(p) + " " + names[i], g, ref[i], p);
    }
  }
}
