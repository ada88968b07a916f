// Preprocessing of one case: brain mask (nonzero in any modality) -> crop to its box -> z-score per
// modality over the mask -> trilinear resampling to [4][D][H][W] (mask and seg: nearest neighbour);
// and the cache of such cases as files of [header][float16 image][uint8 mask][uint8 seg], mmapped and
// checked against their checksum once per process.
#include "data/preprocess.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <zlib.h>

#include "base/half.h"
#include "data/parallel.h"
#include "data/progress.h"
#include "data/text.h"

namespace dsmil::data {

namespace fs = std::filesystem;

GridShape parse_grid(std::string_view text) {
  const auto v = parse_int_triple(text, "grid D,H,W");
  return {static_cast<int>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[2])};
}

void CaseVolume::copy_image(std::span<float> out) const {
  if (out.size() != image.size()) {
    throw ShapeError(
        fmt::format("copy_image {}: buffer of {} floats for {} values", case_id, out.size(), image.size()));
  }
  const auto& table = half_to_float_table();
  for (size_t i = 0; i < image.size(); ++i) out[i] = table[image[i]];
}

namespace {

constexpr char kEntryMagic[8] = {'D', 'S', 'M', 'I', 'L', 'P', 'C', '1'};
// 2: the checksum; 3: the voxels in canonical order whatever the files' axis order (entries of version 2 were
// built in the files' stored order, wrong for files not stored as LPS)
constexpr uint32_t kEntryVersion = 3;
constexpr uint32_t kValueTypeFloat16 = 1;
constexpr size_t kEntryHeaderBytes = 256;
constexpr size_t kAlignment = 64;

// The fixed header of a cache entry (native little-endian; the cache is a local artefact). New fields
// go at the end: readers elsewhere parse the leading ones.
struct EntryHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t key[2];
  int32_t depth, height, width, channels;
  uint32_t value_type;
  uint32_t has_seg;
  int32_t brain_z_begin, brain_z_end;
  int64_t box_begin[3], box_end[3], source_dims[3];
  float modality_mean[kModalities], modality_std[kModalities];
  uint64_t image_offset, mask_offset, seg_offset, total_bytes;
  uint32_t checksum;  // zlib crc32 of the header bytes before this field, then of [header_bytes, total_bytes)
};
static_assert(sizeof(EntryHeader) <= kEntryHeaderBytes);

constexpr uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

// Byte layout of an entry for a grid; identical on the heap and on disk.
struct EntryLayout {
  uint64_t image_offset, mask_offset, seg_offset, total_bytes;
  EntryLayout(const GridShape& grid, bool has_seg) {
    const auto voxels = static_cast<uint64_t>(grid.voxels());
    image_offset = kEntryHeaderBytes;
    mask_offset = align_up(image_offset + kModalities * voxels * sizeof(uint16_t));
    seg_offset = align_up(mask_offset + voxels);
    total_bytes = has_seg ? align_up(seg_offset + voxels) : seg_offset;
  }
};

// Fills the views of a CaseVolume from entry bytes whose header has been checked.
CaseVolume view_entry(const CaseFiles& files, const uint8_t* bytes, std::shared_ptr<const void> storage) {
  EntryHeader h;
  std::memcpy(&h, bytes, sizeof h);
  CaseVolume c;
  c.case_id = files.case_id;
  c.patient_id = files.patient_id;
  c.label = files.label;
  c.grid = {h.depth, h.height, h.width};
  const auto voxels = static_cast<size_t>(c.grid.voxels());
  c.image = {reinterpret_cast<const uint16_t*>(bytes + h.image_offset), kModalities * voxels};
  c.brain_mask = {bytes + h.mask_offset, voxels};
  if (h.has_seg) c.seg = {bytes + h.seg_offset, voxels};
  c.brain_z_begin = h.brain_z_begin;
  c.brain_z_end = h.brain_z_end;
  const size_t slice = static_cast<size_t>(c.grid.height) * c.grid.width;
  c.slice_has_brain.assign(c.grid.depth, 0);
  c.slice_has_tumour.assign(c.grid.depth, 0);
  for (int z = 0; z < c.grid.depth; ++z) {
    const auto mask = c.brain_mask.subspan(z * slice, slice);
    c.slice_has_brain[z] = std::any_of(mask.begin(), mask.end(), [](uint8_t v) { return v != 0; });
    if (c.has_seg()) {
      const auto seg = c.seg.subspan(z * slice, slice);
      c.slice_has_tumour[z] = std::any_of(seg.begin(), seg.end(), [](uint8_t v) { return v != 0; });
    }
  }
  for (int a = 0; a < 3; ++a) {
    c.source_box.begin[a] = h.box_begin[a];
    c.source_box.end[a] = h.box_end[a];
    c.source_box.source_dims[a] = h.source_dims[a];
  }
  c.storage = std::move(storage);
  return c;
}

// Source index and weight of the upper neighbour, per output position along one axis, for
// resampling the box [begin, begin + n) to `out` samples with voxel centres aligned.
struct AxisTaps {
  std::vector<int64_t> lower, upper, nearest;
  std::vector<float> upper_weight;
};

AxisTaps axis_taps(int out, int64_t begin, int64_t n) {
  AxisTaps taps;
  const double scale = static_cast<double>(n) / out;
  for (int o = 0; o < out; ++o) {
    const double centre = (o + 0.5) * scale;
    const double src = std::clamp(centre - 0.5, 0.0, static_cast<double>(n - 1));
    const auto lo = static_cast<int64_t>(std::floor(src));
    taps.lower.push_back(begin + lo);
    taps.upper.push_back(begin + std::min(lo + 1, n - 1));
    taps.upper_weight.push_back(static_cast<float>(src - lo));
    taps.nearest.push_back(begin + std::min(static_cast<int64_t>(centre), n - 1));
  }
  return taps;
}

}  // namespace

namespace {

// Refuses a case whose float16 image holds inf/NaN. A z-score's size is bounded by the square root of
// the mask's voxel count, but its float32 arithmetic overflows for values near float32's limit.
void check_float16_finite(const CaseFiles& files, const uint16_t* image, const GridShape& grid,
                          const std::array<float, kModalities>& mean, const std::array<float, kModalities>& stddev) {
  const int64_t voxels = grid.voxels();
  auto non_finite = [](uint16_t h) { return !half_is_finite(h); };
  for (int m = 0; m < kModalities; ++m) {
    const uint16_t* channel = image + m * voxels;
    const uint16_t* bad = std::find_if(channel, channel + voxels, non_finite);
    if (bad == channel + voxels) continue;
    const int64_t first = bad - channel;
    throw CaseError({files.case_id, files.modalities[m],
                     fmt::format("non-finite values (NaN/inf) in {} voxels after z-scoring and conversion to float16, "
                                 "first at grid (d,h,w) = ({},{},{}); the modality's mean over the brain is {:.6g}, "
                                 "its standard deviation {:.6g}",
                                 std::count_if(bad, channel + voxels, non_finite), first / (grid.height * grid.width),
                                 first / grid.width % grid.height, first % grid.width, mean[m], stddev[m])});
  }
}

// The cache entry bytes of a preprocessed case (key and checksum left 0: the cache fills them in).
std::shared_ptr<std::vector<uint8_t>> build_entry(const CaseFiles& files, const CaseImages& images,
                                                  const PreprocessParams& params) {
  const auto& dims = images.modalities[0].dims;
  const int64_t nx = dims[0], ny = dims[1], nz = dims[2];
  const int64_t source_voxels = nx * ny * nz;

  std::vector<uint8_t> mask(source_voxels, 0);
  std::array<int64_t, 3> box_begin{nx, ny, nz};
  std::array<int64_t, 3> box_end{0, 0, 0};
  for (int64_t z = 0, i = 0; z < nz; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      for (int64_t x = 0; x < nx; ++x, ++i) {
        bool brain = false;
        for (int m = 0; m < kModalities; ++m) brain = brain || images.modalities[m].values[i] != 0.0f;
        if (!brain) continue;
        mask[i] = 1;
        const int64_t p[3] = {x, y, z};
        for (int a = 0; a < 3; ++a) {
          box_begin[a] = std::min(box_begin[a], p[a]);
          box_end[a] = std::max(box_end[a], p[a] + 1);
        }
      }
    }
  }
  if (box_end[0] == 0) {  // read_case_images refuses these; a direct caller may not have
    throw CaseError({files.case_id, files.modalities[0], "empty brain mask: all four modalities are zero everywhere"});
  }

  // Mean and standard deviation of each modality over the brain mask.
  std::array<float, kModalities> mean{}, stddev{};
  for (int m = 0; m < kModalities; ++m) {
    double sum = 0.0, sum_sq = 0.0;
    int64_t count = 0;
    const auto& v = images.modalities[m].values;
    for (int64_t i = 0; i < source_voxels; ++i) {
      if (!mask[i]) continue;
      sum += v[i];
      sum_sq += static_cast<double>(v[i]) * v[i];
      ++count;
    }
    const double mu = sum / count;
    const double var = std::max(0.0, sum_sq / count - mu * mu);
    mean[m] = static_cast<float>(mu);
    stddev[m] = static_cast<float>(var > 0.0 ? std::sqrt(var) : 1.0);  // a constant modality maps to 0
  }

  const GridShape grid = params.grid;
  const bool has_seg = images.seg.has_value();
  const EntryLayout layout(grid, has_seg);
  auto buffer = std::make_shared<std::vector<uint8_t>>(layout.total_bytes, 0);
  uint8_t* bytes = buffer->data();
  auto* out_image = reinterpret_cast<uint16_t*>(bytes + layout.image_offset);
  uint8_t* out_mask = bytes + layout.mask_offset;
  uint8_t* out_seg = bytes + layout.seg_offset;

  const AxisTaps tx = axis_taps(grid.width, box_begin[0], box_end[0] - box_begin[0]);
  const AxisTaps ty = axis_taps(grid.height, box_begin[1], box_end[1] - box_begin[1]);
  const AxisTaps tz = axis_taps(grid.depth, box_begin[2], box_end[2] - box_begin[2]);
  auto index = [&](int64_t x, int64_t y, int64_t z) { return (z * ny + y) * nx + x; };

  const int64_t out_voxels = grid.voxels();
  int brain_z_begin = grid.depth, brain_z_end = 0;
  for (int d = 0, o = 0; d < grid.depth; ++d) {
    for (int h = 0; h < grid.height; ++h) {
      for (int w = 0; w < grid.width; ++w, ++o) {
        const int64_t nearest = index(tx.nearest[w], ty.nearest[h], tz.nearest[d]);
        out_mask[o] = mask[nearest];
        if (has_seg) out_seg[o] = static_cast<uint8_t>(images.seg->values[nearest]);
        if (!mask[nearest]) continue;  // image stays 0 outside the brain
        brain_z_begin = std::min(brain_z_begin, d);
        brain_z_end = std::max(brain_z_end, d + 1);
        const int64_t corner[8] = {
            index(tx.lower[w], ty.lower[h], tz.lower[d]), index(tx.upper[w], ty.lower[h], tz.lower[d]),
            index(tx.lower[w], ty.upper[h], tz.lower[d]), index(tx.upper[w], ty.upper[h], tz.lower[d]),
            index(tx.lower[w], ty.lower[h], tz.upper[d]), index(tx.upper[w], ty.lower[h], tz.upper[d]),
            index(tx.lower[w], ty.upper[h], tz.upper[d]), index(tx.upper[w], ty.upper[h], tz.upper[d])};
        const float wx = tx.upper_weight[w], wy = ty.upper_weight[h], wz = tz.upper_weight[d];
        const float weight[8] = {
            (1 - wx) * (1 - wy) * (1 - wz), wx * (1 - wy) * (1 - wz), (1 - wx) * wy * (1 - wz), wx * wy * (1 - wz),
            (1 - wx) * (1 - wy) * wz,       wx * (1 - wy) * wz,       (1 - wx) * wy * wz,       wx * wy * wz};
        for (int m = 0; m < kModalities; ++m) {
          const auto& v = images.modalities[m].values;
          float value = 0.0f;  // z-scores of the corners, 0 for corners outside the brain
          for (int k = 0; k < 8; ++k) {
            if (mask[corner[k]]) value += weight[k] * (v[corner[k]] - mean[m]) / stddev[m];
          }
          out_image[m * out_voxels + o] = float_to_half(value);
        }
      }
    }
  }

  check_float16_finite(files, out_image, grid, mean, stddev);

  EntryHeader h{};
  std::memcpy(h.magic, kEntryMagic, sizeof h.magic);
  h.version = kEntryVersion;
  h.header_bytes = kEntryHeaderBytes;
  h.depth = grid.depth;
  h.height = grid.height;
  h.width = grid.width;
  h.channels = kModalities;
  h.value_type = kValueTypeFloat16;
  h.has_seg = has_seg ? 1 : 0;
  h.brain_z_begin = brain_z_begin;
  h.brain_z_end = brain_z_end;
  for (int a = 0; a < 3; ++a) {
    h.box_begin[a] = box_begin[a];
    h.box_end[a] = box_end[a];
    h.source_dims[a] = dims[a];
  }
  for (int m = 0; m < kModalities; ++m) {
    h.modality_mean[m] = mean[m];
    h.modality_std[m] = stddev[m];
  }
  h.image_offset = layout.image_offset;
  h.mask_offset = layout.mask_offset;
  h.seg_offset = layout.seg_offset;
  h.total_bytes = layout.total_bytes;
  std::memcpy(bytes, &h, sizeof h);
  return buffer;
}

}  // namespace

CaseVolume preprocess_images(const CaseFiles& files, const CaseImages& images, const PreprocessParams& params) {
  auto buffer = build_entry(files, images, params);
  const uint8_t* bytes = buffer->data();
  return view_entry(files, bytes, std::move(buffer));
}

namespace {

void report_warnings(const std::function<void(std::string_view line)>& warn, const CaseImages& images) {
  for (const std::string& line : images.warnings) warn(fmt::format("warning: {}", line));
}

}  // namespace

CaseVolume preprocess_case(const CaseFiles& files, const PreprocessParams& params,
                           const std::function<void(std::string_view line)>& warn) {
  const CaseImages images = read_case_images(files);
  report_warnings(warn, images);
  return preprocess_images(files, images, params);
}

namespace {

uint64_t fnv1a64(std::string_view text, uint64_t basis) {
  uint64_t h = basis;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

// What a cache entry depends on: format version, grid, and each input's path, size and mtime.
std::string cache_key_text(const CaseFiles& files, const PreprocessParams& params) {
  std::string text = fmt::format("dsmil-preprocess v{} grid {},{},{} case {}\n", kEntryVersion, params.grid.depth,
                                 params.grid.height, params.grid.width, files.case_id);
  auto add_file = [&](std::string_view role, const fs::path& path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto mtime = ec ? 0 : fs::last_write_time(path, ec).time_since_epoch().count();
    text += fmt::format("{} {} {} {}\n", role, fs::absolute(path).lexically_normal().string(),
                        ec ? -1 : static_cast<int64_t>(size), mtime);
  };
  for (int m = 0; m < kModalities; ++m) add_file(kModalityNames[m], files.modalities[m]);
  if (!files.seg.empty()) add_file("seg", files.seg);
  return text;
}

std::array<uint64_t, 2> cache_key(const CaseFiles& files, const PreprocessParams& params) {
  const std::string text = cache_key_text(files, params);
  return {fnv1a64(text, 0xCBF29CE484222325ull), fnv1a64(text, 0x84222325CBF29CE4ull)};
}

std::string file_safe(std::string_view id) {
  std::string out;
  for (char c : id) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return out;
}

// A file by device, inode, size and modification and change times (ns): a file rewritten or replaced
// is another.
using FileIdentity = std::array<int64_t, 5>;

struct MappedFile {
  std::shared_ptr<const void> data;  // null when the file could not be mapped
  size_t size = 0;
  FileIdentity identity{};
};

// A read-only memory mapping of a whole file.
MappedFile map_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  struct stat st {};
  void* address = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    address = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  }
  ::close(fd);
  if (address == MAP_FAILED) return {};
  MappedFile file;
  file.size = static_cast<size_t>(st.st_size);
  const size_t length = file.size;
  file.data = std::shared_ptr<const void>(address, [length](const void* p) { ::munmap(const_cast<void*>(p), length); });
  file.identity = {static_cast<int64_t>(st.st_dev), static_cast<int64_t>(st.st_ino), st.st_size,
                   st.st_mtim.tv_sec * 1'000'000'000 + st.st_mtim.tv_nsec,
                   st.st_ctim.tv_sec * 1'000'000'000 + st.st_ctim.tv_nsec};
  return file;
}

// The checksum an entry's header records (EntryHeader::checksum).
uint32_t entry_checksum(const uint8_t* bytes, size_t total_bytes) {
  const uLong header = crc32_z(0L, bytes, offsetof(EntryHeader, checksum));
  return static_cast<uint32_t>(crc32_z(header, bytes + kEntryHeaderBytes, total_bytes - kEntryHeaderBytes));
}

// Whether a mapped entry's bytes match its checksum. Each file (by identity) is hashed at most once per
// process: hashing reads every byte (~20 MB for a 128^3 entry), mapping the entry again reads none.
bool checksum_matches(const MappedFile& file, uint32_t checksum) {
  static std::mutex mutex;
  static std::set<FileIdentity> intact;
  {
    std::lock_guard lock(mutex);
    if (intact.count(file.identity)) return true;
  }
  if (entry_checksum(static_cast<const uint8_t*>(file.data.get()), file.size) != checksum) return false;
  std::lock_guard lock(mutex);
  intact.insert(file.identity);
  return true;
}

// What is wrong with an entry of `size` bytes whose header is `h`, for these inputs and params; empty
// when nothing is.
std::string header_damage(const EntryHeader& h, size_t size, const CaseFiles& files, const PreprocessParams& params,
                          const std::array<uint64_t, 2>& key) {
  if (std::memcmp(h.magic, kEntryMagic, sizeof h.magic) != 0 || h.version != kEntryVersion ||
      h.header_bytes != kEntryHeaderBytes) {
    return "not a cache entry of this version";
  }
  const GridShape grid{h.depth, h.height, h.width};
  if (h.key[0] != key[0] || h.key[1] != key[1] || grid != params.grid || h.channels != kModalities ||
      h.value_type != kValueTypeFloat16 || h.has_seg != (files.seg.empty() ? 0u : 1u)) {
    return "its header does not match the case's inputs and parameters";
  }
  const EntryLayout layout(grid, h.has_seg != 0);
  if (h.total_bytes != size || layout.total_bytes != size || h.image_offset != layout.image_offset ||
      h.mask_offset != layout.mask_offset || h.seg_offset != layout.seg_offset) {
    return fmt::format("{} bytes where its grid needs {}", size, layout.total_bytes);
  }
  return {};
}

// The entry at `path` when it is intact and was built from exactly these inputs and params. Otherwise
// nothing, and `damage` says what is wrong with the file there (it stays empty when there is none).
std::optional<CaseVolume> try_map_entry(const fs::path& path, const CaseFiles& files, const PreprocessParams& params,
                                        const std::array<uint64_t, 2>& key, std::string* damage) {
  const MappedFile file = map_file(path);
  if (!file.data) {
    if (fs::exists(path)) *damage = "unreadable or empty";
    return std::nullopt;
  }
  if (file.size < kEntryHeaderBytes) {
    *damage = fmt::format("{} bytes, shorter than its header", file.size);
    return std::nullopt;
  }
  const auto* bytes = static_cast<const uint8_t*>(file.data.get());
  EntryHeader h;
  std::memcpy(&h, bytes, sizeof h);
  *damage = header_damage(h, file.size, files, params, key);
  if (damage->empty() && !checksum_matches(file, h.checksum)) *damage = "checksum mismatch";
  if (!damage->empty()) return std::nullopt;
  return view_entry(files, bytes, file.data);
}

fs::path entry_path_for_key(const fs::path& cache_dir, const CaseFiles& files, const std::array<uint64_t, 2>& key) {
  return cache_dir / fmt::format("{}_{:016x}.dpc", file_safe(files.case_id), key[0]);
}

// Writes the entry bytes to a temporary file beside `path`, then renames it into place.
void write_entry_atomically(const fs::path& path, std::span<const uint8_t> bytes) {
  static std::atomic<uint64_t> counter{0};
  const fs::path temp = path.string() + fmt::format(".tmp.{}.{}", ::getpid(), counter++);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw FormatError(fmt::format("{}: cannot create cache file: {}", temp.string(), std::strerror(errno)));
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool ok = written == bytes.size() && ::fsync(fd) == 0;
  ::close(fd);
  std::error_code ec;
  if (!ok) {
    fs::remove(temp, ec);
    throw FormatError(fmt::format("{}: cannot write cache file (disk full?)", temp.string()));
  }
  fs::rename(temp, path, ec);
  if (ec) {
    fs::remove(temp, ec);
    throw FormatError(fmt::format("{}: cannot rename cache file into place: {}", path.string(), ec.message()));
  }
}

// Fills in what the cache adds to built entry bytes: the key the entry is filed under, then the checksum.
void seal_entry(std::vector<uint8_t>& entry, const std::array<uint64_t, 2>& key) {
  std::memcpy(entry.data() + offsetof(EntryHeader, key), key.data(), sizeof(EntryHeader::key));
  const uint32_t checksum = entry_checksum(entry.data(), entry.size());
  std::memcpy(entry.data() + offsetof(EntryHeader, checksum), &checksum, sizeof checksum);
}

// The case's images, to (re)build its entry; when they cannot be read for a damaged entry, the error
// names the entry, its damage and the reason.
CaseImages read_source(const CaseFiles& files, const fs::path& entry, const std::string& damage) {
  if (damage.empty()) return read_case_images(files);
  try {
    return read_case_images(files);
  } catch (const CaseError& e) {
    throw CaseError({files.case_id, entry,
                     fmt::format("cache entry damaged ({}) and cannot be rebuilt: {}: {}", damage,
                                 e.detail().file.string(), e.detail().reason)});
  }
}

// One case through the cache: its intact entry mapped, or the entry (re)built from the source and
// `*built` set; a damaged entry that is replaced is reported to options.warn.
CaseVolume cached_case(const CaseFiles& files, const PreprocessOptions& options, bool* built) {
  const auto key = cache_key(files, options.params);
  const fs::path path = entry_path_for_key(options.cache_dir, files, key);
  std::string damage;
  if (auto cached = try_map_entry(path, files, options.params, key, &damage)) return std::move(*cached);
  const CaseImages images = read_source(files, path, damage);
  report_warnings(options.warn, images);
  const auto entry = build_entry(files, images, options.params);
  seal_entry(*entry, key);
  write_entry_atomically(path, *entry);
  std::string written_damage;
  auto mapped = try_map_entry(path, files, options.params, key, &written_damage);
  if (!mapped) {
    throw FormatError(
        fmt::format("{}: cache entry unreadable right after writing ({})", path.string(), written_damage));
  }
  if (!damage.empty()) {
    options.warn(fmt::format("warning: case {}: cache entry {} was damaged ({}); rebuilt from its source",
                             files.case_id, path.string(), damage));
  }
  *built = true;
  return std::move(*mapped);
}

}  // namespace

fs::path cache_entry_path(const fs::path& cache_dir, const CaseFiles& files, const PreprocessParams& params) {
  return entry_path_for_key(cache_dir, files, cache_key(files, params));
}

PreprocessedCohort preprocess_cohort(std::span<const CaseFiles> cases, const PreprocessOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (!options.cache_dir.empty()) {
    std::error_code ec;
    fs::create_directories(options.cache_dir, ec);
    if (ec)
      throw FormatError(fmt::format("{}: cannot create cache folder: {}", options.cache_dir.string(), ec.message()));
  }
  if (cases.empty()) throw FormatError("preprocess: no case given");
  const size_t n = cases.size();
  std::vector<std::optional<CaseVolume>> results(n);
  std::vector<std::optional<SkippedCase>> failures(n);
  std::atomic<int> hits{0}, builds{0};
  auto process = [&](size_t i) {
    bool built = true;
    if (options.cache_dir.empty()) {
      results[i] = preprocess_case(cases[i], options.params, options.warn);
    } else {
      built = false;
      results[i] = cached_case(cases[i], options, &built);
    }
    ++(built ? builds : hits);
  };
  parallel_for(n, options.threads, [&](size_t i) {
    try {
      process(i);
      if (options.progress) options.progress->advance(cases[i].case_id);
    } catch (const CaseError& e) {
      failures[i] = e.detail();
      if (options.progress) options.progress->advance(fmt::format("{}: bad case", cases[i].case_id));
      if (options.on_bad_case == BadCasePolicy::fail) throw;
    }
  });
  if (options.progress) options.progress->finish();

  PreprocessedCohort cohort;
  for (size_t i = 0; i < n; ++i) {
    if (failures[i]) {
      cohort.skipped.push_back(*failures[i]);
    } else if (results[i]) {
      cohort.cases.push_back(std::move(*results[i]));
    }
  }
  if (cohort.cases.empty()) throw no_usable_case("preprocess", cohort.skipped);
  cohort.cache_hits = hits;
  cohort.cache_builds = builds;
  cohort.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return cohort;
}

}  // namespace dsmil::data
