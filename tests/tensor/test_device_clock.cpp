// device::DeviceClock on the CPU, where a point is the host's clock at mark(): the time between two marks, and the
// points it refuses. tests/gpu/test_gpu_device_clock.cpp checks the CUDA device's.
#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include "tensor/device.h"

using namespace dsmil;

TEST_CASE("DeviceClock on the CPU: the host's time between marks, and points out of range or never marked refused") {
  device::DeviceClock clock(Device::CPU, 3);
  const auto before = std::chrono::steady_clock::now();
  clock.mark(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  clock.mark(1);
  const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count();
  CHECK(clock.seconds(0, 1) >= 0.020);
  CHECK(clock.seconds(0, 1) <= host);
  CHECK(clock.seconds(1, 0) == doctest::Approx(-clock.seconds(0, 1)));
  CHECK_THROWS_WITH_AS(clock.seconds(0, 2), doctest::Contains("point 2 was never marked"), Error);
  CHECK_THROWS_WITH_AS(clock.mark(3), doctest::Contains("point 3 of a clock of 3"), Error);
  // A point marked again is the later one.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  clock.mark(0);
  CHECK(clock.seconds(0, 1) < 0);
}
