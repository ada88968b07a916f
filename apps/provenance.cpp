#include "apps/provenance.h"

#include <openssl/evp.h>

#include <fstream>
#include <iterator>
#include <memory>

#include <fmt/format.h>

#include "git_revision.h"
#include "base/error.h"

namespace dsmil::app {

namespace {

template <typename T>
nlohmann::json or_null(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json();
}

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::string> args;
  for (size_t start = 0; start < text.size();) {
    const size_t end = text.find('\0', start);
    args.push_back(text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return args;
}

}  // namespace

Provenance current_provenance() {
  Provenance p;
  p.version = DSMIL_VERSION;
  p.commit = DSMIL_GIT_COMMIT;
  if (DSMIL_GIT_DIRTY >= 0) p.dirty = DSMIL_GIT_DIRTY == 1;
  p.build_type = DSMIL_BUILD_TYPE;
  p.compiler = DSMIL_COMPILER;
#ifdef DSMIL_WITH_CUDA
  p.cuda_toolkit = DSMIL_CUDA_TOOLKIT;
#endif
  p.cuda_headers = built_cuda_versions();
  p.cuda = loaded_cuda_versions();
  p.cuda_libraries = loaded_cuda_libraries();
  p.command_line = own_command_line();
  return p;
}

nlohmann::json Provenance::to_json() const {
  nlohmann::json j = {{"version", version},
                      {"commit", commit},
                      {"dirty", or_null(dirty)},
                      {"build_type", build_type},
                      {"compiler", compiler},
                      {"cuda_backend", cuda_toolkit.has_value()},
                      {"cuda_toolkit", or_null(cuda_toolkit)},
                      {"cuda_headers", nullptr},
                      {"cuda", nullptr},
                      {"command_line", command_line},
                      {"config_sha256", or_null(config_sha256)}};
  if (cuda_headers) j["cuda_headers"] = {{"cudnn", cuda_headers->cudnn}, {"cublas", cuda_headers->cublas}};
  if (cuda)
    j["cuda"] = {{"gpu", cuda->gpu},     {"driver", cuda->driver}, {"runtime", cuda->runtime},
                 {"cudnn", cuda->cudnn}, {"cublas", cuda->cublas}, {"cudnn_file", cuda->cudnn_file}};
  return j;
}

std::string Provenance::version_text() const {
  const std::string state = !dirty ? "" : *dirty ? " (with uncommitted changes)" : " (clean)";
  std::string text =
      fmt::format("dsmil {}\ncommit: {}{}\nbuild: {}, {}\n", version, commit, state, build_type, compiler);
  if (!cuda_toolkit) return text + "CUDA backend: not built (CPU only)\nGPU: none\n";
  text += fmt::format("CUDA backend: built with CUDA {}, cuDNN {}, cuBLAS {}\n", *cuda_toolkit, cuda_headers->cudnn,
                      cuda_headers->cublas);
  text += fmt::format("CUDA libraries loaded: runtime {} ({}), cuDNN {} ({}), cuBLAS {} ({})\n",
                      cuda_libraries->runtime, cuda_libraries->runtime_file, cuda_libraries->cudnn,
                      cuda_libraries->cudnn_file, cuda_libraries->cublas, cuda_libraries->cublas_file);
  if (!cuda) return text + "GPU: no usable CUDA device\n";
  return text + fmt::format("GPU: {}; driver CUDA {}\n", cuda->gpu, cuda->driver);
}

namespace {

// A SHA-256 digest fed piece by piece through OpenSSL's EVP interface.
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!context_ || EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1)
      throw Error("SHA-256: OpenSSL's libcrypto could not start a digest");
  }
  void update(const void* bytes, size_t size) {
    if (EVP_DigestUpdate(context_.get(), bytes, size) != 1) throw Error("SHA-256 failed in OpenSSL's libcrypto");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_.get(), digest, &length) != 1) throw Error("SHA-256 failed in OpenSSL's libcrypto");
    std::string text;
    for (unsigned int i = 0; i < length; ++i) text += fmt::format("{:02x}", digest[i]);
    return text;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> context_;
};

}  // namespace

std::string sha256_hex(std::string_view text) {
  return sha256_hex({std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size())});
}

std::string sha256_hex(std::initializer_list<std::span<const uint8_t>> parts) {
  Sha256 digest;
  for (const std::span<const uint8_t> part : parts) digest.update(part.data(), part.size());
  return digest.hex();
}

std::string sha256_file_hex(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open to hash it", path.string()));
  Sha256 digest;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    digest.update(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw Error(fmt::format("{}: read error while hashing it", path.string()));
  return digest.hex();
}

}  // namespace dsmil::app
