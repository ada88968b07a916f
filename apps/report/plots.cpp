// SVG charts of a CV (per-epoch curves, ROC, reliability, attention) written as text, and 8-bit grayscale
// PNG images (single image, montage of width × height float slices) written through libpng.
#include "apps/report/plots.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <png.h>

#include "base/error.h"

namespace dsmil::report {
namespace fs = std::filesystem;

namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr int kMarginLeft = 64, kMarginRight = 200, kMarginTop = 34, kMarginBottom = 48;
constexpr size_t kSlabCases = 6;

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A "nice" tick step (1, 2 or 5 × 10^k) giving about five ticks over `span`.
double tick_step(double span) {
  const double raw = span / 5.0;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (raw <= m * magnitude) return m * magnitude;
  return 10.0 * magnitude;
}

struct Range {
  double lo = 0, hi = 0;
};

// The spec's range, or the data's (padded when flat) where the spec leaves it open.
Range axis_range(double spec_lo, double spec_hi, const std::vector<Series>& series, bool x_axis) {
  if (spec_hi > spec_lo) return {spec_lo, spec_hi};
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : series)
    for (double v : x_axis ? s.x : s.y)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!std::isfinite(lo)) return {0, 1};
  if (hi - lo < 1e-12) return {lo - 0.5, hi + 0.5};
  const double pad = x_axis ? 0.0 : 0.05 * (hi - lo);
  return {lo - pad, hi + pad};
}

std::string tick_label(double v, double step) {
  if (std::abs(v) < 1e-9 * step) v = 0.0;  // no "-0.0" from accumulated steps
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return fmt::format("{:.{}f}", v, decimals);
}

// Several charts one above the other in one SVG document.
std::string stack(const std::vector<std::string>& charts, int width, int height) {
  std::string s = fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}">)"
                              "\n",
                              width, height * static_cast<int>(charts.size()));
  for (size_t i = 0; i < charts.size(); ++i)
    s += fmt::format("<g transform=\"translate(0,{})\">\n{}</g>\n", static_cast<int>(i) * height, charts[i]);
  return s + "</svg>\n";
}

std::string fold_file_tag(const FoldInfo& info, int n_repeats) {
  return n_repeats > 1 ? fmt::format("r{}_fold_{}", info.repeat, info.fold) : fmt::format("fold_{}", info.fold);
}

std::vector<double> epochs_of(const std::vector<EpochRecord>& history) {
  std::vector<double> x;
  for (const auto& e : history) x.push_back(e.epoch);
  return x;
}

template <typename Pick>
std::vector<double> column(const std::vector<EpochRecord>& history, Pick pick) {
  std::vector<double> y;
  for (const auto& e : history) y.push_back(pick(e));
  return y;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A chart over the epochs with the best epoch marked; the y range is `fixed`, or the data's when there is none.
std::string epoch_chart(const std::string& title, const std::string& y_label, std::vector<Series> series,
                        double best_epoch, std::optional<Range> fixed) {
  const Range range = fixed ? *fixed : axis_range(0, 0, series, false);
  if (best_epoch > 0) series.push_back({"best epoch", {best_epoch, best_epoch}, {range.lo, range.hi}, true});
  ChartSpec spec{title, "epoch", y_label};
  spec.y_min = range.lo;
  spec.y_max = range.hi;
  return svg_line_chart(spec, series);
}

// The metric that chose the best epoch and stopped training, in the chosen model's validation record.
std::string monitor_chart(const FoldData& fold, const std::string& title) {
  const FoldInfo& info = fold.info;
  const std::string name = fmt::format("val {}{}", info.monitor, info.chosen_model == "ema" ? " (EMA)" : "");
  const Series monitor{name, epochs_of(fold.history), column(fold.history, [&](const EpochRecord& e) {
                         return monitor_value(chosen_val(e, info), info.monitor);
                       })};
  return epoch_chart(title + ": monitored metric (model selection, early stopping)", info.monitor, {monitor},
                     info.best_epoch, info.monitor == "loss" ? std::nullopt : std::optional<Range>(Range{0.0, 1.0}));
}

std::string learning_rate_chart(const FoldData& fold, const std::string& title) {
  const Series lr{"learning rate", epochs_of(fold.history), column(fold.history, [](const auto& e) { return e.lr; })};
  const double top = *std::max_element(lr.y.begin(), lr.y.end());
  return epoch_chart(title + ": learning rate", "learning rate", {lr}, fold.info.best_epoch,
                     top > 0 ? std::optional<Range>(Range{0.0, 1.1 * top}) : std::nullopt);
}

// Loss, AUC, the monitored metric (when fold.json names it) and the learning rate over the epochs.
std::string curves_svg(const FoldData& fold, const std::string& title) {
  const auto& h = fold.history;
  const auto x = epochs_of(h);
  const bool ema = std::any_of(h.begin(), h.end(), [](const EpochRecord& e) { return e.val_ema.has_value(); });
  const auto ema_of = [](const EpochRecord& e, double SplitRecord::*field) {
    return e.val_ema ? (*e.val_ema).*field : kNaN;
  };
  std::vector<Series> loss{{"train loss", x, column(h, [](const auto& e) { return e.train.loss; })},
                           {"val loss", x, column(h, [](const auto& e) { return e.val.loss; })}};
  std::vector<Series> auc{{"train AUC", x, column(h, [](const auto& e) { return e.train.auc; })},
                          {"val AUC", x, column(h, [](const auto& e) { return e.val.auc; })}};
  if (ema) {
    loss.push_back(
        {"val loss (EMA)", x, column(h, [&](const auto& e) { return ema_of(e, &SplitRecord::loss); }), true});
    auc.push_back({"val AUC (EMA)", x, column(h, [&](const auto& e) { return ema_of(e, &SplitRecord::auc); }), true});
  }
  const double best = fold.info.best_epoch;
  std::vector<std::string> charts{epoch_chart(title + ": loss", "loss", loss, best, std::nullopt),
                                  epoch_chart(title + ": AUC", "AUC", auc, best, Range{0.0, 1.0})};
  if (!fold.info.monitor.empty()) charts.push_back(monitor_chart(fold, title));
  charts.push_back(learning_rate_chart(fold, title));
  const ChartSpec size;
  return stack(charts, size.width, size.height);
}

std::string attention_svg(const FoldData& fold, const std::string& title) {
  std::vector<EpochRecord> logged;
  for (const auto& e : fold.history)
    if (e.attention) logged.push_back(e);
  const auto x = epochs_of(logged);
  std::vector<Series> shares{
      {"top-1 weight", x, column(logged, [](const auto& e) { return e.attention->top1; })},
      {"entropy / log n", x, column(logged, [](const auto& e) { return e.attention->entropy_norm; })},
      {"selection conf. p50", x, column(logged, [](const auto& e) { return e.attention->confidence_p50; })}};
  if (std::any_of(logged.begin(), logged.end(), [](const auto& e) { return e.attention->critical_tumour_share; }))
    shares.push_back({"critical in tumour", x,
                      column(logged, [](const auto& e) { return e.attention->critical_tumour_share.value_or(kNaN); })});
  const std::vector<Series> neff{{"n_eff = 1/Σa²", x, column(logged, [](const auto& e) { return e.attention->neff; })}};
  ChartSpec share_spec{title + ": attention", "epoch", "share"};
  share_spec.y_max = 1.0;
  ChartSpec neff_spec{title + ": effective number of instances", "epoch", "n_eff"};
  return stack({svg_line_chart(share_spec, shares), svg_line_chart(neff_spec, neff)}, share_spec.width,
               share_spec.height);
}

std::string attention_slabs_svg(const FoldData& fold, const std::string& title) {
  std::map<std::string, std::vector<const AttentionRow*>> by_case;
  for (const auto& r : fold.attention) by_case[r.case_id].push_back(&r);
  std::vector<Series> series;
  Series critical{"critical instance", {}, {}, false, true};
  for (const auto& [case_id, rows] : by_case) {
    if (series.size() == kSlabCases) break;
    auto sorted = rows;
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->slab_start < b->slab_start; });
    Series s{case_id};
    for (const auto* r : sorted) {
      s.x.push_back(r->slab_start);
      s.y.push_back(r->attention);
      if (r->critical) critical.x.push_back(r->slab_start), critical.y.push_back(r->attention);
    }
    series.push_back(std::move(s));
  }
  series.push_back(std::move(critical));
  ChartSpec spec{title + ": attention over slabs", "slab start (axial slice)", "attention"};
  spec.y_max = 0.0;
  return svg_line_chart(spec, series);
}

// The test predictions of every fold of a repeat together, keyed by repeat: (labels, p_hgg).
using PooledScores = std::map<int, std::pair<std::vector<int>, std::vector<double>>>;
PooledScores pooled_test_scores(const RunData& run) {
  PooledScores pooled;
  for (const auto& fold : run.folds) {
    const LabelledScores test = scores_of_split(fold.predictions, "test");
    auto& [labels, p] = pooled[fold.info.repeat];
    labels.insert(labels.end(), test.labels.begin(), test.labels.end());
    p.insert(p.end(), test.p_hgg.begin(), test.p_hgg.end());
  }
  return pooled;
}

std::string roc_svg(const RunData& run, const CvEvaluation& cv) {
  std::vector<Series> series;
  for (const auto& fold : run.folds) {
    const LabelledScores test = scores_of_split(fold.predictions, "test");
    if (!has_both_classes(test.labels)) continue;
    Series s{fmt::format("{} (AUC {:.3f})", fold_label(fold.info, cv.n_repeats), auc(test.labels, test.p_hgg))};
    for (const auto& point : roc_curve(test.labels, test.p_hgg)) s.x.push_back(point.fpr), s.y.push_back(point.tpr);
    series.push_back(std::move(s));
  }
  for (const auto& [repeat, scores] : pooled_test_scores(run)) {
    if (!has_both_classes(scores.first)) continue;
    Series s{cv.n_repeats > 1 ? fmt::format("pooled r{} (AUC {:.3f})", repeat, auc(scores.first, scores.second))
                              : fmt::format("pooled (AUC {:.3f})", auc(scores.first, scores.second)),
             {},
             {},
             true};
    for (const auto& point : roc_curve(scores.first, scores.second)) s.x.push_back(point.fpr), s.y.push_back(point.tpr);
    series.push_back(std::move(s));
  }
  ChartSpec spec{"ROC of the test folds", "1 − specificity (FPR)", "sensitivity (TPR)", 0, 1, 0, 1, true, 640, 460};
  return svg_line_chart(spec, series);
}

std::string reliability_svg(const RunData& run, const CvEvaluation& cv) {
  std::vector<Series> series;
  for (const auto& [repeat, scores] : pooled_test_scores(run)) {
    Series s{cv.n_repeats > 1 ? fmt::format("pooled r{} (ECE {:.3f})", repeat, ece(scores.first, scores.second))
                              : fmt::format("pooled (ECE {:.3f})", ece(scores.first, scores.second))};
    for (const auto& bin : reliability_bins(scores.first, scores.second))
      if (bin.count > 0) {
        s.x.push_back(bin.mean_p_hgg);
        s.y.push_back(bin.frac_hgg);
        s.point_labels.push_back(fmt::format("n={}", bin.count));
      }
    series.push_back(std::move(s));
  }
  ChartSpec spec{"Reliability of the pooled test predictions (10 bins, n = cases)",
                 "mean p(HGG) in bin",
                 "HGG fraction",
                 0,
                 1,
                 0,
                 1,
                 true,
                 640,
                 460};
  return svg_line_chart(spec, series);
}

}  // namespace

std::string svg_line_chart(const ChartSpec& spec, const std::vector<Series>& series) {
  const Range xr = axis_range(spec.x_min, spec.x_max, series, true);
  const Range yr = axis_range(spec.y_min, spec.y_max > spec.y_min ? spec.y_max : 0.0, series, false);
  const double plot_w = spec.width - kMarginLeft - kMarginRight, plot_h = spec.height - kMarginTop - kMarginBottom;
  const auto px = [&](double x) { return kMarginLeft + (x - xr.lo) / (xr.hi - xr.lo) * plot_w; };
  const auto py = [&](double y) { return kMarginTop + (1.0 - (y - yr.lo) / (yr.hi - yr.lo)) * plot_h; };

  std::string s = fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" font-family="sans-serif" font-size="12">)"
      "\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      spec.width, spec.height);
  s += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n", kMarginLeft,
                   escape(spec.title));
  for (const auto& [range, horizontal] : {std::pair{xr, true}, std::pair{yr, false}}) {
    const double step = tick_step(range.hi - range.lo);
    for (double t = std::ceil(range.lo / step - 1e-9) * step; t <= range.hi + 1e-9 * step; t += step) {
      const std::string label = tick_label(t, step);
      if (horizontal)
        s += fmt::format(
            "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e5e5e5\"/>"
            "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
            px(t), kMarginTop, kMarginTop + plot_h, kMarginTop + plot_h + 16, label);
      else
        s += fmt::format(
            "<line x1=\"{1}\" y1=\"{0:.1f}\" x2=\"{2}\" y2=\"{0:.1f}\" stroke=\"#e5e5e5\"/>"
            "<text x=\"{3}\" y=\"{0:.1f}\" text-anchor=\"end\" dominant-baseline=\"middle\">{4}</text>\n",
            py(t), kMarginLeft, kMarginLeft + plot_w, kMarginLeft - 6, label);
    }
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", kMarginLeft,
                   kMarginTop, plot_w, plot_h);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kMarginLeft + plot_w / 2,
                   spec.height - 10, escape(spec.x_label));
  s += fmt::format("<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                   kMarginTop + plot_h / 2, escape(spec.y_label));
  if (spec.diagonal)
    s += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#999\" "
        "stroke-dasharray=\"4 4\"/>\n",
        px(std::max(xr.lo, yr.lo)), py(std::max(xr.lo, yr.lo)), px(std::min(xr.hi, yr.hi)), py(std::min(xr.hi, yr.hi)));

  for (size_t i = 0; i < series.size(); ++i) {
    const Series& ser = series[i];
    const char* colour = kPalette[i % std::size(kPalette)];
    if (ser.markers_only) {
      for (size_t k = 0; k < ser.x.size(); ++k)
        if (std::isfinite(ser.x[k]) && std::isfinite(ser.y[k]))
          s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"/>\n", px(ser.x[k]), py(ser.y[k]),
                           colour);
    } else {
      std::string path;
      bool pen_down = false;
      for (size_t k = 0; k < ser.x.size(); ++k) {
        if (!std::isfinite(ser.x[k]) || !std::isfinite(ser.y[k])) {
          pen_down = false;
          continue;
        }
        path += fmt::format("{}{:.1f},{:.1f} ", pen_down ? "L" : "M", px(ser.x[k]), py(ser.y[k]));
        pen_down = true;
      }
      s += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}/>\n", path, colour,
                       ser.dashed ? " stroke-dasharray=\"6 4\"" : "");
    }
    for (size_t k = 0; k < ser.point_labels.size() && k < ser.x.size(); ++k)
      if (std::isfinite(ser.x[k]) && std::isfinite(ser.y[k]))
        s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\" fill=\"{}\">{}</text>\n", px(ser.x[k]) + 5,
                         py(ser.y[k]) - 5, colour, escape(ser.point_labels[k]));
    const double ly = kMarginTop + 8 + 18.0 * static_cast<double>(i);
    const double lx = kMarginLeft + plot_w + 12;
    if (ser.markers_only)
      s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"/>", lx + 11, ly, colour);
    else
      s += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
          "stroke-width=\"2\"{4}/>",
          lx, ly, lx + 22, colour, ser.dashed ? " stroke-dasharray=\"6 4\"" : "");
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" dominant-baseline=\"middle\">{}</text>\n", lx + 28, ly,
                     escape(ser.name));
  }
  return s + "</svg>\n";
}

std::vector<fs::path> write_training_plots(const fs::path& fold_dir, const std::string& title, int best_epoch) {
  FoldData fold;
  fold.dir = fold_dir;
  fold.info.best_epoch = best_epoch;
  fold.history = read_metrics_jsonl(fold_dir / "metrics.jsonl");
  std::vector<fs::path> written;
  if (fold.history.empty()) return written;
  fs::create_directories(fold_dir / "plots");
  written.push_back(fold_dir / "plots" / "curves.svg");
  write_text_file(written.back(), curves_svg(fold, title));
  if (std::any_of(fold.history.begin(), fold.history.end(), [](const auto& e) { return e.attention.has_value(); })) {
    written.push_back(fold_dir / "plots" / "attention.svg");
    write_text_file(written.back(), attention_svg(fold, title));
  }
  return written;
}

std::vector<Plot> write_cv_plots(const RunData& run, const CvEvaluation& cv, const fs::path& plots_dir) {
  fs::create_directories(plots_dir);
  std::vector<Plot> written;
  const auto put = [&](const std::string& name, const std::string& svg, std::string caption) {
    written.push_back({plots_dir / name, std::move(caption)});
    write_text_file(written.back().path, svg);
  };
  put("roc.svg", roc_svg(run, cv), "ROC curves of the test folds (each fold's AUC in the legend) and pooled");
  put("reliability.svg", reliability_svg(run, cv),
      "Reliability: predicted p(HGG) against the observed share of HGG, pooled test predictions in 10 bins "
      "(each point labelled with its number of cases)");
  for (const auto& fold : run.folds) {
    const std::string tag = fold_file_tag(fold.info, cv.n_repeats);
    const std::string title = fold_label(fold.info, cv.n_repeats);
    if (!fold.history.empty())
      put("curves_" + tag + ".svg", curves_svg(fold, title),
          title + ": loss, AUC, monitored metric and learning rate per epoch");
    if (std::any_of(fold.history.begin(), fold.history.end(), [](const auto& e) { return e.attention.has_value(); }))
      put("attention_" + tag + ".svg", attention_svg(fold, title), title + ": attention diagnostics per epoch");
    if (!fold.attention.empty())
      put("attention_slabs_" + tag + ".svg", attention_slabs_svg(fold, title),
          title + ": attention over the slabs of validation cases");
  }
  return written;
}

namespace {

// libpng reports errors by longjmp; this function holds no object with a destructor, so the jump is
// safe, and it returns the error text instead of throwing through C frames.
bool write_png_rows(std::FILE* file, int width, int height, const uint8_t* pixels, char* error, size_t error_size) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    std::snprintf(error, error_size, "libpng could not start");
    png_destroy_write_struct(&png, &info);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    std::snprintf(error, error_size, "libpng failed while writing");
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_GRAY,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, pixels + static_cast<size_t>(y) * static_cast<size_t>(width));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png_gray(const fs::path& path, int width, int height, const std::vector<uint8_t>& pixels) {
  if (width <= 0 || height <= 0 || pixels.size() != static_cast<size_t>(width) * static_cast<size_t>(height))
    throw ShapeError(fmt::format("PNG {}: {} pixels given for {} × {}", path.string(), pixels.size(), width, height));
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) throw Error(fmt::format("PNG {}: cannot open for writing", path.string()));
  char error[128] = {};
  const bool ok = write_png_rows(file, width, height, pixels.data(), error, sizeof error);
  const bool closed = std::fclose(file) == 0;
  if (!ok || !closed) throw Error(fmt::format("PNG {}: {}", path.string(), ok ? "cannot close" : error));
}

void write_png_montage(const fs::path& path, const std::vector<GraySlice>& slices, int columns, int padding) {
  if (slices.empty()) throw ShapeError(fmt::format("montage {}: no slices", path.string()));
  if (columns < 1 || padding < 0)
    throw ShapeError(fmt::format("montage {}: {} columns, padding {}", path.string(), columns, padding));
  int tile_w = 0, tile_h = 0;
  for (const auto& s : slices) {
    if (s.width <= 0 || s.height <= 0 ||
        s.values.size() != static_cast<size_t>(s.width) * static_cast<size_t>(s.height))
      throw ShapeError(
          fmt::format("montage {}: slice of {} values for {} × {}", path.string(), s.values.size(), s.width, s.height));
    tile_w = std::max(tile_w, s.width);
    tile_h = std::max(tile_h, s.height);
  }
  const int n = static_cast<int>(slices.size());
  const int cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  const int width = cols * tile_w + (cols - 1) * padding, height = rows * tile_h + (rows - 1) * padding;
  std::vector<uint8_t> image(static_cast<size_t>(width) * static_cast<size_t>(height), 0);
  for (int i = 0; i < n; ++i) {
    const GraySlice& s = slices[static_cast<size_t>(i)];
    const auto [lo, hi] = std::minmax_element(s.values.begin(), s.values.end());
    const float span = *hi - *lo;
    const int x0 = (i % cols) * (tile_w + padding), y0 = (i / cols) * (tile_h + padding);
    for (int y = 0; y < s.height; ++y)
      for (int x = 0; x < s.width; ++x) {
        const float v = s.values[static_cast<size_t>(y) * static_cast<size_t>(s.width) + static_cast<size_t>(x)];
        const float level = span > 0 ? (v - *lo) / span * 255.0f : 0.0f;
        image[static_cast<size_t>(y0 + y) * static_cast<size_t>(width) + static_cast<size_t>(x0 + x)] =
            static_cast<uint8_t>(std::lround(level));
      }
  }
  write_png_gray(path, width, height, image);
}

}  // namespace dsmil::report
