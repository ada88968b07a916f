// The registry of kernel benches (the groups of bench_*.cpp, in table order) and the selection of
// entries, variants and dtypes from the command line, with messages that name the valid choices.
#include "apps/kernel_bench/registry.h"

#include <fmt/format.h>

#include <algorithm>
#include <sstream>

namespace dsmil::kernel_bench {

const char* variant_name(Variant v) { return v == Variant::Fast ? "fast" : "plain"; }

const std::vector<KernelBench>& all_benches() {
  static const std::vector<KernelBench> benches = [] {
    std::vector<KernelBench> list;
    add_mil_head_benches(list);
    add_norm_pool_benches(list);
    add_batchnorm_relu_benches(list);
    add_elementwise_benches(list);
    add_reduction_benches(list);
    add_optimizer_benches(list);
    add_data_path_benches(list);
    add_convolution_benches(list);
    return list;
  }();
  return benches;
}

std::string bench_names() {
  std::string names;
  for (const KernelBench& b : all_benches()) names += (names.empty() ? "" : ", ") + b.name;
  return names;
}

namespace {

std::vector<Variant> parse_variants(const std::string& variant) {
  if (variant == "fast") return {Variant::Fast};
  if (variant == "plain") return {Variant::Plain};
  if (variant == "both") return {Variant::Fast, Variant::Plain};
  throw Error(fmt::format("dsmil bench: --variant '{}' is not one of fast, plain, both", variant));
}

std::vector<DType> parse_dtypes(const std::string& dtype) {
  if (dtype == "f32") return {DType::F32};
  if (dtype == "bf16") return {DType::BF16};
  if (dtype == "all") return {DType::F32, DType::BF16};
  throw Error(fmt::format("dsmil bench: --dtype '{}' is not one of f32, bf16, all", dtype));
}

std::string dtype_list(const KernelBench& b) {
  std::string list;
  for (DType d : b.dtypes) list += (list.empty() ? "" : ", ") + std::string(dtype_name(d));
  return list;
}

std::string names_with_plain() {
  std::string names;
  for (const KernelBench& b : all_benches())
    if (b.has_plain()) names += (names.empty() ? "" : ", ") + b.name;
  return names;
}

}  // namespace

std::vector<Selection> select_benches(const std::string& kernel, const std::string& variant, const std::string& dtype) {
  const std::vector<Variant> variants = parse_variants(variant);
  const std::vector<DType> dtypes = parse_dtypes(dtype);
  const bool all = kernel == "all";
  const auto& benches = all_benches();
  if (!all && std::none_of(benches.begin(), benches.end(), [&](const KernelBench& b) { return b.name == kernel; }))
    throw Error(fmt::format("dsmil bench: unknown kernel '{}'; valid names: all, list, {}", kernel, bench_names()));
  std::vector<Selection> chosen;
  for (const KernelBench& b : benches) {
    if (!all && b.name != kernel) continue;
    const bool plain_only = variants.size() == 1 && variants[0] == Variant::Plain;
    if (!all && plain_only && !b.has_plain())
      throw Error(fmt::format("dsmil bench: kernel '{}' has no plain variant; kernels with one: {}", b.name,
                              names_with_plain()));
    const bool some_dtype = std::any_of(dtypes.begin(), dtypes.end(), [&](DType d) {
      return std::find(b.dtypes.begin(), b.dtypes.end(), d) != b.dtypes.end();
    });
    if (!all && !some_dtype)
      throw Error(
          fmt::format("dsmil bench: kernel '{}' runs in {} only, not --dtype {}", b.name, dtype_list(b), dtype));
    for (DType d : b.dtypes) {
      if (std::find(dtypes.begin(), dtypes.end(), d) == dtypes.end()) continue;
      for (Variant v : variants)
        if (v == Variant::Fast || b.has_plain()) chosen.push_back({&b, v, d});
    }
  }
  return chosen;
}

Shape parse_shape(const std::string& text, const KernelBench& bench) {
  Shape shape;
  std::string item;
  std::string normalised = text;
  std::replace(normalised.begin(), normalised.end(), 'x', ',');
  std::istringstream in(normalised);
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || value < 1)
      throw Error(
          fmt::format("dsmil bench: --shape '{}' is not a list of positive sizes such as 64,4,64,64,64 "
                      "(kernel {} takes {})",
                      text, bench.name, bench.shape_meaning));
    shape.push_back(value);
  }
  if (shape.empty() || (bench.shape_rank > 0 && static_cast<int>(shape.size()) != bench.shape_rank))
    throw Error(fmt::format("dsmil bench: --shape '{}': kernel {} takes {} sizes: {}", text, bench.name,
                            bench.shape_rank > 0 ? std::to_string(bench.shape_rank) : "one or more",
                            bench.shape_meaning));
  return shape;
}

}  // namespace dsmil::kernel_bench
