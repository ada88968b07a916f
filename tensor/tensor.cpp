// Tensor storage, views, copies between devices, and the shape checks every op uses.
#include "tensor/tensor.h"

#include <bit>
#include <cmath>
#include <mutex>
#include <unordered_map>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/runtime.h"
#endif

namespace dsmil {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::BF16:
      return "bf16";
    case DType::I32:
      return "i32";
    case DType::U8:
      return "u8";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16:
      return 2;
    case DType::U8:
      return 1;
    case DType::F32:
    case DType::I32:
      return 4;
  }
  return 4;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {

// Host memory cache: blocks of power-of-two sizes are kept after use and handed out again. Training
// allocates the same shapes every step, so the cache settles after the first step and no step pays
// for fresh pages (page faults and clearing cost more than the arithmetic at small widths).
class HostBlockCache {
 public:
  static HostBlockCache& instance() {
    static HostBlockCache cache;
    return cache;
  }
  static size_t block_size(size_t bytes) { return std::bit_ceil(std::max<size_t>(bytes, 256)); }
  void* acquire(size_t bytes) {
    const size_t size = block_size(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_ += size;
      peak_ = std::max(peak_, in_use_);
      auto& free_list = free_[size];
      if (!free_list.empty()) {
        void* p = free_list.back();
        free_list.pop_back();
        return p;
      }
    }
    void* p = std::aligned_alloc(64, size);
    if (!p) {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_ -= size;
      throw Error(fmt::format("host allocation of {} bytes failed", size));
    }
    return p;
  }
  void release(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_ -= block_size(bytes);
    free_[block_size(bytes)].push_back(p);
  }
  size_t in_use() {
    std::lock_guard<std::mutex> lock(mutex_);
    return in_use_;
  }
  size_t peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = in_use_;
  }

 private:
  std::mutex mutex_;
  size_t in_use_ = 0, peak_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;
};

}  // namespace

size_t host_bytes_in_use() { return HostBlockCache::instance().in_use(); }
size_t host_bytes_peak() { return HostBlockCache::instance().peak(); }
void reset_host_peak() { HostBlockCache::instance().reset_peak(); }

[[noreturn]] static void throw_no_cuda(const char* what) {
  throw DeviceError(fmt::format("{}: this build of dsmil3d has no CUDA backend", what));
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  const size_t alloc = bytes == 0 ? 64 : bytes;
  if (device == Device::CPU) {
    data_ = HostBlockCache::instance().acquire(alloc);
  } else {
#ifdef DSMIL_WITH_CUDA
    data_ = cuda::device_alloc(alloc);
#else
    throw_no_cuda("Storage");
#endif
  }
}

Storage::~Storage() {
  if (device_ == Device::CPU) {
    HostBlockCache::instance().release(data_, bytes_ == 0 ? 64 : bytes_);
  } else {
#ifdef DSMIL_WITH_CUDA
    cuda::device_free(data_);
#endif
  }
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw ShapeError("Tensor::empty: negative dimension in " + shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  Tensor t = empty(shape, DType::F32, device);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  if (shape_numel(shape) != static_cast<int64_t>(values.size()))
    throw ShapeError(fmt::format("Tensor::from_vector: {} values for shape {}", values.size(), shape_str(shape)));
  Tensor t = empty(shape);
  std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_ints(const Shape& shape, const std::vector<int32_t>& values) {
  if (shape_numel(shape) != static_cast<int64_t>(values.size()))
    throw ShapeError(fmt::format("Tensor::from_ints: {} values for shape {}", values.size(), shape_str(shape)));
  Tensor t = empty(shape, DType::I32);
  std::memcpy(t.raw(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

int64_t Tensor::size(int64_t axis) const {
  const int64_t a = axis < 0 ? axis + ndim() : axis;
  if (a < 0 || a >= ndim()) throw ShapeError(fmt::format("Tensor::size: axis {} of {}", axis, describe()));
  return shape_[a];
}

void* Tensor::raw() const {
  if (!storage_) throw Error("use of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

float* Tensor::f32() const {
  if (dtype_ != DType::F32) throw ShapeError("expected an f32 tensor, got " + describe());
  return data<float>();
}

int32_t* Tensor::i32() const {
  if (dtype_ != DType::I32) throw ShapeError("expected an i32 tensor, got " + describe());
  return data<int32_t>();
}

uint8_t* Tensor::u8() const {
  if (dtype_ != DType::U8) throw ShapeError("expected a u8 tensor, got " + describe());
  return data<uint8_t>();
}

Tensor Tensor::view(const Shape& shape) const {
  if (shape_numel(shape) != numel())
    throw ShapeError(fmt::format("Tensor::view: {} cannot be viewed as {}", describe(), shape_str(shape)));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::narrow0(int64_t begin, int64_t end) const {
  if (ndim() == 0 || begin < 0 || end > shape_[0] || begin > end)
    throw ShapeError(fmt::format("Tensor::narrow0: rows [{}, {}) of {}", begin, end, describe()));
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.offset_bytes_ += static_cast<size_t>(begin) * (numel() / std::max<int64_t>(shape_[0], 1)) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor t = empty(shape_, dtype_, target);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to_dtype(DType target) const {
  if (target == dtype_) return *this;
  if (device() == Device::CUDA) {
#ifdef DSMIL_WITH_CUDA
    return cuda::convert(*this, target);
#else
    throw_no_cuda("Tensor::to_dtype");
#endif
  }
  throw ShapeError(
      fmt::format("Tensor::to_dtype: {} -> {} is only done on the CUDA backend", describe(), dtype_name(target)));
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_ || src.dtype_ != dtype_)
    throw ShapeError(fmt::format("Tensor::copy_from: {} into {}", src.describe(), describe()));
  if (device() == Device::CPU && src.device() == Device::CPU) {
    std::memcpy(raw(), src.raw(), bytes());
    return;
  }
#ifdef DSMIL_WITH_CUDA
  cuda::copy_bytes(raw(), device(), src.raw(), src.device(), bytes());
#else
  throw_no_cuda("Tensor::copy_from");
#endif
}

void Tensor::fill(float value) {
  if (device() == Device::CUDA) {
#ifdef DSMIL_WITH_CUDA
    cuda::fill(*this, value);
    return;
#else
    throw_no_cuda("Tensor::fill");
#endif
  }
  const int64_t n = numel();
  if (dtype_ == DType::F32) {
    float* p = data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = value;
  } else if (dtype_ == DType::I32) {
    int32_t* p = data<int32_t>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(value);
  } else if (dtype_ == DType::U8) {
    uint8_t* p = data<uint8_t>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(value);
  } else {
    throw ShapeError("Tensor::fill: bf16 tensors live on the CUDA backend only");
  }
}

std::vector<float> Tensor::to_vector() const {
  const Tensor host = to(Device::CPU);
  std::vector<float> out(numel());
  if (dtype_ == DType::F32) {
    std::memcpy(out.data(), host.raw(), out.size() * sizeof(float));
  } else if (dtype_ == DType::I32) {
    const int32_t* p = host.data<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  } else if (dtype_ == DType::U8) {
    const uint8_t* p = host.data<uint8_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  } else {
    const uint16_t* p = host.data<uint16_t>();
    for (size_t i = 0; i < out.size(); ++i) {
      const uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
      std::memcpy(&out[i], &bits, sizeof(float));
    }
  }
  return out;
}

float Tensor::item() const {
  if (numel() != 1) throw ShapeError("Tensor::item on " + describe());
  return to_vector()[0];
}

std::string Tensor::describe() const {
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device_name(device()));
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw ShapeError(fmt::format("{}: shapes differ: {} vs {}", op, a.describe(), b.describe()));
}

void check_ndim(const char* op, const Tensor& t, int64_t ndim, const char* name) {
  if (t.ndim() != ndim)
    throw ShapeError(fmt::format("{}: {} must have {} dimensions, got {}", op, name, ndim, t.describe()));
}

void check_dtype(const char* op, const Tensor& t, DType dtype, const char* name) {
  if (t.dtype() != dtype)
    throw ShapeError(fmt::format("{}: {} must be {}, got {}", op, name, dtype_name(dtype), t.describe()));
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device())
    throw ShapeError(fmt::format("{}: tensors on different devices: {} vs {}", op, a.describe(), b.describe()));
}

}  // namespace dsmil
