// GPU test of the environment the other GPU tests run in: prints the device and the library versions
// actually loaded, and fails on a cuDNN of the releases with known wrong bf16 / TF32 3-D convolutions.
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu environment: device, driver, CUDA, cuDNN and cuBLAS versions") {
  if (skip_without_gpu()) return;
  std::printf("[gpu-env] %s\n", cuda::backend_versions().c_str());
  std::printf("[gpu-env] random seed of this run: %llu\n", static_cast<unsigned long long>(test::run_seed()));
  // cuDNN 9.10.2 up to 9.15.0 computed some bf16 / TF32 3-D convolutions wrongly (pytorch#163539).
  const size_t version = cuda::cudnn_version();
  CHECK_MESSAGE(!(version >= 91002 && version < 91501),
                "cuDNN " << version
                         << " is in the 9.10.2-9.15.0 range with wrong 3-D convolutions: "
                            "put cuDNN 9.19 (PyTorch's) first on LD_LIBRARY_PATH");
}
