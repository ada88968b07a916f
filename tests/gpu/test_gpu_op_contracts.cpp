// The bad inputs of tests/tensor/op_contract_cases.h on CUDA: every op refuses each in the CPU's words (the
// contracts are checked once, in the dispatch, for both backends).
#include "tests/gpu/gpu_compare.h"
#include "tests/tensor/op_contract_cases.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu ops refuse every bad input of the contract table in the CPU's words") {
  if (skip_without_gpu()) return;
  const std::vector<test::OpContractCase> cpu_cases = test::op_contract_cases(Device::CPU);
  const std::vector<test::OpContractCase> cuda_cases = test::op_contract_cases(Device::CUDA);
  REQUIRE(cpu_cases.size() == cuda_cases.size());
  for (size_t i = 0; i < cpu_cases.size(); ++i) {
    CAPTURE(cpu_cases[i].op);
    CAPTURE(cpu_cases[i].fragment);
    const std::string cpu_words = shape_error_words(cpu_cases[i].call);
    CHECK(cpu_words != "(no ShapeError)");
    CHECK(shape_error_words(cuda_cases[i].call) == cpu_words);
  }
}
