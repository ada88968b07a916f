// Plots of a CV written by hand: SVG line charts (loss/AUC curves, ROC, reliability, attention over epochs
// and over slabs) and PNG images through libpng (grayscale, and montages of float slices).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "apps/report/evaluation.h"
#include "apps/report/run_dir.h"

namespace dsmil::report {

// One polyline (or, with `markers_only`, a set of dots) of a chart, x and y of equal length; NaN
// points break the line.
struct Series {
  std::string name;
  std::vector<double> x, y;
  bool dashed = false;
  bool markers_only = false;
  std::vector<std::string> point_labels;  // optional text beside each point (e.g. a bin's number of cases)
};

struct ChartSpec {
  std::string title, x_label, y_label;
  double x_min = 0, x_max = 0, y_min = 0, y_max = 0;  // axis ranges; max <= min: from the data
  bool diagonal = false;                              // the y = x reference line (ROC, reliability)
  int width = 680, height = 420;
};

// A self-contained SVG document (axes, ticks, grid, legend); colours cycle over a fixed palette.
std::string svg_line_chart(const ChartSpec& spec, const std::vector<Series>& series);

struct Plot {
  std::filesystem::path path;
  std::string caption;  // what the plot shows, in a sentence for AUDIT.md
};

// Writes the CV's plots into `plots_dir` (created) and returns them:
// curves_<fold>.svg (train/val loss, AUC, the monitored metric and the learning rate per epoch), roc.svg
// (each fold's test ROC and the pooled ROC of each repeat, with their AUCs), reliability.svg (pooled, 10
// bins, each labelled with its number of cases), attention_<fold>.svg (top-1 weight, effective instances
// and normalised entropy per epoch; when logged) and attention_slabs_<fold>.svg (attention over slab
// positions for up to 6 cases of attention.csv; when present). <fold> is `fold_k` or `r<r>_fold_k`.
std::vector<Plot> write_cv_plots(const RunData& run, const CvEvaluation& cv, const std::filesystem::path& plots_dir);

// The plots of a fold still training, from its metrics.jsonl so far (`--plot-every N`): curves.svg and,
// when attention is logged, attention.svg in fold_dir/plots (replaced each time), the best epoch so far
// marked (none: 0). Returns their paths.
std::vector<std::filesystem::path> write_training_plots(const std::filesystem::path& fold_dir, const std::string& title,
                                                        int best_epoch);

// 8-bit grayscale PNG of width × height pixels, row-major from the top row.
void write_png_gray(const std::filesystem::path& path, int width, int height, const std::vector<uint8_t>& pixels);

// A grayscale image as floats (row-major, width × height), e.g. one axial slice of a slab.
struct GraySlice {
  int width = 0, height = 0;
  std::vector<float> values;
};

// Tiles the slices left to right, top to bottom, `columns` per row, `padding` black pixels between
// tiles; each slice is scaled to 0–255 by its own min and max (a constant slice becomes black), and
// smaller slices sit in the top-left corner of a tile as large as the largest slice.
void write_png_montage(const std::filesystem::path& path, const std::vector<GraySlice>& slices, int columns,
                       int padding = 2);

}  // namespace dsmil::report
