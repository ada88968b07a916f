// Error reporting of the CUDA backend: formats a failed CUDA / cuDNN / cuBLAS call with the op and the
// shapes it was working on, and throws DeviceError.
#include "tensor/cuda/checks.h"

#include <cudaTypedefs.h>
#include <fmt/format.h>

namespace dsmil::cuda {

std::string op_context(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  std::string text = std::string(op) + "(";
  bool first = true;
  for (const auto& [name, tensor] : tensors) {
    text += fmt::format("{}{}={}", first ? "" : ", ", name, tensor->defined() ? tensor->describe() : "undefined");
    first = false;
  }
  return text + ")";
}

void throw_cuda_error(cudaError_t status, const char* call, const std::string& context, const char* file, int line) {
  // The runtime keeps a failed call's error as the "last error"; clear it so that the next launch check
  // does not report it again under another op's name (a sticky error reappears anyway).
  cudaGetLastError();
  throw DeviceError(fmt::format("{}: {} failed: {} ({}) [{}:{}]", context, call, cudaGetErrorName(status),
                                cudaGetErrorString(status), file, line));
}

void throw_driver_error(CUresult status, const char* call, const std::string& context, const char* file, int line) {
  static const PFN_cuGetErrorName_v6000 error_name = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    cudaGetDriverEntryPointByVersion("cuGetErrorName", &function, 12000, cudaEnableDefault, &found);
    return found == cudaDriverEntryPointSuccess ? reinterpret_cast<PFN_cuGetErrorName_v6000>(function) : nullptr;
  }();
  const char* name = nullptr;
  if (error_name == nullptr || error_name(status, &name) != CUDA_SUCCESS) name = "unnamed driver error";
  throw DeviceError(fmt::format("{}: {} failed: {} ({}) [{}:{}]", context, call, name, int(status), file, line));
}

void throw_cudnn_error(cudnnStatus_t status, const char* call, const std::string& context, const char* file, int line) {
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw DeviceError(fmt::format("{}: {} failed: {}{}{} [{}:{}]", context, call, cudnnGetErrorString(status),
                                detail[0] ? ": " : "", detail, file, line));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const std::string& context, const char* file,
                        int line) {
  throw DeviceError(fmt::format("{}: {} failed: {} ({}) [{}:{}]", context, call, cublasGetStatusName(status),
                                cublasGetStatusString(status), file, line));
}

}  // namespace dsmil::cuda
