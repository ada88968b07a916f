// GPU tests of error reporting: each library's check macro throws DeviceError naming the failed call,
// the op and its shapes; ops refuse tensors of the wrong device, dtype or shape with ShapeError.
#include "tensor/cuda/checks.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu check macros name the call, the op and the shapes") {
  if (skip_without_gpu()) return;
  const Tensor x = Tensor::empty({2, 3, 4, 5, 6}, DType::BF16, Device::CUDA);
  const auto context = [&] { return cuda::op_context("some_op", {{"x", &x}}); };
  const auto fails = [](cudaError_t status) { return status; };
  CHECK_THROWS_WITH_AS(DSMIL_CUDA_CHECK(fails(cudaErrorInvalidValue), context()),
                       doctest::Contains("some_op(x=bf16[2,3,4,5,6] cuda): fails(cudaErrorInvalidValue) failed: "
                                         "cudaErrorInvalidValue"),
                       DeviceError);
  CHECK_THROWS_WITH_AS(DSMIL_CUDNN_CHECK(CUDNN_STATUS_BAD_PARAM, context()),
                       doctest::Contains("CUDNN_STATUS_BAD_PARAM"), DeviceError);
  CHECK_THROWS_WITH_AS(DSMIL_CUBLAS_CHECK(CUBLAS_STATUS_INVALID_VALUE, context()),
                       doctest::Contains("CUBLAS_STATUS_INVALID_VALUE"), DeviceError);
  // A real failing runtime call (synchronous and not sticky, so the context stays usable).
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  CHECK_THROWS_WITH_AS(DSMIL_CUDA_CHECK(cudaSetDevice(devices), context()), doctest::Contains("cudaErrorInvalidDevice"),
                       DeviceError);
  // The failure was cleared: the next op runs and checks clean.
  CHECK(ops::all_finite(ops::relu(test::random_tensor({7, 9}).to(Device::CUDA))));
}

TEST_CASE("gpu ops refuse wrong devices, dtypes and shapes") {
  if (skip_without_gpu()) return;
  const Tensor a = test::random_tensor({4, 5}).to(Device::CUDA);
  const Tensor b = test::random_tensor({5, 4}).to(Device::CUDA);
  CHECK_THROWS_AS(ops::add(a, b), ShapeError);
  CHECK_THROWS_AS(ops::add(a, test::random_tensor({4, 5})), ShapeError);  // one tensor on the CPU
  CHECK_THROWS_AS(ops::mul(a, a.to_dtype(DType::BF16)), ShapeError);
  CHECK_THROWS_AS(ops::matmul(a, a, false, false, MathMode{}), ShapeError);
  Tensor a_bf16 = a.to_dtype(DType::BF16);
  CHECK_THROWS_AS(ops::axpy_(a_bf16, 1.0f, a_bf16), ShapeError);
  CHECK_THROWS_AS(ops::dropout(a, 1.0f, 1, 0), ShapeError);
  const Tensor ints = Tensor::from_ints({4}, {0, 1, 2, 3}).to(Device::CUDA);
  CHECK_THROWS_AS(ops::relu(ints), ShapeError);
  CHECK_THROWS_AS(ops::masked_softmax(a, a, 1.0f), ShapeError);  // mask must be I32
  // The temperature's contract is checked in the dispatch: the CPU's message, word for word.
  const Tensor mask = Tensor::from_ints({4, 5}, std::vector<int>(20, 1));
  for (const float temperature : {0.0f, NAN}) {
    const std::string cpu_message =
        shape_error_words([&] { ops::masked_softmax_backward(a.to(Device::CPU), a.to(Device::CPU), temperature); });
    CHECK(cpu_message != "(no ShapeError)");
    CHECK(shape_error_words([&] { ops::masked_softmax_backward(a, a, temperature); }) == cpu_message);
    CHECK_THROWS_AS(ops::masked_softmax(a, mask.to(Device::CUDA), temperature), ShapeError);
  }
}
