// Provenance of a result: the build of dsmil that made it, the CUDA device and libraries it ran on and the
// command that started it, so that a number in a run directory can be traced to what produced it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor/cuda_versions.h"

namespace dsmil::app {

struct Provenance {
  std::string version;                      // the project VERSION of the top CMakeLists.txt
  std::string commit;                       // git commit of the source tree when built, or "unknown"
  std::optional<bool> dirty;                // tracked files differed from that commit; unknown without the commit
  std::string build_type;                   // Release, Debug, ...
  std::string compiler;                     // e.g. "GNU 12.2.0"
  std::optional<std::string> cuda_toolkit;  // the toolkit the CUDA backend was built with; none: a CPU-only build
  std::optional<CudaHeaderVersions> cuda_headers;  // the cuDNN and cuBLAS it was compiled against; none: CPU-only
  std::optional<CudaVersions> cuda;                // loaded now; none without the backend or without a device
  // The libraries loaded now, with or without a device; none: CPU-only. Shown by version_text, not recorded: a run
  // uses them only on a device, and `cuda` then names them.
  std::optional<CudaLibraries> cuda_libraries;
  std::vector<std::string> command_line;
  std::optional<std::string> config_sha256;  // the caller's: sha256_hex of the resolved config it ran with

  nlohmann::json to_json() const;
  // The build, the CUDA libraries loaded and the device, one item per line (`dsmil --version`).
  std::string version_text() const;
};

// This build, this process's CUDA device and libraries and its command line (from /proc/self/cmdline, so
// that any part of the program can record it without main handing argv around); no config hash.
Provenance current_provenance();

// SHA-256 of a text as 64 lowercase hex digits.
std::string sha256_hex(std::string_view text);
// SHA-256 of byte ranges taken one after the other (the digest of their concatenation, without making it).
std::string sha256_hex(std::initializer_list<std::span<const uint8_t>> parts);
// SHA-256 of a file's bytes as stored (a .nii.gz: the compressed bytes, what `sha256sum` prints); Error
// naming the file when it cannot be read.
std::string sha256_file_hex(const std::filesystem::path& path);

}  // namespace dsmil::app
