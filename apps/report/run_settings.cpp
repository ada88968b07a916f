// Reads the settings the recommendations depend on from a run's resolved config.toml (toml++, header-only as
// for dsmil_train; apps/train is not a dependency of the report), and the monitor and threshold method from
// the folds.
#include "apps/report/run_settings.h"

#include <fmt/format.h>
#include <toml++/toml.h>

namespace dsmil::report {
namespace fs = std::filesystem;

namespace {

template <typename T>
using Field = std::pair<std::string_view, std::optional<T> RunSettings::*>;

// A setting stays empty when the key is absent or of another type (a config written by an older dsmil),
// which the advice then treats as unknown.
template <typename T>
void read_fields(const toml::table& config, RunSettings& s, std::initializer_list<Field<T>> fields) {
  for (const auto& [key, member] : fields) s.*member = config.at_path(key).template value<T>();
}

void read_config(const toml::table& c, RunSettings& s) {
  using S = RunSettings;
  read_fields<std::string>(c, s,
                           {{"train.case_sampling", &S::case_sampling},
                            {"loss.class_weights", &S::class_weights},
                            {"train.instance_sampling", &S::instance_sampling},
                            {"model.pooling", &S::pooling},
                            {"model.attention", &S::attention},
                            {"train.monitor", &S::monitor},
                            {"train.threshold", &S::threshold_method}});
  read_fields<double>(c, s,
                      {{"loss.label_smoothing", &S::label_smoothing},
                       {"loss.focal_gamma", &S::focal_gamma},
                       {"loss.entropy_weight", &S::entropy_weight},
                       {"model.feature_dropout", &S::feature_dropout},
                       {"model.drop_path", &S::drop_path},
                       {"model.instance_dropout", &S::instance_dropout},
                       {"train.lr", &S::lr},
                       {"train.selection_train_auc", &S::selection_train_auc},
                       {"cv.inner_val", &S::inner_val}});
  read_fields<int>(
      c, s, {{"train.instances", &S::instances}, {"train.epochs", &S::epochs}, {"train.patience", &S::patience}});
}

// The value that every fold's fold.json holds; none when they differ.
std::optional<std::string> common(const RunData& run, std::string FoldInfo::*field) {
  if (run.folds.empty()) return std::nullopt;
  const std::string& first = run.folds.front().info.*field;
  for (const auto& f : run.folds)
    if (f.info.*field != first) return std::nullopt;
  return first;
}

}  // namespace

RunSettings read_run_settings(const std::vector<fs::path>& inputs, const RunData& run) {
  RunSettings s;
  const fs::path file = inputs.size() == 1 ? inputs.front() / "config.toml" : fs::path();
  if (file.empty()) {
    s.source = "the folds come from several inputs";
  } else if (!fs::exists(file)) {
    s.source = fmt::format("there is no config.toml in `{}`", inputs.front().string());
  } else {
    try {
      read_config(toml::parse_file(file.string()), s);
      s.config_read = true;
      s.source = fmt::format("`{}`", file.string());
    } catch (const toml::parse_error& e) {
      s.source =
          fmt::format("`{}` could not be read: {} (line {})", file.string(), e.description(), e.source().begin.line);
    }
  }
  if (auto monitor = common(run, &FoldInfo::monitor)) s.monitor = std::move(monitor);
  if (auto method = common(run, &FoldInfo::threshold_method)) s.threshold_method = std::move(method);
  s.repeats = run.n_repeats();
  return s;
}

}  // namespace dsmil::report
