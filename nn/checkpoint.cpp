// Checkpoint writing and strict reading (see checkpoint.h for the layout).
#include "nn/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include <fmt/format.h>
#include <zlib.h>

namespace dsmil::nn {

namespace {

constexpr char kMagic[8] = {'D', 'S', 'M', 'I', 'L', 'C', 'K', 'P'};

class Writer {
 public:
  void bytes(const void* p, size_t n) { buffer_.append(static_cast<const char*>(p), n); }
  template <typename T>
  void pod(T v) {
    bytes(&v, sizeof v);
  }
  const std::string& buffer() const { return buffer_; }

 private:
  std::string buffer_;
};

class Reader {
 public:
  Reader(const std::string& data, const std::string& path) : data_(data), path_(path) {}
  void bytes(void* p, size_t n) {
    if (n > data_.size() - pos_) throw FormatError(fmt::format("checkpoint {}: truncated at byte {}", path_, pos_));
    std::memcpy(p, data_.data() + pos_, n);
    pos_ += n;
  }
  template <typename T>
  T pod() {
    T v;
    bytes(&v, sizeof v);
    return v;
  }
  std::string text(size_t n) {
    if (n > data_.size() - pos_) throw FormatError(fmt::format("checkpoint {}: truncated at byte {}", path_, pos_));
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  const std::string& data_;
  const std::string& path_;
  size_t pos_ = 0;
};

uint32_t crc_of(const std::string& data, size_t n) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(n)));
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.pod<uint32_t>(kCheckpointVersion);
  w.pod<uint64_t>(ckpt.metadata.size());
  w.bytes(ckpt.metadata.data(), ckpt.metadata.size());
  w.pod<uint64_t>(ckpt.tensors.size());
  for (const CheckpointTensor& t : ckpt.tensors) {
    const Tensor host = t.value.to(Device::CPU);
    w.pod<uint32_t>(static_cast<uint32_t>(t.name.size()));
    w.bytes(t.name.data(), t.name.size());
    w.pod<uint8_t>(static_cast<uint8_t>(host.dtype()));
    w.pod<uint8_t>(static_cast<uint8_t>(host.ndim()));
    for (int64_t d : host.shape()) w.pod<int64_t>(d);
    w.bytes(host.raw(), host.bytes());
  }
  const uint32_t crc = crc_of(w.buffer(), w.buffer().size());
  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  out.write(w.buffer().data(), static_cast<std::streamsize>(w.buffer().size()));
  out.write(reinterpret_cast<const char*>(&crc), sizeof crc);
  out.close();
  if (!out) {
    // A full disk: leave neither a partial file nor the space it took.
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw FormatError(fmt::format("checkpoint {}: write failed (disk full?); {} is unchanged", tmp, path));
  }
  std::filesystem::rename(tmp, path);
}

Checkpoint load_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(fmt::format("checkpoint {}: cannot open", path));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < sizeof kMagic + 4 + 4 || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
    throw FormatError(fmt::format("checkpoint {}: not a dsmil3d checkpoint (bad magic)", path));
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data.data() + data.size() - 4, 4);
  Reader r(data, path);
  r.text(sizeof kMagic);
  const uint32_t version = r.pod<uint32_t>();
  if (version != kCheckpointVersion)
    throw FormatError(fmt::format("checkpoint {}: format version {}, this build reads version {}", path, version,
                                  kCheckpointVersion));
  if (crc_of(data, data.size() - 4) != stored_crc)
    throw FormatError(fmt::format("checkpoint {}: damaged (CRC mismatch)", path));
  Checkpoint ckpt;
  ckpt.metadata = r.text(r.pod<uint64_t>());
  const uint64_t count = r.pod<uint64_t>();
  for (uint64_t i = 0; i < count; ++i) {
    CheckpointTensor t;
    t.name = r.text(r.pod<uint32_t>());
    const auto dtype = static_cast<DType>(r.pod<uint8_t>());
    const int ndim = r.pod<uint8_t>();
    Shape shape(ndim);
    for (int64_t& d : shape) d = r.pod<int64_t>();
    t.value = Tensor::empty(shape, dtype);
    r.bytes(t.value.raw(), t.value.bytes());
    ckpt.tensors.push_back(std::move(t));
  }
  return ckpt;
}

void add_state(Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedBuffer>& state) {
  for (const NamedBuffer& b : state) ckpt.tensors.push_back({prefix + b.name, b.tensor->to(Device::CPU).clone()});
}

void add_parameters(Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedParameter>& params) {
  for (const NamedParameter& p : params)
    ckpt.tensors.push_back({prefix + p.name, p.variable->value().to(Device::CPU).clone()});
}

namespace {
const Tensor& find_tensor(const Checkpoint& ckpt, const std::string& name, const Tensor& like) {
  for (const CheckpointTensor& t : ckpt.tensors)
    if (t.name == name) {
      if (t.value.shape() != like.shape() || t.value.dtype() != like.dtype())
        throw FormatError(
            fmt::format("checkpoint: '{}' is {} but the model expects {}", name, t.value.describe(), like.describe()));
      return t.value;
    }
  throw FormatError(fmt::format("checkpoint: '{}' is missing (a checkpoint of another model or config?)", name));
}
}  // namespace

void restore_state(const Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedBuffer>& state) {
  for (const NamedBuffer& b : state) b.tensor->copy_from(find_tensor(ckpt, prefix + b.name, *b.tensor));
}

void restore_parameters(const Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedParameter>& params) {
  for (const NamedParameter& p : params)
    p.variable->value().copy_from(find_tensor(ckpt, prefix + p.name, p.variable->value()));
}

}  // namespace dsmil::nn
