// Tensor: a dense, contiguous, row-major n-d array on one device. Activations are channels-last
// (N, D, H, W, C) on both backends; convolution weights are (K, T, R, S, C), cuDNN's KTRSC.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"

namespace dsmil {

enum class Device { CPU, CUDA };
// F32 everywhere; BF16 storage is used by the CUDA backend in mixed precision; I32 holds indices,
// labels and masks; U8 holds small indices (a max pool's position within its window).
enum class DType { F32, BF16, I32, U8 };

const char* device_name(Device d);
const char* dtype_name(DType t);
size_t dtype_size(DType t);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Bytes of host tensor storage alive now (whole blocks of the host block cache): the CPU's counterpart of
// the CUDA pool's bytes in use (cuda::pool_usage().used).
size_t host_bytes_in_use();
// The most host_bytes_in_use() since the last reset_host_peak(), which starts it afresh from the bytes in use now.
size_t host_bytes_peak();
void reset_host_peak();

// Raw memory owned by one device. CUDA memory comes from the stream-ordered pool.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value, Device device = Device::CPU);
  // CPU float tensor holding `values` (row-major); mostly for tests.
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  static Tensor from_ints(const Shape& shape, const std::vector<int32_t>& values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t axis) const;  // negative axes count from the end
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() const;
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  float* f32() const;    // checked: CPU or CUDA float tensor
  int32_t* i32() const;  // checked: int32 tensor
  uint8_t* u8() const;   // checked: uint8 tensor

  // Same storage, other shape with the same number of elements.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the leading axis, sharing storage.
  Tensor narrow0(int64_t begin, int64_t end) const;

  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to_dtype(DType dtype) const;  // F32 <-> BF16 (device kept)
  void copy_from(const Tensor& src);   // same shape and dtype, any devices
  void fill(float value);              // F32 and BF16: value; I32 and U8: the value converted

  // CPU F32 helpers for tests and host code.
  std::vector<float> to_vector() const;
  float item() const;

  std::string describe() const;  // "f32[2,3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Checks used by every op: a failure throws ShapeError naming the op and the shapes.
void check_same_shape(const char* op, const Tensor& a, const Tensor& b);
void check_ndim(const char* op, const Tensor& t, int64_t ndim, const char* name);
void check_dtype(const char* op, const Tensor& t, DType dtype, const char* name);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);

}  // namespace dsmil
