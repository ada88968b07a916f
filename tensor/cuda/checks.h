// Checked calls into the CUDA runtime, cuDNN and cuBLAS: one macro per library. A failure throws
// dsmil::DeviceError naming the failed call, the op that made it (with its tensors' shapes) and file:line.
#pragma once

#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <string>

#include "tensor/tensor.h"

namespace dsmil::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const std::string& context, const char* file,
                                   int line);
// A driver API call (reached through cudaGetDriverEntryPointByVersion: the binary does not link libcuda).
[[noreturn]] void throw_driver_error(CUresult status, const char* call, const std::string& context, const char* file,
                                     int line);
[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const std::string& context,
                                    const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const std::string& context,
                                     const char* file, int line);

// "conv3d_forward(x=bf16[2,4,64,64,4] cuda, w=bf16[64,3,7,7,4] cuda)": the context of an op's errors.
std::string op_context(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors);

}  // namespace dsmil::cuda

// A kernel launcher of kernels/ returns its launches' cudaError_t (cudaGetLastError after each launch)
// and is checked with DSMIL_CUDA_CHECK too.
// `context` is an expression giving a std::string; it is evaluated only when the call failed, so that
// the success path formats nothing.
#define DSMIL_CUDA_CHECK(call, context)                                                     \
  do {                                                                                      \
    const cudaError_t dsmil_status_ = (call);                                               \
    if (dsmil_status_ != cudaSuccess)                                                       \
      ::dsmil::cuda::throw_cuda_error(dsmil_status_, #call, (context), __FILE__, __LINE__); \
  } while (0)

#define DSMIL_DRIVER_CHECK(call, context)                                                     \
  do {                                                                                        \
    const CUresult dsmil_status_ = (call);                                                    \
    if (dsmil_status_ != CUDA_SUCCESS)                                                        \
      ::dsmil::cuda::throw_driver_error(dsmil_status_, #call, (context), __FILE__, __LINE__); \
  } while (0)

#define DSMIL_CUDNN_CHECK(call, context)                                                     \
  do {                                                                                       \
    const cudnnStatus_t dsmil_status_ = (call);                                              \
    if (dsmil_status_ != CUDNN_STATUS_SUCCESS)                                               \
      ::dsmil::cuda::throw_cudnn_error(dsmil_status_, #call, (context), __FILE__, __LINE__); \
  } while (0)

#define DSMIL_CUBLAS_CHECK(call, context)                                                     \
  do {                                                                                        \
    const cublasStatus_t dsmil_status_ = (call);                                              \
    if (dsmil_status_ != CUBLAS_STATUS_SUCCESS)                                               \
      ::dsmil::cuda::throw_cublas_error(dsmil_status_, #call, (context), __FILE__, __LINE__); \
  } while (0)
