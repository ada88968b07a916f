// Reads 3-D NIfTI images (header and voxel block through znzlib with our own checks, the header
// interpreted by nifticlib) into float32 arrays [nz][ny][nx], and writes NIfTI-1 images from typed
// arrays of the same layout.
#include "data/nifti_io.h"
#include "data/orientation.h"

#include <nifti2_io.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>

#include <fmt/format.h>

namespace dsmil::data {

NiftiError::NiftiError(std::filesystem::path path, std::string reason)
    : FormatError(fmt::format("{}: {}", path.string(), reason)), path_(std::move(path)), reason_(std::move(reason)) {}

namespace {

// nifticlib prints its own diagnostics to stderr by default; we report every failure ourselves.
void quiet_nifticlib() {
  static std::once_flag once;
  std::call_once(once, [] { nifti_set_debug_level(0); });
}

bool has_gz_extension(const std::filesystem::path& path) { return path.extension() == ".gz"; }

struct NimDeleter {
  void operator()(nifti_image* nim) const { nifti_image_free(nim); }
};
struct ZnzCloser {
  void operator()(znzptr* f) const {
    znzFile file = f;
    znzclose(file);
  }
};
using ZnzHandle = std::unique_ptr<znzptr, ZnzCloser>;

// A header as stored: either version, either byte order.
union RawHeader {
  nifti_1_header n1;
  nifti_2_header n2;
};

// Reads the header at the start of `file` and returns its NIfTI version. nifticlib's nifti_read_header
// would do it but prints to stderr on a short NIfTI-2 header, and the reader reports every failure itself.
int read_raw_header(const std::filesystem::path& path, znzFile file, RawHeader* header) {
  auto* bytes = reinterpret_cast<char*>(header);
  const size_t got = znzread(bytes, 1, sizeof(nifti_1_header), file);
  int32_t sizeof_hdr = 0;
  if (got == sizeof(nifti_1_header)) std::memcpy(&sizeof_hdr, bytes, sizeof sizeof_hdr);
  const int32_t swapped = static_cast<int32_t>(__builtin_bswap32(static_cast<uint32_t>(sizeof_hdr)));
  if (sizeof_hdr == sizeof(nifti_1_header) || swapped == sizeof(nifti_1_header)) return 1;
  const size_t rest = sizeof(nifti_2_header) - sizeof(nifti_1_header);
  if ((sizeof_hdr == sizeof(nifti_2_header) || swapped == sizeof(nifti_2_header)) &&
      znzread(bytes + got, 1, rest, file) == rest) {
    return 2;
  }
  throw NiftiError(path, "not a NIfTI file (header unreadable, too short or of unknown size)");
}

// The header fields the checks need, in native byte order, for either NIfTI version.
struct HeaderFacts {
  int version = 1;
  int64_t dim[8]{};
  int datatype = 0;
  int64_t vox_offset = 0;
  int64_t header_bytes = 0;
  std::string magic;
};

HeaderFacts native_facts(const RawHeader& raw, int version) {
  HeaderFacts facts;
  facts.version = version;
  if (version == 1) {
    nifti_1_header h = raw.n1;
    if (h.sizeof_hdr != 348) nifti_swap_as_nifti1(&h);
    for (int i = 0; i < 8; ++i) facts.dim[i] = h.dim[i];
    facts.datatype = h.datatype;
    facts.vox_offset = std::isfinite(h.vox_offset) ? static_cast<int64_t>(h.vox_offset) : -1;
    facts.header_bytes = 348;
    facts.magic.assign(h.magic, strnlen(h.magic, 4));
  } else {
    nifti_2_header h = raw.n2;
    if (h.sizeof_hdr != 540) nifti_swap_as_nifti2(&h);
    for (int i = 0; i < 8; ++i) facts.dim[i] = h.dim[i];
    facts.datatype = h.datatype;
    facts.vox_offset = h.vox_offset;
    facts.header_bytes = 540;
    facts.magic.assign(h.magic, strnlen(h.magic, 4));
  }
  return facts;
}

std::string dims_text(const HeaderFacts& f) {
  std::string text;
  for (int64_t i = 1; i <= f.dim[0]; ++i) text += fmt::format("{}{}", i > 1 ? "x" : "", f.dim[i]);
  return text;
}

// Checks a header against the file before anything is allocated; returns the voxel count.
int64_t check_header(const std::filesystem::path& path, const HeaderFacts& f, int64_t file_bytes, bool gz,
                     int bytes_per_voxel) {
  auto fail = [&](std::string reason) { throw NiftiError(path, std::move(reason)); };
  if (f.magic != fmt::format("n+{}", f.version)) {  // nifticlib refuses a magic of the other version, loudly
    fail(f.magic == "ni1" || f.magic == "ni2"
             ? "two-file NIfTI (.hdr/.img) is not supported; convert to a single .nii[.gz] file"
             : fmt::format("not a NIfTI-{} single file (bad magic)", f.version));
  }
  if (f.dim[0] < 1 || f.dim[0] > 7) fail(fmt::format("damaged header: dim[0] = {} (must be 1..7)", f.dim[0]));
  for (int64_t i = 1; i <= f.dim[0]; ++i) {
    if (f.dim[i] < 1 || f.dim[i] > (int64_t{1} << 24)) {
      fail(fmt::format("damaged header: dim[{}] = {}", i, f.dim[i]));
    }
  }
  bool extra_dims = false;
  for (int64_t i = 4; i <= f.dim[0]; ++i) extra_dims = extra_dims || f.dim[i] > 1;
  if (f.dim[0] < 3 || extra_dims) {
    fail(fmt::format("wrong dimensionality: {}-D image of size {} (a 3-D volume is required)", f.dim[0], dims_text(f)));
  }
  if (bytes_per_voxel == 0) fail(fmt::format("unsupported datatype code {} (scalar types only)", f.datatype));
  // each dim <= 2^24, so the first product cannot overflow and bounds the second
  const int64_t slice_voxels = f.dim[1] * f.dim[2];
  if (slice_voxels > kMaxImageBytes || slice_voxels * f.dim[3] > kMaxImageBytes / bytes_per_voxel) {
    fail(fmt::format("header claims {} voxels of {} bytes, beyond the {} byte limit for one image", dims_text(f),
                     bytes_per_voxel, kMaxImageBytes));
  }
  const int64_t voxels = slice_voxels * f.dim[3];
  const int64_t data_bytes = voxels * bytes_per_voxel;
  if (f.vox_offset < f.header_bytes) fail(fmt::format("damaged header: vox_offset = {}", f.vox_offset));
  if (!gz && f.vox_offset + data_bytes > file_bytes) {
    fail(fmt::format("truncated: header claims {} data bytes at offset {}, the file has {} bytes", data_bytes,
                     f.vox_offset, file_bytes));
  }
  // deflate cannot compress better than about 1032:1, so a gzip file of file_bytes holds at most that
  constexpr int64_t kMaxDeflateRatio = 1032;
  if (gz && f.vox_offset + data_bytes > file_bytes * kMaxDeflateRatio) {
    fail(fmt::format("truncated or crafted: header claims {} data bytes, impossible for a {} byte gzip file",
                     data_bytes, file_bytes));
  }
  return voxels;
}

template <class T, class Out>
void convert_block(const uint8_t* raw, int64_t n, double slope, double inter, Out* out) {
  T value;
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(&value, raw + i * sizeof(T), sizeof(T));
    out[i] = static_cast<Out>(slope * static_cast<double>(value) + inter);
  }
}

// out[i] = slope * stored value i + inter, for n values of a scalar datatype in native byte order.
template <class Out>
void convert_values(const std::filesystem::path& path, int datatype, const uint8_t* raw, int64_t n, double slope,
                    double inter, Out* out) {
  switch (datatype) {
    case DT_UINT8:
      return convert_block<uint8_t>(raw, n, slope, inter, out);
    case DT_INT8:
      return convert_block<int8_t>(raw, n, slope, inter, out);
    case DT_INT16:
      return convert_block<int16_t>(raw, n, slope, inter, out);
    case DT_UINT16:
      return convert_block<uint16_t>(raw, n, slope, inter, out);
    case DT_INT32:
      return convert_block<int32_t>(raw, n, slope, inter, out);
    case DT_UINT32:
      return convert_block<uint32_t>(raw, n, slope, inter, out);
    case DT_INT64:
      return convert_block<int64_t>(raw, n, slope, inter, out);
    case DT_UINT64:
      return convert_block<uint64_t>(raw, n, slope, inter, out);
    case DT_FLOAT32:
      return convert_block<float>(raw, n, slope, inter, out);
    case DT_FLOAT64:
      return convert_block<double>(raw, n, slope, inter, out);
    default:
      throw NiftiError(path,
                       fmt::format("unsupported datatype {} (scalar types only)", nifti_datatype_string(datatype)));
  }
}

// Refuses non-finite values among those the program uses: NaN/inf as stored (nifticlib would have
// zeroed them), and finite stored values that scl_slope/scl_inter or float32 carry out of range.
void check_finite(const std::filesystem::path& path, int datatype, int bytes_per_voxel, const uint8_t* raw,
                  const Image3D& image, double slope, double inter) {
  auto non_finite = [](float v) { return !std::isfinite(v); };
  const auto& values = image.values;
  const auto bad = std::find_if(values.begin(), values.end(), non_finite);
  if (bad == values.end()) return;
  const int64_t first = bad - values.begin();
  const int64_t count = std::count_if(bad, values.end(), non_finite);
  const auto& dims = image.dims;
  const std::string where = fmt::format("first at (x,y,z) = ({},{},{})", first % dims[0], first / dims[0] % dims[1],
                                        first / (dims[0] * dims[1]));
  double stored = 0.0;
  convert_values(path, datatype, raw + first * bytes_per_voxel, 1, 1.0, 0.0, &stored);
  if (!std::isfinite(stored)) {
    throw NiftiError(path, fmt::format("non-finite values (NaN/inf) in {} voxels, {}", count, where));
  }
  throw NiftiError(path, fmt::format("non-finite values (NaN/inf) in {} voxels after scaling to float32, {}: stored "
                                     "value {:.6g} x scl_slope {:.6g} + scl_inter {:.6g}",
                                     count, where, stored, slope, inter));
}

Affine to_affine(const nifti_dmat44& m) {
  Affine a{};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) a[r][c] = m.m[r][c];
  return a;
}

// The image's dims, voxel size and voxel-to-world map, without values. A non-finite voxel size or
// map is refused: NaN would pass every later comparison (NaN > tolerance is false).
Image3D image_geometry(const std::filesystem::path& path, const HeaderFacts& facts, const nifti_image& nim) {
  Image3D image;
  image.dims = {facts.dim[1], facts.dim[2], facts.dim[3]};
  image.spacing = {std::abs(nim.dx), std::abs(nim.dy), std::abs(nim.dz)};
  if (nim.sform_code > 0) {
    image.voxel_to_world = to_affine(nim.sto_xyz);
  } else if (nim.qform_code > 0) {
    image.voxel_to_world = to_affine(nim.qto_xyz);
  } else {
    image.voxel_to_world = {
        {{image.spacing[0], 0, 0, 0}, {0, image.spacing[1], 0, 0}, {0, 0, image.spacing[2], 0}, {0, 0, 0, 1}}};
    image.oriented = false;
  }
  for (double d : image.spacing) {
    if (!std::isfinite(d)) throw NiftiError(path, "damaged header: non-finite voxel size (pixdim)");
  }
  for (int r = 0; r < 3; ++r) {
    const auto& row = image.voxel_to_world[r];
    if (!std::all_of(row.begin(), row.end(), [](double x) { return std::isfinite(x); })) {
      throw NiftiError(path, fmt::format("damaged header: non-finite {} (voxel-to-world row {} is {}, {}, {}, {})",
                                         nim.sform_code > 0 ? "sform" : "qform", r, row[0], row[1], row[2], row[3]));
    }
  }
  if (image.oriented && axis_letters(image.voxel_to_world).empty()) {
    throw NiftiError(path, fmt::format("damaged header: singular {} (the voxel axes have no world direction)",
                                       nim.sform_code > 0 ? "sform" : "qform"));
  }
  // Tools disagree on which of the two to use (nibabel takes the sform, ITK may take the qform), so a file whose
  // two maps order the voxel axes differently has no one voxel order.
  if (nim.sform_code > 0 && nim.qform_code > 0) {
    const std::string sform_axes = axis_letters(to_affine(nim.sto_xyz));
    const std::string qform_axes = axis_letters(to_affine(nim.qto_xyz));
    if (sform_axes != qform_axes) {
      throw NiftiError(path, fmt::format("inconsistent header: the sform orders the voxel axes {} but the qform {}; "
                                         "tools disagree on which to use, so rewrite the file with one orientation",
                                         sform_axes, qform_axes.empty() ? "(singular)" : qform_axes));
    }
  }
  return image;
}

bool is_scalar_datatype(int datatype) {
  switch (datatype) {
    case DT_UINT8:
    case DT_INT8:
    case DT_INT16:
    case DT_UINT16:
    case DT_INT32:
    case DT_UINT32:
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT32:
    case DT_FLOAT64:
      return true;
    default:
      return false;
  }
}

}  // namespace

Image3D read_nifti(const std::filesystem::path& path) {
  quiet_nifticlib();
  std::error_code ec;
  const auto file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) throw NiftiError(path, fmt::format("cannot open: {}", ec.message()));
  const bool gz = has_gz_extension(path);

  ZnzHandle file{znzopen(path.c_str(), "rb", gz ? 1 : 0)};
  if (!file) throw NiftiError(path, "cannot open for reading");
  RawHeader raw_header;
  const int version = read_raw_header(path, file.get(), &raw_header);
  const HeaderFacts facts = native_facts(raw_header, version);
  int bytes_per_voxel = 0;
  int swap_size = 0;
  if (is_scalar_datatype(facts.datatype)) nifti_datatype_sizes(facts.datatype, &bytes_per_voxel, &swap_size);
  const int64_t voxels = check_header(path, facts, file_bytes, gz, bytes_per_voxel);

  // The header is sane: let nifticlib interpret it (byte order, qform/sform, scaling).
  std::unique_ptr<nifti_image, NimDeleter> nim{version == 1 ? nifti_convert_n1hdr2nim(raw_header.n1, path.c_str())
                                                            : nifti_convert_n2hdr2nim(raw_header.n2, path.c_str())};
  if (!nim) throw NiftiError(path, "damaged header (rejected by nifticlib)");
  Image3D image = image_geometry(path, facts, *nim);

  if (znzseek(file.get(), static_cast<znz_off_t>(facts.vox_offset), SEEK_SET) < 0) {  // gzseek returns the offset
    throw NiftiError(path, fmt::format("truncated: cannot seek to the voxel data at offset {}", facts.vox_offset));
  }
  const int64_t data_bytes = voxels * bytes_per_voxel;
  std::vector<uint8_t> raw(static_cast<size_t>(data_bytes));
  const size_t got = znzread(raw.data(), 1, raw.size(), file.get());
  if (static_cast<int64_t>(got) != data_bytes) {
    throw NiftiError(path, fmt::format("truncated: expected {} bytes of voxel data, read {}", data_bytes, got));
  }
  if (nim->byteorder != nifti_short_order() && swap_size > 1) {
    nifti_swap_Nbytes(voxels, swap_size, raw.data());
  }

  double slope = nim->scl_slope;
  double inter = nim->scl_inter;
  if (!std::isfinite(slope) || !std::isfinite(inter)) {
    throw NiftiError(path, fmt::format("non-finite scl_slope/scl_inter ({}, {})", slope, inter));
  }
  if (slope == 0.0) {  // NIfTI: slope 0 means the stored values are the values
    slope = 1.0;
    inter = 0.0;
  }
  image.values.resize(static_cast<size_t>(voxels));
  convert_values(path, facts.datatype, raw.data(), voxels, slope, inter, image.values.data());
  check_finite(path, facts.datatype, bytes_per_voxel, raw.data(), image, slope, inter);
  return image;
}

Affine standard_affine(std::array<int64_t, 3> dims, std::array<double, 3> spacing) {
  const std::array<double, 3> axis_sign{-1.0, -1.0, 1.0};
  Affine a{};
  for (int r = 0; r < 3; ++r) {
    a[r][r] = axis_sign[r] * spacing[r];
    a[r][3] = -a[r][r] * static_cast<double>(dims[r] - 1) / 2.0;
  }
  a[3][3] = 1.0;
  return a;
}

namespace {

template <class T>
constexpr int nifti_datatype_of() {
  if constexpr (std::is_same_v<T, uint8_t>) return DT_UINT8;
  if constexpr (std::is_same_v<T, int16_t>) return DT_INT16;
  if constexpr (std::is_same_v<T, int32_t>) return DT_INT32;
  if constexpr (std::is_same_v<T, float>) return DT_FLOAT32;
  if constexpr (std::is_same_v<T, double>) return DT_FLOAT64;
}

nifti_1_header make_header(std::array<int64_t, 3> dims, int datatype, const NiftiWriteOptions& options) {
  const int64_t nifti_dims[8] = {3, dims[0], dims[1], dims[2], 1, 1, 1, 1};
  std::unique_ptr<nifti_image, NimDeleter> nim{nifti_make_new_nim(nifti_dims, datatype, 0)};
  if (!nim) throw Error("nifticlib could not make an image header");
  nim->xyz_units = NIFTI_UNITS_MM;
  nim->scl_slope = options.scl_slope;
  nim->scl_inter = options.scl_inter;
  const Affine a = options.voxel_to_world.value_or(standard_affine(dims, options.spacing));
  nifti_dmat44 m{};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) m.m[r][c] = a[r][c];
  nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->qto_xyz = m;
  nim->sto_xyz = m;
  // the voxel size written to pixdim is the affine's column lengths, so both always agree
  nifti_dmat44_to_quatern(m, &nim->quatern_b, &nim->quatern_c, &nim->quatern_d, &nim->qoffset_x, &nim->qoffset_y,
                          &nim->qoffset_z, &nim->dx, &nim->dy, &nim->dz, &nim->qfac);
  nim->pixdim[1] = nim->dx;
  nim->pixdim[2] = nim->dy;
  nim->pixdim[3] = nim->dz;
  nim->pixdim[0] = nim->qfac;
  nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
  nim->iname_offset = 352;
  nifti_1_header header{};
  if (nifti_convert_nim2n1hdr(nim.get(), &header) != 0) throw Error("nifticlib could not convert a header");
  return header;
}

}  // namespace

template <class T>
void write_nifti(const std::filesystem::path& path, std::array<int64_t, 3> dims, std::span<const T> values,
                 const NiftiWriteOptions& options) {
  quiet_nifticlib();
  if (static_cast<int64_t>(values.size()) != dims[0] * dims[1] * dims[2]) {
    throw ShapeError(fmt::format("write_nifti {}: {} values for dims {}x{}x{}", path.string(), values.size(), dims[0],
                                 dims[1], dims[2]));
  }
  const nifti_1_header header = make_header(dims, nifti_datatype_of<T>(), options);
  const bool gz = has_gz_extension(path);
  const std::string mode = gz ? fmt::format("wb{}", options.gzip_level) : std::string("wb");
  ZnzHandle file{znzopen(path.c_str(), mode.c_str(), gz ? 1 : 0)};
  if (!file) throw FormatError(fmt::format("{}: cannot open for writing", path.string()));
  const char extender[4] = {0, 0, 0, 0};
  const size_t data_bytes = values.size() * sizeof(T);
  bool ok = znzwrite(&header, 1, sizeof header, file.get()) == sizeof header;
  ok = ok && znzwrite(extender, 1, 4, file.get()) == 4;
  ok = ok && (data_bytes == 0 || znzwrite(values.data(), 1, data_bytes, file.get()) == data_bytes);
  znzFile raw_file = file.release();
  ok = (Xznzclose(&raw_file) == 0) && ok;
  if (!ok) throw FormatError(fmt::format("{}: write failed (disk full?)", path.string()));
}

template void write_nifti<uint8_t>(const std::filesystem::path&, std::array<int64_t, 3>, std::span<const uint8_t>,
                                   const NiftiWriteOptions&);
template void write_nifti<int16_t>(const std::filesystem::path&, std::array<int64_t, 3>, std::span<const int16_t>,
                                   const NiftiWriteOptions&);
template void write_nifti<int32_t>(const std::filesystem::path&, std::array<int64_t, 3>, std::span<const int32_t>,
                                   const NiftiWriteOptions&);
template void write_nifti<float>(const std::filesystem::path&, std::array<int64_t, 3>, std::span<const float>,
                                 const NiftiWriteOptions&);
template void write_nifti<double>(const std::filesystem::path&, std::array<int64_t, 3>, std::span<const double>,
                                  const NiftiWriteOptions&);

}  // namespace dsmil::data
