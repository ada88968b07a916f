// cuDNN backend descriptors: creation, attributes, finalization and the heuristics' engine configurations,
// every call checked with the descriptor's context.
#include "tensor/cuda/cudnn_backend.h"

#include <fmt/format.h>

#include <utility>

#include "tensor/cuda/checks.h"

namespace dsmil::cuda {

BackendDescriptor::BackendDescriptor(cudnnBackendDescriptorType_t type, std::string context)
    : context_(std::move(context)) {
  DSMIL_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &descriptor_),
                    fmt::format("{} (descriptor type {})", context_, static_cast<int>(type)));
}

BackendDescriptor::~BackendDescriptor() {
  if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
}

BackendDescriptor::BackendDescriptor(BackendDescriptor&& other) noexcept
    : descriptor_(std::exchange(other.descriptor_, nullptr)), context_(std::move(other.context_)) {}

BackendDescriptor& BackendDescriptor::operator=(BackendDescriptor&& other) noexcept {
  if (this != &other) {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
    descriptor_ = std::exchange(other.descriptor_, nullptr);
    context_ = std::move(other.context_);
  }
  return *this;
}

void BackendDescriptor::set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                            const void* values) {
  DSMIL_CUDNN_CHECK(cudnnBackendSetAttribute(descriptor_, name, type, count, values),
                    fmt::format("{} (attribute {})", context_, static_cast<int>(name)));
}

void BackendDescriptor::set(cudnnBackendAttributeName_t name, const BackendDescriptor& value) {
  const cudnnBackendDescriptor_t d = value.get();
  set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &d);
}

void BackendDescriptor::set_int64(cudnnBackendAttributeName_t name, const std::vector<int64_t>& values) {
  set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(values.size()), values.data());
}

void BackendDescriptor::finalize() { DSMIL_CUDNN_CHECK(cudnnBackendFinalize(descriptor_), context_); }

cudnnStatus_t BackendDescriptor::try_finalize() { return cudnnBackendFinalize(descriptor_); }

void BackendDescriptor::get_raw(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t capacity,
                                int64_t* count, void* values) const {
  DSMIL_CUDNN_CHECK(cudnnBackendGetAttribute(descriptor_, name, type, capacity, count, values),
                    fmt::format("{} (reading attribute {})", context_, static_cast<int>(name)));
}

int64_t BackendDescriptor::get_int64(cudnnBackendAttributeName_t name) const {
  int64_t value = 0, count = 0;
  get_raw(name, CUDNN_TYPE_INT64, 1, &count, &value);
  return value;
}

void BackendDescriptor::get_descriptor(cudnnBackendAttributeName_t name, BackendDescriptor& into) const {
  cudnnBackendDescriptor_t d = into.get();
  int64_t count = 0;
  get_raw(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &d);
}

BackendDescriptor channels_last_tensor(int64_t uid, const std::vector<int64_t>& ndhwc, cudnnDataType_t type,
                                       int64_t alignment, const std::string& context, bool is_virtual) {
  BackendDescriptor t(CUDNN_BACKEND_TENSOR_DESCRIPTOR, context);
  const int64_t n = ndhwc[0], d = ndhwc[1], h = ndhwc[2], w = ndhwc[3], c = ndhwc[4];
  t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  t.set_int64(CUDNN_ATTR_TENSOR_DIMENSIONS, {n, c, d, h, w});
  t.set_int64(CUDNN_ATTR_TENSOR_STRIDES, {d * h * w * c, 1, h * w * c, w * c, c});
  t.set_int64(CUDNN_ATTR_TENSOR_UNIQUE_ID, {uid});
  t.set_int64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, {alignment});
  if (is_virtual) t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
  t.finalize();
  return t;
}

BackendDescriptor convolution_3d(const std::array<int64_t, 3>& stride, const std::array<int64_t, 3>& pad,
                                 const std::string& context) {
  BackendDescriptor conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, context);
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  conv.set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  conv.set_int64(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, {3});
  conv.set_int64(CUDNN_ATTR_CONVOLUTION_DILATIONS, {1, 1, 1});
  conv.set_int64(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, {stride[0], stride[1], stride[2]});
  conv.set_int64(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, {pad[0], pad[1], pad[2]});
  conv.set_int64(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, {pad[0], pad[1], pad[2]});
  conv.finalize();
  return conv;
}

std::vector<BackendDescriptor> heuristic_engine_configs(const BackendDescriptor& operation_graph,
                                                        cudnnBackendHeurMode_t mode) {
  const std::string context =
      fmt::format("{} (engine heuristics, mode {})", operation_graph.context(), static_cast<int>(mode));
  BackendDescriptor heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, context);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, operation_graph);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  // A mode that has nothing for this graph refuses to finalize: no configurations from it.
  if (heuristics.try_finalize() != CUDNN_STATUS_SUCCESS) return {};
  int64_t available = 0;
  DSMIL_CUDNN_CHECK(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &available, nullptr),
                    context);
  std::vector<BackendDescriptor> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < available; ++i) {
    configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, context);
    raw.push_back(configs.back().get());
  }
  int64_t returned = 0;
  DSMIL_CUDNN_CHECK(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, available, &returned, raw.data()),
                    context);
  configs.erase(configs.begin() + returned, configs.end());
  return configs;
}

}  // namespace dsmil::cuda
