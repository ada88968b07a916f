// Fuzzing of the NIfTI reader's header handling: valid NIfTI-1 and NIfTI-2 files, their headers mutated
// (dims, dim[0], datatype, bitpix, vox_offset, scaling, pixdim, qform/sform, sizeof_hdr, magic, byte
// order, random bytes), truncated, gzipped or not, and files of random bytes. A forked child reads them
// all under a capped address space; each must be read (a 3-D image of finite values and geometry) or
// refused with a NiftiError. A crash, a hang, an exception of another type or an allocation beyond the
// cap fails the test and names the input, reproducible from the fixed seed.
#include <doctest/doctest.h>

#include <nifti2_io.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <typeinfo>

#include <fmt/format.h>

#include "data/nifti_io.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

constexpr uint64_t kSeed = 20;
constexpr int64_t kInputs = 4000;
// A reader within its contract holds at most a file's claimed data block (no more than the file's
// size, or 1032 times it for gzip) and 4 bytes a voxel: a few MiB for these files of at most ~10 KiB.
constexpr uint64_t kAddressSpaceLimit = uint64_t{64} << 20;  // beyond what the child holds at the start
constexpr unsigned kSecondsPerInput = 5;

// Written by the child that reads, judged by the parent.
struct FuzzState {
  int64_t tried, refused, read;
  int64_t current;    // the input being read
  char failure[480];  // the bad outcome that ended the child, when it did not die; empty when none
};

using Rng = std::mt19937_64;

template <class T>
T pick(std::initializer_list<T> values, Rng& rng) {
  return values.begin()[rng() % values.size()];
}

template <class T>
void write_random_image(const fs::path& path, std::array<int64_t, 3> dims, Rng& rng, const NiftiWriteOptions& options) {
  std::vector<T> values(dims[0] * dims[1] * dims[2]);
  for (auto& v : values) v = static_cast<T>(rng() % 200);
  write_nifti<T>(path, dims, values, options);
}

// A valid single-file NIfTI-1 image from the program's own writer: small random dims and datatype.
std::vector<char> valid_nifti1(const fs::path& scratch, Rng& rng) {
  using Writer = void (*)(const fs::path&, std::array<int64_t, 3>, Rng&, const NiftiWriteOptions&);
  constexpr Writer kWriters[] = {write_random_image<uint8_t>, write_random_image<int16_t>, write_random_image<int32_t>,
                                 write_random_image<float>, write_random_image<double>};
  const std::array<int64_t, 3> dims{1 + static_cast<int64_t>(rng() % 9), 1 + static_cast<int64_t>(rng() % 9),
                                    1 + static_cast<int64_t>(rng() % 9)};
  NiftiWriteOptions options;
  options.scl_slope = pick({1.0, 0.5, 2.0, 0.0}, rng);
  options.scl_inter = pick({0.0, -3.0}, rng);
  kWriters[rng() % std::size(kWriters)](scratch, dims, rng, options);
  return read_bytes(scratch);
}

// The same image as a NIfTI-2 file: the header converted by nifticlib, the voxel block kept.
std::vector<char> as_nifti2(const std::vector<char>& nifti1, const fs::path& scratch) {
  nifti_1_header h1;
  std::memcpy(&h1, nifti1.data(), sizeof h1);
  nifti_image* nim = nifti_convert_n1hdr2nim(h1, scratch.c_str());
  REQUIRE(nim != nullptr);
  nim->nifti_type = NIFTI_FTYPE_NIFTI2_1;
  nifti_2_header h2{};
  const int converted = nifti_convert_nim2n2hdr(nim, &h2);
  nifti_image_free(nim);
  REQUIRE(converted == 0);
  h2.vox_offset = sizeof h2 + 4;
  constexpr size_t kNifti1DataStart = 352;
  std::vector<char> bytes(sizeof h2 + 4 + nifti1.size() - kNifti1DataStart, 0);
  std::memcpy(bytes.data(), &h2, sizeof h2);
  std::copy(nifti1.begin() + kNifti1DataStart, nifti1.end(), bytes.begin() + sizeof h2 + 4);
  return bytes;
}

// One mutation of a header field in native byte order; returns what it did.
template <class Header>
std::string mutate_field(Header& h, Rng& rng) {
  using Dim = std::remove_reference_t<decltype(h.dim[0])>;
  using Real = std::remove_reference_t<decltype(h.scl_slope)>;
  using Offset = decltype(h.vox_offset);
  constexpr Real kNaN = std::numeric_limits<Real>::quiet_NaN(), kInf = std::numeric_limits<Real>::infinity();
  const auto big = static_cast<Dim>(std::numeric_limits<Dim>::max());
  const int k = static_cast<int>(rng() % 8);
  switch (rng() % 13) {
    case 0:
      h.dim[k] = pick<Dim>({0, 1, 2, -1, 7, 255, 1 << 12, static_cast<Dim>((int64_t{1} << 24) + 1), big,
                            std::numeric_limits<Dim>::min(), static_cast<Dim>(rng())},
                           rng);
      return fmt::format("dim[{}] = {}", k, h.dim[k]);
    case 1:  // a volume between the memory cap and the reader's limit, as a crafted header claims
      for (int a = 1; a <= 3; ++a) {
        h.dim[a] = pick<Dim>({1, 3, 255, 1000, 4096, 32767, static_cast<Dim>(int64_t{1} << 24)}, rng);
      }
      return fmt::format("dim[1..3] = {}x{}x{}", h.dim[1], h.dim[2], h.dim[3]);
    case 2:
      h.dim[0] = pick<Dim>({-1, 0, 1, 2, 3, 4, 5, 7, 8, 9, 127, big}, rng);
      return fmt::format("dim[0] = {}", h.dim[0]);
    case 3:
      h.datatype = pick<int16_t>(
          {DT_UINT8, DT_INT8, DT_INT16, DT_UINT16, DT_INT32, DT_UINT32, DT_INT64, DT_UINT64, DT_FLOAT32, DT_FLOAT64,
           DT_FLOAT128, DT_COMPLEX64, DT_RGB24, DT_RGBA32, DT_BINARY, 0, -1, static_cast<int16_t>(rng())},
          rng);
      return fmt::format("datatype = {}", h.datatype);
    case 4:
      h.bitpix = pick<int16_t>({0, 1, 8, 16, 24, 32, 64, 128, -8, static_cast<int16_t>(rng())}, rng);
      return fmt::format("bitpix = {}", h.bitpix);
    case 5:
      if constexpr (std::is_floating_point_v<Offset>) {
        h.vox_offset = pick<Offset>({0, -1, 347, 348, 352, 353, 1e6f, 1e20f, std::numeric_limits<Offset>::quiet_NaN(),
                                     std::numeric_limits<Offset>::infinity(), static_cast<Offset>(rng() % 20000)},
                                    rng);
      } else {
        h.vox_offset = pick<Offset>({0, -1, 539, 540, 544, 545, int64_t{1} << 40, std::numeric_limits<Offset>::max(),
                                     std::numeric_limits<Offset>::min(), static_cast<Offset>(rng() % 20000)},
                                    rng);
      }
      return fmt::format("vox_offset = {}", h.vox_offset);
    case 6:
      (rng() % 2 ? h.scl_slope : h.scl_inter) =
          pick<Real>({kNaN, kInf, -kInf, 0, 1e36, -1e38, 1e-38, std::numeric_limits<float>::max()}, rng);
      return fmt::format("scl_slope, scl_inter = {}, {}", h.scl_slope, h.scl_inter);
    case 7:
      h.pixdim[k] = pick<Real>({kNaN, kInf, 0, -1, 1e30, std::numeric_limits<Real>::denorm_min()}, rng);
      return fmt::format("pixdim[{}] = {}", k, h.pixdim[k]);
    case 8:
      (rng() % 2 ? h.qform_code : h.sform_code) = pick<int16_t>({-1, 0, 1, 2, 3, 4, 5, 32767}, rng);
      return fmt::format("qform_code, sform_code = {}, {}", h.qform_code, h.sform_code);
    case 9: {
      const std::pair<const char*, Real*> geometry[] = {{"quatern_b", &h.quatern_b},
                                                        {"quatern_d", &h.quatern_d},
                                                        {"qoffset_x", &h.qoffset_x},
                                                        {"srow_x[0]", &h.srow_x[0]},
                                                        {"srow_z[3]", &h.srow_z[3]}};
      const auto& [name, field] = geometry[rng() % std::size(geometry)];
      *field = pick<Real>({kNaN, kInf, 2.0, -1e30}, rng);
      return fmt::format("{} = {}", name, *field);
    }
    case 10:
      h.sizeof_hdr = pick<int32_t>({0, 347, 348, 540, 541, 1543569408, 469893120, static_cast<int32_t>(rng())}, rng);
      return fmt::format("sizeof_hdr = {}", h.sizeof_hdr);
    case 11: {
      const char* magic = pick<const char*>({"n+1", "n+2", "ni1", "ni2", "n+3", "", "\x7f\x7f\x7f"}, rng);
      std::strncpy(h.magic, magic, 4);
      return fmt::format("magic = '{}'", magic);
    }
    default: {
      auto* bytes = reinterpret_cast<unsigned char*>(&h);
      const size_t at = rng() % sizeof h;
      bytes[at] = static_cast<unsigned char>(rng());
      return fmt::format("header byte {} = {}", at, bytes[at]);
    }
  }
}

struct FuzzInput {
  fs::path path;
  std::string what;   // how it was made, for the failure message
  bool valid = true;  // untouched but for the byte order: must be read
};

// Zero to three mutations of the header at the start of `bytes`, then perhaps the other byte order.
template <class Header>
void mutate_header(std::vector<char>& bytes, Rng& rng, FuzzInput& input) {
  Header h;
  std::memcpy(&h, bytes.data(), sizeof h);
  input.what = sizeof(Header) == 348 ? "NIfTI-1" : "NIfTI-2";
  for (uint64_t n = rng() % 4; n > 0; --n) {
    input.what += "; " + mutate_field(h, rng);
    input.valid = false;
  }
  if (rng() % 8 == 0) {
    if constexpr (sizeof(Header) == 348) {
      nifti_swap_as_nifti1(&h);
    } else {
      nifti_swap_as_nifti2(&h);
    }
    input.what += "; byte-swapped";
  }
  std::memcpy(bytes.data(), &h, sizeof h);
}

void write_file(const fs::path& path, const std::vector<char>& bytes, bool gz) {
  if (!gz) return write_bytes(path, bytes);
  gzFile out = gzopen(path.c_str(), "wb1");
  REQUIRE(out != nullptr);
  REQUIRE(gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(out) == Z_OK);
}

// Valid files to mutate, NIfTI-1 and NIfTI-2 alternately.
std::vector<std::vector<char>> make_seeds(const fs::path& dir, Rng& rng) {
  std::vector<std::vector<char>> seeds;
  for (int i = 0; i < 64; ++i) {
    seeds.push_back(valid_nifti1(dir / "seed.nii", rng));
    if (i % 2 == 1) seeds.back() = as_nifti2(seeds.back(), dir / "seed.nii");
  }
  return seeds;
}

// Input `index`: random bytes, or a valid NIfTI-1/NIfTI-2 file with its header mutated; perhaps
// truncated; written as .nii or .nii.gz.
FuzzInput make_input(const fs::path& dir, int64_t index, const std::vector<std::vector<char>>& seeds, Rng& rng) {
  FuzzInput input;
  const bool gz = rng() % 2 == 0;
  input.path = dir / fmt::format("input{}.nii{}", index, gz ? ".gz" : "");
  std::vector<char> bytes;
  const uint64_t seed = rng() % (seeds.size() + seeds.size() / 16);  // one input in 17 is random bytes
  if (seed >= seeds.size()) {
    bytes.resize(rng() % 700);
    for (auto& b : bytes) b = static_cast<char>(rng());
    input.what = fmt::format("{} random bytes", bytes.size());
    input.valid = false;
  } else {
    bytes = seeds[seed];
    if (seed % 2 == 1) {
      mutate_header<nifti_2_header>(bytes, rng, input);
    } else {
      mutate_header<nifti_1_header>(bytes, rng, input);
    }
  }
  if (rng() % 5 == 0) {
    bytes.resize(rng() % (bytes.size() + 1));
    input.what += fmt::format("; truncated to {} bytes", bytes.size());
    input.valid = false;
  }
  write_file(input.path, bytes, gz);
  input.what += gz ? "; gzip" : "";
  return input;
}

// What makes a read image unusable downstream; empty when nothing does.
std::string bad_image(const Image3D& image) {
  for (int64_t d : image.dims) {
    if (d < 1) return "a read image has a dimension < 1";
  }
  if (static_cast<int64_t>(image.values.size()) != image.voxel_count()) return "a read image's values miss voxels";
  for (float v : image.values) {
    if (!std::isfinite(v)) return "a read image holds a non-finite value";
  }
  for (double s : image.spacing) {
    if (!std::isfinite(s)) return "a read image has a non-finite voxel size";
  }
  for (const auto& row : image.voxel_to_world) {
    for (double x : row) {
      if (!std::isfinite(x)) return "a read image has a non-finite affine";
    }
  }
  return {};
}

// Every way reading an input may end but a NiftiError (on an input that is not valid) or an image
// that bad_image accepts.
std::string judge(const FuzzInput& input, FuzzState& state) {
  try {
    const std::string bad = bad_image(read_nifti(input.path));
    if (!bad.empty()) return bad;
    ++state.read;
  } catch (const NiftiError& e) {
    if (input.valid) return fmt::format("a valid file was refused: {}", e.what());
    ++state.refused;
  } catch (const std::exception& e) {
    return fmt::format("{} (not a NiftiError): {}", typeid(e).name(), e.what());
  } catch (...) {
    return "an exception that is not a std::exception";
  }
  return {};
}

// The child: caps its address space, then reads every input; leaves by _exit, past the test framework.
[[noreturn]] void run_child(const std::vector<FuzzInput>& inputs, FuzzState& state) {
  // a fatal signal must end the child, for the parent to report; the test framework's handlers would
  // report it as the parent's own crash
  for (int fatal : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(fatal, SIG_DFL);
  long pages = 0;
  if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
    std::fclose(statm);
  }
  const rlimit cap{static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + kAddressSpaceLimit,
                   RLIM_INFINITY};
  if (pages == 0 || setrlimit(RLIMIT_AS, &cap) != 0) {
    std::snprintf(state.failure, sizeof state.failure, "cannot cap the address space");
    _exit(2);
  }
  for (state.current = 0; state.current < static_cast<int64_t>(inputs.size()); ++state.current) {
    alarm(kSecondsPerInput);
    const std::string failure = judge(inputs[state.current], state);
    alarm(0);
    ++state.tried;
    if (!failure.empty()) {
      std::snprintf(state.failure, sizeof state.failure, "%s", failure.c_str());
      _exit(1);
    }
  }
  _exit(0);
}

}  // namespace

TEST_CASE("nifti fuzz: mutated and random headers are read or refused, within the memory cap") {
  const auto start = std::chrono::steady_clock::now();
  TempDir dir;
  Rng rng(kSeed);
  const auto seeds = make_seeds(dir.path(), rng);
  std::vector<FuzzInput> inputs;
  for (int64_t i = 0; i < kInputs; ++i) inputs.push_back(make_input(dir.path(), i, seeds, rng));
  void* shared = mmap(nullptr, sizeof(FuzzState), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(shared != MAP_FAILED);
  auto& state = *new (shared) FuzzState{};
  std::fflush(nullptr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) run_child(inputs, state);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "[fuzz] seed %llu: %lld headers tried, %lld refused, %lld read; %.1f s in all (the reader's address "
      "space capped at +%llu MiB)\n",
      static_cast<unsigned long long>(kSeed), static_cast<long long>(state.tried),
      static_cast<long long>(state.refused), static_cast<long long>(state.read), seconds,
      static_cast<unsigned long long>(kAddressSpaceLimit >> 20));
  const std::string input =
      state.current < kInputs ? fmt::format("input #{} ({})", state.current, inputs[state.current].what) : "";
  if (WIFSIGNALED(status)) {
    const std::string how = WTERMSIG(status) == SIGALRM ? fmt::format("a hang: more than {} s", kSecondsPerInput)
                                                        : fmt::format("a crash: {}", strsignal(WTERMSIG(status)));
    FAIL_CHECK(how << " on " << input);
  } else {
    CHECK_MESSAGE(WEXITSTATUS(status) == 0, state.failure << " on " << input);
  }
  CHECK(state.tried == kInputs);
  CHECK(state.read > kInputs / 10);  // both outcomes are exercised
  CHECK(state.refused > kInputs / 10);
  munmap(shared, sizeof(FuzzState));
}

}  // namespace dsmil::data::test
