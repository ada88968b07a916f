// cuDNN's graph ("backend") API in RAII form: one descriptor per object, attributes set by name, finalized
// once; what conv3d.cpp builds its execution plans from (NVIDIA's cudnn-frontend is not a Debian package).
#pragma once

#include <cudnn.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace dsmil::cuda {

class BackendDescriptor {
 public:
  BackendDescriptor(cudnnBackendDescriptorType_t type, std::string context);
  ~BackendDescriptor();
  BackendDescriptor(BackendDescriptor&& other) noexcept;
  BackendDescriptor& operator=(BackendDescriptor&& other) noexcept;
  BackendDescriptor(const BackendDescriptor&) = delete;
  BackendDescriptor& operator=(const BackendDescriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }
  const std::string& context() const { return context_; }

  // Throws DeviceError naming the attribute and the context.
  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values);
  void set(cudnnBackendAttributeName_t name, const BackendDescriptor& value);
  void set_int64(cudnnBackendAttributeName_t name, const std::vector<int64_t>& values);
  void finalize();
  // For descriptors cuDNN may refuse (an engine configuration it cannot build): the status, no throw.
  cudnnStatus_t try_finalize();

  int64_t get_int64(cudnnBackendAttributeName_t name) const;
  // Up to `capacity` enum values of an array attribute (numerical or behaviour notes).
  template <typename Enum>
  std::vector<Enum> get_enums(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                              int64_t capacity) const {
    std::vector<Enum> values(static_cast<size_t>(capacity));
    int64_t count = 0;
    get_raw(name, type, capacity, &count, values.data());
    values.resize(static_cast<size_t>(count));
    return values;
  }
  // Fills `into`, a descriptor created by the caller with the attribute's descriptor type.
  void get_descriptor(cudnnBackendAttributeName_t name, BackendDescriptor& into) const;

 private:
  void get_raw(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t capacity, int64_t* count,
               void* values) const;
  cudnnBackendDescriptor_t descriptor_ = nullptr;
  std::string context_;
};

// A channels-last tensor [N, D, H, W, C] (filters: [K, T, R, S, C]) as cuDNN's NCDHW dimensions with NDHWC strides.
// `is_virtual`: an intermediate of a fused graph, never in memory.
BackendDescriptor channels_last_tensor(int64_t uid, const std::vector<int64_t>& ndhwc, cudnnDataType_t type,
                                       int64_t alignment, const std::string& context, bool is_virtual = false);

// A 3-D cross-correlation accumulating in fp32, padded alike before and after.
BackendDescriptor convolution_3d(const std::array<int64_t, 3>& stride, const std::array<int64_t, 3>& pad,
                                 const std::string& context);

// The engine configurations cuDNN's heuristics list for a finalized operation graph, best first (none where
// the mode has none for it).
std::vector<BackendDescriptor> heuristic_engine_configs(const BackendDescriptor& operation_graph,
                                                        cudnnBackendHeurMode_t mode);

}  // namespace dsmil::cuda
