// Parses the files of a run directory (fold.json, metrics.jsonl, predictions.csv, attention.csv) into
// FoldData records and finds the folds under run directories; every malformed input is a FormatError.
#include "apps/report/run_dir.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace dsmil::report {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::ifstream open_or_throw(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open", path.string()));
  return in;
}

// A field of a JSON object; `where` names the file (and line) for the error message.
const json& field(const json& object, const char* name, const std::string& where) {
  if (!object.is_object() || !object.contains(name))
    throw FormatError(fmt::format("{}: missing field \"{}\"", where, name));
  return object.at(name);
}

double number_or_nan(const json& object, const char* name, const std::string& where) {
  const json& v = field(object, name, where);
  if (v.is_null()) return kNaN;
  if (!v.is_number()) throw FormatError(fmt::format("{}: field \"{}\" is not a number", where, name));
  return v.get<double>();
}

int integer(const json& object, const char* name, const std::string& where) {
  const json& v = field(object, name, where);
  if (!v.is_number_integer()) throw FormatError(fmt::format("{}: field \"{}\" is not an integer", where, name));
  return v.get<int>();
}

std::string text(const json& object, const char* name, const std::string& where) {
  const json& v = field(object, name, where);
  if (!v.is_string()) throw FormatError(fmt::format("{}: field \"{}\" is not a string", where, name));
  return v.get<std::string>();
}

Confusion confusion_from(const json& object, const std::string& where) {
  const json& m = field(object, "confusion", where);
  const bool square =
      m.is_array() && m.size() == 2 && m[0].is_array() && m[0].size() == 2 && m[1].is_array() && m[1].size() == 2;
  if (!square) throw FormatError(fmt::format("{}: \"confusion\" is not [[tn,fp],[fn,tp]]", where));
  return {m[0][0].get<long>(), m[0][1].get<long>(), m[1][0].get<long>(), m[1][1].get<long>()};
}

SplitRecord split_record(const json& object, const std::string& where) {
  SplitRecord r;
  r.loss = number_or_nan(object, "loss", where);
  r.auc = number_or_nan(object, "auc", where);
  r.accuracy = number_or_nan(object, "accuracy", where);
  r.balanced_accuracy = number_or_nan(object, "balanced_accuracy", where);
  r.f1 = number_or_nan(object, "f1", where);
  r.recall_lgg = number_or_nan(object, "recall_lgg", where);
  r.recall_hgg = number_or_nan(object, "recall_hgg", where);
  r.confusion = confusion_from(object, where);
  return r;
}

AttentionRecord attention_record(const json& object, const std::string& where) {
  AttentionRecord a;
  a.entropy = number_or_nan(object, "entropy", where);
  a.entropy_norm = number_or_nan(object, "entropy_norm", where);
  a.top1 = number_or_nan(object, "top1", where);
  a.neff = number_or_nan(object, "neff", where);
  const json& confidence = field(object, "selection_confidence", where);
  const std::string confidence_where = where + " selection_confidence";
  a.confidence_mean = number_or_nan(confidence, "mean", confidence_where);
  a.confidence_p10 = number_or_nan(confidence, "p10", confidence_where);
  a.confidence_p50 = number_or_nan(confidence, "p50", confidence_where);
  a.confidence_p90 = number_or_nan(confidence, "p90", confidence_where);
  for (auto [key, value] : {std::pair{"critical_tumour_share", &a.critical_tumour_share},
                            std::pair{"attention_tumour_mass", &a.attention_tumour_mass},
                            std::pair{"tumour_slab_share", &a.tumour_slab_share}})
    if (object.contains(key) && !object.at(key).is_null()) *value = number_or_nan(object, key, where);
  return a;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  std::istringstream stream(line);
  while (std::getline(stream, cell, ',')) cells.push_back(cell);
  if (!line.empty() && line.back() == ',') cells.emplace_back();
  return cells;
}

// A CSV file with a header row; cells are looked up by column name so that columns may be reordered
// or added without breaking the reader.
class CsvTable {
 public:
  CsvTable(const fs::path& path, const std::vector<std::string>& required) : path_(path.string()) {
    std::ifstream in = open_or_throw(path);
    std::string line;
    if (!std::getline(in, line)) throw FormatError(fmt::format("{}: empty file, expected a header", path.string()));
    strip_cr(line);
    const auto header = split_csv_line(line);
    for (size_t i = 0; i < header.size(); ++i) column_[header[i]] = i;
    for (const auto& name : required)
      if (!column_.contains(name))
        throw FormatError(fmt::format("{}: header lacks column \"{}\"", path.string(), name));
    for (int line_no = 2; std::getline(in, line); ++line_no) {
      strip_cr(line);
      if (line.empty()) continue;
      auto cells = split_csv_line(line);
      if (cells.size() != header.size())
        throw FormatError(
            fmt::format("{}:{}: {} cells, header has {}", path.string(), line_no, cells.size(), header.size()));
      rows_.push_back({line_no, std::move(cells)});
    }
  }

  size_t size() const { return rows_.size(); }
  const std::string& cell(size_t row, const std::string& name) const { return rows_[row].cells[column_.at(name)]; }
  double number(size_t row, const std::string& name) const {
    const std::string& s = cell(row, name);
    double value = 0;
    const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (error != std::errc() || end != s.data() + s.size())
      throw FormatError(fmt::format("{}:{}: {} \"{}\" is not a number", path_, rows_[row].line_no, name, s));
    return value;
  }
  int binary(size_t row, const std::string& name) const {
    const std::string& s = cell(row, name);
    if (s != "0" && s != "1")
      throw FormatError(fmt::format("{}:{}: {} \"{}\" is not 0 or 1", path_, rows_[row].line_no, name, s));
    return s == "1";
  }
  std::string where(size_t row) const { return fmt::format("{}:{}", path_, rows_[row].line_no); }

 private:
  static void strip_cr(std::string& line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
  }
  struct Row {
    int line_no;
    std::vector<std::string> cells;
  };
  std::string path_;
  std::map<std::string, size_t> column_;
  std::vector<Row> rows_;
};

bool is_fold_dir(const fs::path& dir) { return fs::is_regular_file(dir / "fold.json"); }

// Subdirectories named <prefix><integer>, in numeric order.
std::vector<fs::path> numbered_subdirs(const fs::path& dir, const std::string& prefix) {
  std::vector<std::pair<int, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !name.starts_with(prefix)) continue;
    int index = 0;
    const char* digits = name.data() + prefix.size();
    const auto [end, error] = std::from_chars(digits, name.data() + name.size(), index);
    if (error == std::errc() && end == name.data() + name.size()) found.emplace_back(index, entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> dirs;
  for (auto& [index, path] : found) dirs.push_back(path);
  return dirs;
}

// r for a folder named repeat_r, else 0 (a run without repeats).
int repeat_of_folder(const fs::path& dir) {
  const std::string name = dir.filename().string();
  const std::string prefix = "repeat_";
  int repeat = 0;
  if (!name.starts_with(prefix)) return 0;
  const auto [end, error] = std::from_chars(name.data() + prefix.size(), name.data() + name.size(), repeat);
  return error == std::errc() && end == name.data() + name.size() ? repeat : 0;
}

}  // namespace

int RunData::n_repeats() const {
  std::set<int> repeats;
  for (const auto& f : folds) repeats.insert(f.info.repeat);
  return static_cast<int>(repeats.size());
}

std::string RunData::protocol() const {
  std::set<std::string> protocols;
  for (const auto& f : folds) protocols.insert(f.info.protocol);
  if (protocols.size() == 1) return *protocols.begin();
  return protocols.empty() ? "unknown" : "mixed";
}

std::vector<PredictionRow> read_predictions_csv(const fs::path& path) {
  const CsvTable table(path, {"case_id", "label", "p_hgg", "pred_05", "threshold", "pred_thr", "split", "model"});
  std::vector<PredictionRow> rows;
  for (size_t i = 0; i < table.size(); ++i) {
    PredictionRow r;
    r.case_id = table.cell(i, "case_id");
    r.label = table.binary(i, "label");
    r.p_hgg = table.number(i, "p_hgg");
    if (!(r.p_hgg >= 0.0 && r.p_hgg <= 1.0))
      throw FormatError(fmt::format("{}: p_hgg {} is not in [0, 1]", table.where(i), r.p_hgg));
    r.pred_05 = table.binary(i, "pred_05");
    r.threshold = table.number(i, "threshold");
    r.pred_thr = table.binary(i, "pred_thr");
    r.split = table.cell(i, "split");
    r.model = table.cell(i, "model");
    if (r.split != "test" && r.split != "val")
      throw FormatError(fmt::format("{}: split \"{}\" is not test or val", table.where(i), r.split));
    if (r.model != "raw" && r.model != "ema")
      throw FormatError(fmt::format("{}: model \"{}\" is not raw or ema", table.where(i), r.model));
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<AttentionRow> read_attention_csv(const fs::path& path) {
  const CsvTable table(path, {"case_id", "instance", "slab_start", "attention", "critical"});
  std::vector<AttentionRow> rows;
  for (size_t i = 0; i < table.size(); ++i) {
    rows.push_back({table.cell(i, "case_id"), static_cast<int>(table.number(i, "instance")),
                    static_cast<int>(table.number(i, "slab_start")), table.number(i, "attention"),
                    table.binary(i, "critical") == 1});
  }
  return rows;
}

std::vector<EpochRecord> read_metrics_jsonl(const fs::path& path) {
  std::ifstream in = open_or_throw(path);
  std::vector<EpochRecord> history;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path.string(), line_no);
    json object;
    try {
      object = json::parse(line);
    } catch (const json::parse_error& e) {
      throw FormatError(fmt::format("{}: not JSON ({})", where, e.what()));
    }
    EpochRecord e;
    e.epoch = integer(object, "epoch", where);
    e.lr = number_or_nan(object, "lr", where);
    e.tau = number_or_nan(object, "tau", where);
    e.train = split_record(field(object, "train", where), where + " train");
    e.val = split_record(field(object, "val", where), where + " val");
    if (object.contains("val_ema") && !object.at("val_ema").is_null())
      e.val_ema = split_record(object.at("val_ema"), where + " val_ema");
    if (object.contains("attention") && !object.at("attention").is_null())
      e.attention = attention_record(object.at("attention"), where + " attention");
    e.throughput_bags_per_s = number_or_nan(object, "throughput_bags_per_s", where);
    e.epoch_time_s = number_or_nan(object, "epoch_time_s", where);
    if (object.contains("health") && object.at("health").contains("warning"))
      e.health_warning = text(object.at("health"), "warning", where + " health");
    if (!history.empty() && e.epoch != history.back().epoch + 1)
      throw FormatError(fmt::format("{}: epoch {} follows epoch {}", where, e.epoch, history.back().epoch));
    history.push_back(std::move(e));
  }
  return history;
}

FoldInfo read_fold_json(const fs::path& path) {
  std::ifstream in = open_or_throw(path);
  json object;
  try {
    object = json::parse(in);
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("{}: not JSON ({})", path.string(), e.what()));
  }
  const std::string where = path.string();
  FoldInfo f;
  f.fold = integer(object, "fold", where);
  f.repeat = object.contains("repeat") ? integer(object, "repeat", where) : -1;
  f.best_epoch = integer(object, "best_epoch", where);
  f.chosen_model = text(object, "chosen_model", where);
  f.monitor = text(object, "monitor", where);
  f.monitor_value = number_or_nan(object, "monitor_value", where);
  f.threshold_method = text(object, "threshold_method", where);
  f.threshold = number_or_nan(object, "threshold", where);
  f.stopped_early = field(object, "stopped_early", where).get<bool>();
  f.epochs_run = integer(object, "epochs_run", where);
  f.protocol = text(object, "protocol", where);
  f.n_train = integer(object, "n_train", where);
  f.n_val = integer(object, "n_val", where);
  f.n_test = integer(object, "n_test", where);
  if (f.chosen_model != "raw" && f.chosen_model != "ema")
    throw FormatError(fmt::format("{}: chosen_model \"{}\" is not raw or ema", where, f.chosen_model));
  if (f.protocol != "nested" && f.protocol != "select_on_test")
    throw FormatError(fmt::format("{}: protocol \"{}\" is not nested or select_on_test", where, f.protocol));
  parse_threshold_method(f.threshold_method);
  return f;
}

FoldData load_fold(const fs::path& fold_dir) {
  FoldData f;
  f.dir = fold_dir;
  f.info = read_fold_json(fold_dir / "fold.json");
  if (f.info.repeat < 0) f.info.repeat = repeat_of_folder(fold_dir.parent_path());
  f.history = read_metrics_jsonl(fold_dir / "metrics.jsonl");
  f.predictions = read_predictions_csv(fold_dir / "predictions.csv");
  if (fs::exists(fold_dir / "attention.csv")) f.attention = read_attention_csv(fold_dir / "attention.csv");
  return f;
}

namespace {

// The run directory a fold directory belongs to: fold_k/ or repeat_r/fold_k/ below it.
fs::path run_dir_of(const FoldData& fold) {
  const fs::path parent = fold.dir.parent_path();
  return parent.filename().string().rfind("repeat_", 0) == 0 ? parent.parent_path() : parent;
}

// Folds merged from runs made apart (`cv --folds`, other machines) must be one CV: the same config wherever
// config.toml exists, the same splits among the folds of one repeat wherever splits.json exists (each repeat draws
// its own), and no case in the test set of two folds of one repeat.
void check_folds_belong_together(const std::vector<FoldData>& folds) {
  std::map<std::string, fs::path> configs;
  std::map<int, std::map<std::string, fs::path>> splits_of_repeat;
  for (const FoldData& fold : folds) {
    const fs::path run_dir = run_dir_of(fold);
    if (fs::exists(run_dir / "config.toml")) configs.emplace(read_text_file(run_dir / "config.toml"), run_dir);
    const fs::path splits_json = fold.dir.parent_path() / "splits.json";
    if (fs::exists(splits_json))
      splits_of_repeat[fold.info.repeat].emplace(read_text_file(splits_json), fold.dir.parent_path());
  }
  if (configs.size() > 1)
    throw FormatError(fmt::format("the folds come from runs with different configs: {} and {}",
                                  configs.begin()->second.string(), std::next(configs.begin())->second.string()));
  for (const auto& [repeat, splits] : splits_of_repeat)
    if (splits.size() > 1)
      throw FormatError(fmt::format("the folds of repeat {} come from runs with different splits: {} and {}", repeat,
                                    splits.begin()->second.string(), std::next(splits.begin())->second.string()));
  std::map<std::pair<int, std::string>, const FoldData*> tested_in;
  for (const FoldData& fold : folds)
    for (const PredictionRow& row : fold.predictions) {
      if (row.split != "test") continue;
      const auto [it, fresh] = tested_in.emplace(std::pair(fold.info.repeat, row.case_id), &fold);
      if (!fresh && it->second != &fold)
        throw FormatError(fmt::format("case {} is in the test set of {} and of {}: these folds are not one CV",
                                      row.case_id, it->second->dir.string(), fold.dir.string()));
    }
}

}  // namespace

RunData load_runs(const std::vector<fs::path>& inputs) {
  if (inputs.empty()) throw FormatError("no run or fold directory given");
  RunData run;
  for (const auto& input : inputs) {
    if (!fs::is_directory(input)) throw FormatError(fmt::format("{}: not a directory", input.string()));
    std::vector<fs::path> fold_dirs;
    if (is_fold_dir(input)) fold_dirs.push_back(input);
    for (const auto& dir : numbered_subdirs(input, "fold_")) fold_dirs.push_back(dir);
    for (const auto& repeat_dir : numbered_subdirs(input, "repeat_"))
      for (const auto& dir : numbered_subdirs(repeat_dir, "fold_")) fold_dirs.push_back(dir);
    if (fold_dirs.empty())
      throw FormatError(
          fmt::format("{}: holds neither fold.json nor fold_k/ or repeat_r/fold_k/ folders", input.string()));
    for (const auto& dir : fold_dirs) run.folds.push_back(load_fold(dir));
  }
  std::sort(run.folds.begin(), run.folds.end(), [](const FoldData& a, const FoldData& b) {
    return std::pair(a.info.repeat, a.info.fold) < std::pair(b.info.repeat, b.info.fold);
  });
  for (size_t i = 1; i < run.folds.size(); ++i) {
    const auto& a = run.folds[i - 1];
    const auto& b = run.folds[i];
    if (a.info.repeat == b.info.repeat && a.info.fold == b.info.fold)
      throw FormatError(fmt::format("repeat {} fold {} is given twice: {} and {}", a.info.repeat, a.info.fold,
                                    a.dir.string(), b.dir.string()));
  }
  check_folds_belong_together(run.folds);
  return run;
}

json split_record_json(std::span<const int> labels, std::span<const double> p_hgg, double loss) {
  const ThresholdMetrics m = threshold_metrics(labels, p_hgg, 0.5);
  const auto or_null = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  const Confusion& c = m.confusion;
  return {{"loss", or_null(loss)},
          {"auc", or_null(auc(labels, p_hgg))},
          {"accuracy", or_null(m.accuracy)},
          {"balanced_accuracy", or_null(m.balanced_accuracy)},
          {"f1", or_null(m.f1)},
          {"recall_lgg", or_null(m.specificity)},
          {"recall_hgg", or_null(m.sensitivity)},
          {"confusion", {{c.tn, c.fp}, {c.fn, c.tp}}}};
}

PredictionRow prediction_row(std::string case_id, int label, double p_hgg, double threshold, std::string split,
                             std::string model) {
  return {std::move(case_id), label,           p_hgg, p_hgg >= 0.5, threshold, p_hgg >= threshold,
          std::move(split),   std::move(model)};
}

void write_predictions_csv(const fs::path& path, const std::vector<PredictionRow>& rows) {
  std::string text = "case_id,label,p_hgg,pred_05,threshold,pred_thr,split,model\n";
  for (const auto& r : rows) {
    if (r.case_id.find(',') != std::string::npos)
      throw FormatError(fmt::format("{}: case id \"{}\" holds a comma", path.string(), r.case_id));
    text += fmt::format("{},{},{:.17g},{},{:.17g},{},{},{}\n", r.case_id, r.label, r.p_hgg, r.pred_05, r.threshold,
                        r.pred_thr, r.split, r.model);
  }
  write_text_file(path, text);
}

void write_attention_csv(const fs::path& path, const std::vector<AttentionRow>& rows) {
  std::string text = "case_id,instance,slab_start,attention,critical\n";
  for (const auto& r : rows)
    text += fmt::format("{},{},{},{:.9g},{}\n", r.case_id, r.instance, r.slab_start, r.attention, int(r.critical));
  write_text_file(path, text);
}

void write_fold_json(const fs::path& path, const FoldInfo& f) {
  json j{{"fold", f.fold},
         {"best_epoch", f.best_epoch},
         {"chosen_model", f.chosen_model},
         {"monitor", f.monitor},
         {"monitor_value", std::isnan(f.monitor_value) ? json(nullptr) : json(f.monitor_value)},
         {"threshold_method", f.threshold_method},
         {"threshold", f.threshold},
         {"stopped_early", f.stopped_early},
         {"epochs_run", f.epochs_run},
         {"protocol", f.protocol},
         {"n_train", f.n_train},
         {"n_val", f.n_val},
         {"n_test", f.n_test}};
  if (f.repeat >= 0) j["repeat"] = f.repeat;
  write_text_file(path, j.dump(2) + "\n");
}

void write_text_file(const fs::path& path, const std::string& text) {
  // Written beside and renamed: a run killed mid-write leaves the old file or none, never half of one (a
  // half fold.json would mark its fold complete).
  fs::path tmp = path;
  tmp += ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw Error(fmt::format("{}: cannot write", path.string()));
  }
  fs::rename(tmp, path);
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) throw Error(fmt::format("{}: cannot read", path.string()));
  return text.str();
}

const SplitRecord& chosen_val(const EpochRecord& epoch, const FoldInfo& info) {
  return info.chosen_model == "ema" && epoch.val_ema ? *epoch.val_ema : epoch.val;
}

fs::path chosen_checkpoint(const fs::path& fold_dir, const FoldInfo& info) {
  if (info.chosen_model == "raw") return fold_dir / "best.ckpt";
  if (info.chosen_model == "ema") return fold_dir / "best_ema.ckpt";
  throw FormatError(
      fmt::format("{}: chosen_model \"{}\" is not raw or ema", (fold_dir / "fold.json").string(), info.chosen_model));
}

double monitor_value(const SplitRecord& r, const std::string& monitor) {
  if (monitor == "auc") return r.auc;
  if (monitor == "loss") return r.loss;
  if (monitor == "balanced_accuracy") return r.balanced_accuracy;
  if (monitor == "accuracy") return r.accuracy;
  if (monitor == "f1") return r.f1;
  if (monitor == "min_class_recall") return std::min(r.recall_lgg, r.recall_hgg);
  return kNaN;
}

LabelledScores scores_of_split(const std::vector<PredictionRow>& rows, const std::string& split) {
  LabelledScores s;
  for (const auto& r : rows) {
    if (r.split != split) continue;
    s.labels.push_back(r.label);
    s.p_hgg.push_back(r.p_hgg);
    s.thresholds.push_back(r.threshold);
  }
  return s;
}

}  // namespace dsmil::report
