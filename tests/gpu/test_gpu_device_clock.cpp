// device::DeviceClock on the CUDA device: the device time between two marks around queued work is positive and no
// longer than the host's wall time from before the first mark to after the wait for the work.
#include <chrono>

#include "tensor/device.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu DeviceClock: the device's time over queued work, within the host's wall time around it") {
  if (skip_without_gpu()) return;
  Tensor x = test::random_tensor({1 << 22}).to(Device::CUDA);
  cuda::synchronize();
  device::DeviceClock clock(Device::CUDA, 2);
  const auto before = std::chrono::steady_clock::now();
  clock.mark(0);
  for (int i = 0; i < 50; ++i) x = ops::tanh(x);
  clock.mark(1);
  cuda::synchronize();
  const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count();
  const double device = clock.seconds(0, 1);
  std::printf("[gpu-clock] 50 tanh passes over 4 Mi floats: device %.3f ms, host wall %.3f ms\n", 1e3 * device,
              1e3 * host);
  CHECK(device > 0);
  CHECK(device <= host);
  CHECK_THROWS_WITH_AS(clock.seconds(0, 2), doctest::Contains("never marked"), Error);
}
