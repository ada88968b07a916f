// Config reading (TOML through toml++), overrides, validation and the resolved config text.
#include "apps/train/config.h"

#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

namespace dsmil::app {

namespace {

template <typename Choice>
using ChoiceNames = std::vector<std::pair<Choice, std::string_view>>;

// Each choice's names, in the order the help and the errors list them.
const ChoiceNames<Precision>& names_of(Precision) {
  static const ChoiceNames<Precision> names{
      {Precision::automatic, "auto"}, {Precision::fp32, "fp32"}, {Precision::bf16, "bf16"}};
  return names;
}
const ChoiceNames<ClassWeights>& names_of(ClassWeights) {
  static const ChoiceNames<ClassWeights> names{{ClassWeights::none, "none"}, {ClassWeights::balanced, "balanced"}};
  return names;
}
const ChoiceNames<Monitor>& names_of(Monitor) {
  static const ChoiceNames<Monitor> names{{Monitor::auc, "auc"},
                                          {Monitor::balanced_accuracy, "balanced_accuracy"},
                                          {Monitor::min_class_recall, "min_class_recall"},
                                          {Monitor::loss, "loss"}};
  return names;
}
const ChoiceNames<data::BadCasePolicy>& names_of(data::BadCasePolicy) {
  static const ChoiceNames<data::BadCasePolicy> names{
      {data::BadCasePolicy::fail, data::bad_case_policy_name(data::BadCasePolicy::fail)},
      {data::BadCasePolicy::skip, data::bad_case_policy_name(data::BadCasePolicy::skip)}};
  return names;
}
const ChoiceNames<report::ThresholdMethod>& names_of(report::ThresholdMethod) {
  using report::ThresholdMethod;
  static const ChoiceNames<ThresholdMethod> names{
      {ThresholdMethod::fixed_0_5, report::threshold_method_name(ThresholdMethod::fixed_0_5)},
      {ThresholdMethod::youden, report::threshold_method_name(ThresholdMethod::youden)},
      {ThresholdMethod::max_f1, report::threshold_method_name(ThresholdMethod::max_f1)}};
  return names;
}
// The model's own names (mil::pooling_name, mil::attention_name), which exported models carry too.
const ChoiceNames<mil::Pooling>& names_of(mil::Pooling) {
  static const ChoiceNames<mil::Pooling> names{{mil::Pooling::Max, mil::pooling_name(mil::Pooling::Max)},
                                               {mil::Pooling::TopK, mil::pooling_name(mil::Pooling::TopK)},
                                               {mil::Pooling::Soft, mil::pooling_name(mil::Pooling::Soft)}};
  return names;
}
const ChoiceNames<mil::Attention>& names_of(mil::Attention) {
  static const ChoiceNames<mil::Attention> names{{mil::Attention::Dsmil, mil::attention_name(mil::Attention::Dsmil)},
                                                 {mil::Attention::Gated, mil::attention_name(mil::Attention::Gated)}};
  return names;
}
const ChoiceNames<data::InstanceSampling>& names_of(data::InstanceSampling) {
  static const ChoiceNames<data::InstanceSampling> names{{data::InstanceSampling::random, "random"},
                                                         {data::InstanceSampling::stratified, "stratified"},
                                                         {data::InstanceSampling::fixed, "fixed"},
                                                         {data::InstanceSampling::all, "all"}};
  return names;
}
const ChoiceNames<data::CaseSampling>& names_of(data::CaseSampling) {
  static const ChoiceNames<data::CaseSampling> names{{data::CaseSampling::weighted, "weighted"},
                                                     {data::CaseSampling::balanced, "balanced"},
                                                     {data::CaseSampling::shuffle, "shuffle"}};
  return names;
}
const ChoiceNames<ConvFolding>& names_of(ConvFolding) {
  static const ChoiceNames<ConvFolding> names{
      {ConvFolding::measured, "measured"}, {ConvFolding::always, "always"}, {ConvFolding::never, "never"}};
  return names;
}
const ChoiceNames<ConvKernel>& names_of(ConvKernel) {
  static const ChoiceNames<ConvKernel> names{
      {ConvKernel::measured, "measured"}, {ConvKernel::cudnn, "cudnn"}, {ConvKernel::implicit_gemm, "implicit_gemm"}};
  return names;
}

template <typename Choice>
ChoiceField choice(const char* key, Choice* target) {
  return {[target] { return choice_name(*target); },
          [key, target](const std::string& text) {
            std::vector<std::string_view> allowed;
            for (const auto& [value, name] : names_of(Choice{})) {
              if (name == text) {
                *target = value;
                return;
              }
              allowed.push_back(name);
            }
            throw Error(fmt::format("config key '{}': '{}' is not one of {}", key, text, fmt::join(allowed, ", ")));
          }};
}

}  // namespace

template <typename Choice>
std::string choice_name(Choice value) {
  for (const auto& [v, name] : names_of(Choice{}))
    if (v == value) return std::string(name);
  throw Error(fmt::format("choice_name: value {} has no name", static_cast<int>(value)));
}
template std::string choice_name(Precision);
template std::string choice_name(ClassWeights);
template std::string choice_name(Monitor);
template std::string choice_name(data::BadCasePolicy);
template std::string choice_name(report::ThresholdMethod);
template std::string choice_name(mil::Pooling);
template std::string choice_name(mil::Attention);
template std::string choice_name(data::InstanceSampling);
template std::string choice_name(data::CaseSampling);
template std::string choice_name(ConvFolding);
template std::string choice_name(ConvKernel);

std::vector<NamedField> config_fields(RunConfig& c) {
  return {
      {"run.name", &c.name},
      {"data.root", &c.data_root},
      {"data.cache", &c.cache_dir},
      {"data.grid", &c.grid},
      {"data.on_bad_case", choice("data.on_bad_case", &c.on_bad_case)},
      {"data.resident", &c.resident},
      {"model.depth", &c.depth},
      {"model.width", &c.width},
      {"model.slab_depth", &c.slab_depth},
      {"model.drop_path", &c.drop_path},
      {"model.zero_init_residual", &c.zero_init_residual},
      {"model.zero_init_classifiers", &c.zero_init_classifiers},
      {"model.pooling", choice("model.pooling", &c.pooling)},
      {"model.topk", &c.topk},
      {"model.attention", choice("model.attention", &c.attention)},
      {"model.attention_temperature", &c.attention_temperature},
      {"model.feature_dropout", &c.feature_dropout},
      {"model.instance_dropout", &c.instance_dropout},
      {"loss.label_smoothing", &c.label_smoothing},
      {"loss.focal_gamma", &c.focal_gamma},
      {"loss.class_weights", choice("loss.class_weights", &c.class_weights)},
      {"loss.stream_weight", &c.stream_weight},
      {"loss.entropy_weight", &c.entropy_weight},
      {"train.epochs", &c.epochs},
      {"train.min_epochs", &c.min_epochs},
      {"train.patience", &c.patience},
      {"train.selection_train_auc", &c.selection_train_auc},
      {"train.monitor", choice("train.monitor", &c.monitor)},
      {"train.bags_per_step", &c.bags_per_step},
      {"train.instances", &c.instances},
      {"train.eval_instances", &c.eval_instances},
      {"train.instance_sampling", choice("train.instance_sampling", &c.instance_sampling)},
      {"train.case_sampling", choice("train.case_sampling", &c.case_sampling)},
      {"train.lr", &c.lr},
      {"train.weight_decay", &c.weight_decay},
      {"train.warmup_epochs", &c.warmup_epochs},
      {"train.clip_grad", &c.clip_grad},
      {"train.ema_decay", &c.ema_decay},
      {"train.tau_start", &c.tau_start},
      {"train.tau_end", &c.tau_end},
      {"train.augment", &c.augment},
      {"train.sync_batchnorm", &c.sync_batchnorm},
      {"train.threshold", choice("train.threshold", &c.threshold)},
      {"cv.folds", &c.folds},
      {"cv.inner_val", &c.inner_val},
      {"cv.repeats", &c.repeats},
      {"cv.select_on_test", &c.select_on_test},
      {"cv.seed", &c.seed},
      {"run.device", &c.device},
      {"run.precision", choice("run.precision", &c.precision)},
      {"run.strict_fp32", &c.strict_fp32},
      {"run.deterministic", &c.deterministic},
      {"run.conv_fold", choice("run.conv_fold", &c.conv_fold)},
      {"run.conv16_kernel", choice("run.conv16_kernel", &c.conv16_kernel)},
      {"run.cuda_graph", &c.cuda_graph},
      {"run.plot_every", &c.plot_every},
      {"run.checkpoint_seconds", &c.checkpoint_seconds},
      {"run.threads", &c.threads},
  };
}

mil::ModelConfig RunConfig::model_config() const {
  mil::ModelConfig m;
  m.encoder = {
      depth, width, slab_depth, 4, static_cast<float>(drop_path), precision == Precision::bf16, zero_init_residual};
  m.head.pooling = pooling;
  m.head.topk = topk;
  m.head.attention = attention;
  m.head.attention_temperature = static_cast<float>(attention_temperature);
  m.head.feature_dropout = static_cast<float>(feature_dropout);
  m.head.instance_dropout = static_cast<float>(instance_dropout);
  m.head.zero_init_classifiers = zero_init_classifiers;
  return m;
}

mil::LossConfig RunConfig::loss_config() const {
  return {static_cast<float>(label_smoothing), static_cast<float>(focal_gamma), static_cast<float>(stream_weight),
          static_cast<float>(entropy_weight)};
}

nn::AdamWConfig RunConfig::optimizer_config() const {
  nn::AdamWConfig c;
  c.lr = static_cast<float>(lr);
  c.weight_decay = static_cast<float>(weight_decay);
  c.max_grad_norm = static_cast<float>(clip_grad);
  return c;
}

MathMode RunConfig::math() const {
  MathMode m;
  m.allow_tf32 = !strict_fp32;
  m.deterministic = deterministic;
  m.conv_space_to_depth = conv_fold;
  m.conv16_forward = conv16_kernel;
  return m;
}

namespace {

NamedField& field_named(std::vector<NamedField>& fields, const std::string& key) {
  for (NamedField& f : fields)
    if (f.key == key) return f;
  throw Error(fmt::format("unknown config key '{}'", key));
}

// A number, flag or string into its field; false when the TOML value has another type.
template <typename T>
bool assign_value(const std::string& key, T* target, const toml::node& value) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (auto s = value.value<std::string>()) return *target = *s, true;
  } else if constexpr (std::is_same_v<T, bool>) {
    if (auto b = value.value<bool>()) return *target = *b, true;
  } else if constexpr (std::is_same_v<T, double>) {
    if (value.is_number()) return *target = *value.value<double>(), true;
  } else {
    if (!value.is_integer()) return false;
    const int64_t v = *value.value<int64_t>();
    if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
      throw Error(fmt::format("config key '{}': {} does not fit a {}-bit integer", key, v, 8 * sizeof(T)));
    return *target = static_cast<T>(v), true;
  }
  return false;
}

// A name into its choice (which refuses names it does not know); false when the TOML value is not a string.
bool assign_value(const std::string&, const ChoiceField& choice, const toml::node& value) {
  const auto name = value.value<std::string>();
  if (!name) return false;
  choice.set(*name);
  return true;
}

void assign(NamedField& f, const toml::node& value) {
  const bool ok = std::visit([&](const auto& target) { return assign_value(f.key, target, value); }, f.field);
  if (!ok) throw Error(fmt::format("config key '{}': wrong type of value", f.key));
}

void assign_table(std::vector<NamedField>& fields, const toml::table& table, const std::string& prefix) {
  for (const auto& [key, node] : table) {
    const std::string full = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* sub = node.as_table()) {
      assign_table(fields, *sub, full);
    } else {
      assign(field_named(fields, full), node);
    }
  }
}

template <typename T>
void check_in(const std::string& key, const T& value, std::initializer_list<T> allowed) {
  for (const T& a : allowed)
    if (a == value) return;
  throw Error(fmt::format("config key '{}': '{}' is not one of {}", key, value, fmt::join(allowed, ", ")));
}

void check_range(const std::string& key, double value, double lo, double hi) {
  if (!(value >= lo && value <= hi))
    throw Error(fmt::format("config key '{}': {} outside [{}, {}]", key, value, lo, hi));
}

}  // namespace

std::filesystem::path find_config_file(const std::string& name) {
  namespace fs = std::filesystem;
  const std::string file_name = fs::path(name).filename().string() + ".toml";
  std::vector<fs::path> candidates = {fs::path(name), fs::path(name + ".toml"), fs::path("configs") / (name + ".toml")};
  // An installed dsmil (a release archive unpacked anywhere) finds its configs from its own path, whatever the
  // working directory; a binary of a build tree has none there and takes those of its source tree.
  std::error_code no_executable;
  if (const fs::path executable = fs::read_symlink("/proc/self/exe", no_executable); !no_executable)
    candidates.push_back((executable.parent_path() / DSMIL_INSTALLED_CONFIG_DIR / file_name).lexically_normal());
  candidates.push_back(fs::path(DSMIL_SOURCE_DIR) / "configs" / file_name);
  for (const fs::path& candidate : candidates)
    if (fs::is_regular_file(candidate)) return candidate;
  std::vector<std::string> looked;
  for (const fs::path& candidate : candidates) looked.push_back(candidate.string());
  throw Error(fmt::format("config '{}' not found (looked for {})", name, fmt::join(looked, ", ")));
}

RunConfig load_config(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw FormatError(fmt::format("config {}: cannot open", file.string()));
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), file.string());
}

RunConfig parse_config(const std::string& text, const std::string& origin) {
  RunConfig config;
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    throw FormatError(fmt::format("config {}: {} (line {})", origin, e.description(), e.source().begin.line));
  }
  auto fields = config_fields(config);
  assign_table(fields, table, "");
  return config;
}

void apply_override(RunConfig& config, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error(fmt::format("--set '{}': expected section.key=value", assignment));
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  auto fields = config_fields(config);
  NamedField& f = field_named(fields, key);
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"v", text}};  // a bare word: a string
  }
  assign(f, *parsed.get("v"));
}

void resolve_precision(RunConfig& config, Device device) {
  if (config.precision == Precision::automatic)
    config.precision = device == Device::CUDA ? Precision::bf16 : Precision::fp32;
  if (config.precision == Precision::bf16 && device == Device::CPU)
    throw Error("run.precision = bf16 needs the CUDA backend; the CPU backend computes in fp32");
}

void validate_config(const RunConfig& c) {
  check_in<int>("model.depth", c.depth, {10, 18, 34});
  check_range("model.width", c.width, 1, 1024);
  check_range("model.slab_depth", c.slab_depth, 1, 64);
  check_range("model.drop_path", c.drop_path, 0, 0.9);
  check_range("model.topk", c.topk, 1, 1024);
  check_range("model.attention_temperature", c.attention_temperature, 1e-3, 1e3);
  check_range("model.feature_dropout", c.feature_dropout, 0, 0.95);
  check_range("model.instance_dropout", c.instance_dropout, 0, 0.95);
  check_range("loss.label_smoothing", c.label_smoothing, 0, 0.5);
  check_range("loss.focal_gamma", c.focal_gamma, 0, 10);
  check_range("loss.stream_weight", c.stream_weight, 0, 1);
  check_range("loss.entropy_weight", c.entropy_weight, 0, 10);
  check_range("train.epochs", c.epochs, 1, 100000);
  check_range("train.min_epochs", c.min_epochs, 0, c.epochs);
  check_range("train.patience", c.patience, 1, 100000);
  check_range("train.selection_train_auc", c.selection_train_auc, 0, 1);
  check_range("train.bags_per_step", c.bags_per_step, 1, 4096);
  check_range("train.instances", c.instances, 1, 4096);
  check_range("train.eval_instances", c.eval_instances, 1, 4096);
  check_range("train.lr", c.lr, 0, 10);
  check_range("train.weight_decay", c.weight_decay, 0, 10);
  check_range("train.warmup_epochs", c.warmup_epochs, 0, c.epochs);
  check_range("train.clip_grad", c.clip_grad, 0, 1e6);
  check_range("train.ema_decay", c.ema_decay, 0, 0.999999);
  check_range("train.tau_start", c.tau_start, 1e-3, 1e3);
  check_range("train.tau_end", c.tau_end, 1e-3, 1e3);
  check_range("cv.folds", c.folds, 2, 100);
  check_range("cv.inner_val", c.inner_val, c.select_on_test ? 0 : 0.01, 0.5);
  check_range("cv.repeats", c.repeats, 1, 100);
  check_in<std::string>("run.device", c.device, {"auto", "cpu", "cuda"});
  check_range("run.plot_every", c.plot_every, 0, 100000);
  check_range("run.checkpoint_seconds", c.checkpoint_seconds, 0, 1e6);
  check_range("run.threads", c.threads, 0, 1024);
}

std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b) {
  RunConfig left = a, right = b;
  const std::vector<NamedField> lf = config_fields(left), rf = config_fields(right);
  auto text = [](const ConfigField& field) {
    return std::visit(
        [](const auto& v) {
          if constexpr (std::is_pointer_v<std::decay_t<decltype(v)>>)
            return fmt::format("{}", *v);
          else
            return v.get();
        },
        field);
  };
  std::vector<std::string> out;
  for (size_t i = 0; i < lf.size(); ++i)
    if (text(lf[i].field) != text(rf[i].field))
      out.push_back(fmt::format("{}: {} vs {}", lf[i].key, text(lf[i].field), text(rf[i].field)));
  return out;
}

std::string config_to_toml(const RunConfig& config) {
  RunConfig copy = config;
  toml::table root;
  for (const NamedField& f : config_fields(copy)) {
    const size_t dot = f.key.find('.');
    const std::string section = f.key.substr(0, dot), key = f.key.substr(dot + 1);
    if (!root.contains(section)) root.insert(section, toml::table{});
    toml::table& table = *root.get_as<toml::table>(section);
    std::visit(
        [&](const auto& v) {
          if constexpr (std::is_pointer_v<std::decay_t<decltype(v)>>)
            table.insert(key, *v);
          else
            table.insert(key, v.get());
        },
        f.field);
  }
  std::ostringstream out;
  out << root << "\n";
  return out.str();
}

}  // namespace dsmil::app
