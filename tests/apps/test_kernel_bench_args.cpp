// CPU tests of `dsmil bench --kernel` (apps/kernel_bench/): the registry covers every kernel launcher
// declared in kernels/*.h and kernels/plain/*.h, bad names, variants, dtypes and shapes are rejected with
// the valid choices, byte counts and model shapes match hand computations, every entry's CPU reference
// runs and its comparison catches a wrong output, and the command's exit codes.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "apps/kernel_bench/kernel_bench.h"
#include "tensor/device.h"

using namespace dsmil;
using namespace dsmil::kernel_bench;

namespace {

// The launchers of a kernels folder: every function its headers declare returning cudaError_t.
std::set<std::string> declared_launchers(const std::filesystem::path& folder) {
  std::set<std::string> names;
  const std::regex launcher(R"(cudaError_t\s+(\w+)\s*\()");
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (entry.path().extension() != ".h") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    const std::string content = text.str();
    for (std::sregex_iterator m(content.begin(), content.end(), launcher), end; m != end; ++m) names.insert((*m)[1]);
  }
  return names;
}

// Launchers known to have no entry yet, with where the entry goes. The test fails once one gets an entry
// and is still listed, so that this list only ever shrinks.
const std::map<std::string, std::string> kAwaitingEntry = {};

const KernelBench& bench(const std::string& name) {
  for (const KernelBench& b : all_benches())
    if (b.name == name) return b;
  FAIL("no bench entry " << name);
  throw std::logic_error("unreachable");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

struct CommandResult {
  int status = 0;
  std::string output;
};

CommandResult run_dsmil(const std::string& args) {
  const std::string command = std::string(DSMIL_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  CommandResult result;
  std::array<char, 4096> buffer;
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) result.output += buffer.data();
  result.status = pclose(pipe);
  return result;
}

}  // namespace

TEST_CASE("every kernel launcher in kernels/*.h and kernels/plain/*.h is run by a bench entry") {
  const std::filesystem::path kernels = std::filesystem::path(DSMIL_SOURCE_DIR) / "kernels";
  const std::set<std::string> fast = declared_launchers(kernels), plain = declared_launchers(kernels / "plain");
  std::printf("[kernel-bench] %zu launchers in kernels/*.h, %zu in kernels/plain/*.h, %zu bench entries\n", fast.size(),
              plain.size(), all_benches().size());
  // The headers hold 30-odd launchers: fewer means the parsing broke, not that the kernels went away.
  REQUIRE(fast.size() >= 25);
  REQUIRE(plain.size() >= 3);
  std::set<std::string> named, named_plain, names;
  for (const KernelBench& b : all_benches()) {
    CHECK_MESSAGE(names.insert(b.name).second, "two entries are called " << b.name);
    named.insert(b.launchers.begin(), b.launchers.end());
    named_plain.insert(b.plain_launchers.begin(), b.plain_launchers.end());
  }
  for (const std::string& l : fast) {
    if (const auto awaiting = kAwaitingEntry.find(l); awaiting != kAwaitingEntry.end()) {
      std::printf("[kernel-bench] launcher %s awaits its entry: %s\n", l.c_str(), awaiting->second.c_str());
      CHECK_MESSAGE(named.count(l) == 0, l << " has an entry now: remove it from kAwaitingEntry");
      continue;
    }
    CHECK_MESSAGE(named.count(l) == 1,
                  "launcher " << l << " of kernels/*.h has no bench entry (apps/kernel_bench/registry.h)");
  }
  for (const std::string& l : plain)
    CHECK_MESSAGE(named_plain.count(l) == 1, "plain launcher " << l << " of kernels/plain/*.h has no bench entry");
  for (const std::string& l : named)
    CHECK_MESSAGE(fast.count(l) == 1, "an entry names " << l << ", no launcher of kernels/*.h");
  for (const std::string& l : named_plain)
    CHECK_MESSAGE(plain.count(l) == 1, "an entry names " << l << ", no launcher of kernels/plain/*.h");
}

TEST_CASE("kernel bench selection rejects unknown names, variants, dtypes and shapes with the valid choices") {
  const std::string unknown = error_of([] { select_benches("softmax_fast", "both", "all"); });
  CHECK(unknown.find("unknown kernel 'softmax_fast'") != std::string::npos);
  CHECK(unknown.find("masked_softmax, masked_softmax_backward") != std::string::npos);
  CHECK(unknown.find("adamw") != std::string::npos);
  CHECK(error_of([] { select_benches("relu", "plain", "all"); }).find("has no plain variant") != std::string::npos);
  CHECK(error_of([] { select_benches("relu", "quick", "all"); }).find("fast, plain, both") != std::string::npos);
  CHECK(error_of([] { select_benches("adamw", "fast", "bf16"); }).find("f32 only") != std::string::npos);
  CHECK(error_of([] { select_benches("relu", "fast", "f16"); }).find("f32, bf16, all") != std::string::npos);

  // "all" with "plain": the plain variants only, each beside nothing else.
  const std::vector<Selection> plain = select_benches("all", "plain", "all");
  REQUIRE(!plain.empty());
  for (const Selection& s : plain) CHECK(s.variant == Variant::Plain);
  CHECK(plain.size() >= 4);  // masked_softmax, its backward (f32), sum_squares (f32, bf16)
  // "both": fast and plain side by side, fast first.
  const std::vector<Selection> pair = select_benches("sum_squares", "both", "f32");
  REQUIRE(pair.size() == 2);
  CHECK(pair[0].variant == Variant::Fast);
  CHECK(pair[1].variant == Variant::Plain);
  CHECK(select_benches("all", "both", "all").size() > all_benches().size());

  const KernelBench& relu = bench("relu");
  const KernelBench& softmax = bench("masked_softmax");
  CHECK(parse_shape("64,4,64,64,64", relu) == Shape{64, 4, 64, 64, 64});
  CHECK(parse_shape("64x512", relu) == Shape{64, 512});
  CHECK(error_of([&] { parse_shape("2,x3", relu); }).find("positive sizes") != std::string::npos);
  CHECK(error_of([&] { parse_shape("2,0", relu); }).find("positive sizes") != std::string::npos);
  CHECK(error_of([&] { parse_shape("2,32,5", softmax); }).find("takes 2 sizes: e[B,n]") != std::string::npos);
}

TEST_CASE("kernel bench model shapes follow the DESIGN section 11 model") {
  const ModelShapes m = model_shapes(ModelDims{});
  // 2 bags x 32 slabs of 4 x 128 x 128 x 4 modalities; stem conv (3,7,7) stride (1,2,2); max pool (1,3,3)
  // stride (1,2,2); stages 2-4 halve H and W and double the channels from 64.
  CHECK(m.input == Shape{64, 4, 128, 128, 4});
  CHECK(m.stem == Shape{64, 4, 64, 64, 64});
  CHECK(m.stages[0] == Shape{64, 4, 32, 32, 64});
  CHECK(m.stages[1] == Shape{64, 4, 16, 16, 128});
  CHECK(m.stages[2] == Shape{64, 4, 8, 8, 256});
  CHECK(m.stages[3] == Shape{64, 4, 4, 4, 512});
  CHECK(m.embedding == Shape{64, 512});
  CHECK(m.largest_weight == Shape{512, 3, 3, 3, 512});
  CHECK(m.features == 512);
  CHECK(m.topk == 4);
  // A one-slice slab: kernel depth 1, so depth is kept and the weights are (1, 3, 3).
  ModelDims thin;
  thin.slab = 1;
  thin.width = 32;
  const ModelShapes t = model_shapes(thin);
  CHECK(t.stem == Shape{64, 1, 64, 64, 32});
  CHECK(t.largest_weight == Shape{256, 1, 3, 3, 256});
}

TEST_CASE("kernel bench byte counts match hand counts at the model's shapes") {
  const ModelShapes m = model_shapes(ModelDims{});
  const auto bytes = [&](const std::string& name, DType d) {
    const KernelBench& b = bench(name);
    return b.bytes(b.model_shape(m), d);
  };
  const int64_t stem = 64LL * 4 * 64 * 64 * 64, pooled = 64LL * 4 * 32 * 32 * 64, weight = 512LL * 27 * 512;
  CHECK(bytes("relu", DType::BF16) == 2 * 2 * stem);          // read x, write y
  CHECK(bytes("relu_backward", DType::F32) == 3 * 4 * stem);  // read dy, y; write dx
  CHECK(bytes("add", DType::BF16) == 3 * 2 * pooled);         // stage-1 residual add
  CHECK(bytes("adamw", DType::F32) == 28 * weight);           // 4 reads + 3 writes of f32
  CHECK(bytes("ema", DType::F32) == 12 * weight);
  CHECK(bytes("masked_softmax", DType::F32) == 3 * 4 * 64 + 3 * 4 * 2);           // e, mask, a; stats[2, 3]
  CHECK(bytes("maxpool3d_forward", DType::BF16) == 2 * stem + (2 + 1) * pooled);  // x; y and its u8 argmax
  CHECK(bytes("convert_f32_to_bf16", DType::F32) == 6 * 64LL * 4 * 128 * 128 * 4);
  CHECK(bytes("gather_mean", DType::F32) == 4 * (2 * 4 * 512 + 2 * 4 + 2 * 512));  // K rows, idx, y
  // 2 x 32 x 4 x 128 x 128 voxels: 4 fp16 + 1 mask byte read, 4 f32 / bf16 written
  CHECK(bytes("gather_bag", DType::F32) == (9 + 16) * 2LL * 32 * 4 * 128 * 128);
  CHECK(bytes("gather_bag", DType::BF16) == (9 + 8) * 2LL * 32 * 4 * 128 * 128);
}

TEST_CASE("every kernel bench entry's CPU reference runs at a tiny shape and its comparison catches a wrong output") {
  int checked = 0;
  for (const KernelBench& b : all_benches())
    for (DType dtype : b.dtypes) {
      CAPTURE(b.name);
      CAPTURE(dtype_name(dtype));
      const Problem problem = b.draw(b.tiny_shape, dtype, 1234);
      REQUIRE(problem.inputs.size() == problem.stored.size());
      for (size_t i = 0; i < problem.inputs.size(); ++i) {
        // Stored inputs hold values exact in the storage dtype, and are never all zeros.
        const std::vector<float> v = problem.inputs[i].to_vector();
        if (problem.stored[i] && dtype == DType::BF16)
          CHECK(std::all_of(v.begin(), v.end(), [](float x) { return round_to_bf16(x) == x; }));
        if (problem.inputs[i].dtype() == DType::F32 && problem.stored[i])
          CHECK(std::any_of(v.begin(), v.end(), [](float x) { return x != 0.0f; }));
      }
      const std::vector<Tensor> reference = run_reference(b, problem, b.tiny_shape);
      REQUIRE(!reference.empty());
      for (const Tensor& t : reference) {
        const std::vector<float> v = t.to_vector();
        CHECK(std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }));
      }
      // Against itself the comparison passes; one element off by 1% of the output's scale fails it.
      CHECK(compare_outputs(reference, reference).pass);
      std::vector<Tensor> wrong;
      for (const Tensor& t : reference) wrong.push_back(t.clone());
      Tensor& victim = wrong.back();
      std::vector<float> v = victim.to_vector();
      double scale = 0.0;
      for (float x : v) scale = std::max(scale, std::fabs(static_cast<double>(x)));
      if (victim.dtype() == DType::I32)
        victim.i32()[v.size() / 2] += 1;
      else if (victim.dtype() == DType::U8)
        victim.u8()[v.size() / 2] ^= 1;
      else
        victim.f32()[v.size() / 2] += static_cast<float>(scale > 0.0 ? 0.01 * scale : 1.0);
      const CheckOutcome caught = compare_outputs(wrong, reference);
      CHECK_FALSE(caught.pass);
      CHECK_FALSE(caught.worst().pass);
      ++checked;
    }
  std::printf("[kernel-bench] %d entry x dtype CPU references run and compared\n", checked);
  CHECK(checked >= static_cast<int>(all_benches().size()));
}

TEST_CASE("dsmil bench --kernel: list, an unknown name and a machine without a GPU give clear messages") {
  const CommandResult list = run_dsmil("bench --kernel list");
  CHECK(list.status == 0);
  for (const KernelBench& b : all_benches()) CHECK_MESSAGE(list.output.find(b.name) != std::string::npos, b.name);

  const CommandResult unknown = run_dsmil("bench --kernel nope");
  CHECK(unknown.status != 0);
  CHECK(unknown.output.find("unknown kernel 'nope'; valid names: all, list, masked_softmax") != std::string::npos);

  const CommandResult bad_shape = run_dsmil("bench --kernel masked_softmax --shape 2,32,7");
  CHECK(bad_shape.status != 0);
  CHECK(bad_shape.output.find("takes 2 sizes") != std::string::npos);

  if (device::cuda_available()) {
    MESSAGE("a CUDA device is present: the no-GPU message is not tested here");
    return;
  }
  const CommandResult no_gpu = run_dsmil("bench --kernel relu");
  CHECK(no_gpu.status != 0);
  CHECK(no_gpu.output.find("CUDA") != std::string::npos);
  std::printf("[kernel-bench] without a GPU: %s", no_gpu.output.c_str());
}
