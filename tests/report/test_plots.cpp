// Tests of apps/report/plots: SVG chart structure, and PNG files read back through libpng's simplified
// API (exact bytes for write_png_gray, independently scaled tiles for the montage).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <png.h>

#include "apps/report/plots.h"
#include "base/error.h"

using namespace dsmil::report;
namespace fs = std::filesystem;

namespace {

struct Gray {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

Gray read_png_gray(const fs::path& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&image, path.c_str()) != 0);
  image.format = PNG_FORMAT_GRAY;
  Gray g{static_cast<int>(image.width), static_cast<int>(image.height), {}};
  g.pixels.resize(PNG_IMAGE_SIZE(image));
  REQUIRE(png_image_finish_read(&image, nullptr, g.pixels.data(), 0, nullptr) != 0);
  return g;
}

fs::path temp_file(const std::string& name) {
  std::random_device rd;
  return fs::temp_directory_path() / (std::to_string(rd()) + "_" + name);
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("an SVG line chart has its axes, one path per series, breaks at NaN and escapes text") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(0.1, 0.9);
  Series a{"loss <train>"}, b{"val & ema"}, dots{"critical", {}, {}, false, true};
  for (int i = 1; i <= 12; ++i) {
    a.x.push_back(i), a.y.push_back(u(rng));
    b.x.push_back(i), b.y.push_back(i == 6 ? std::nan("") : u(rng));
  }
  dots.x = {2, 5, 7};
  dots.y = {u(rng), u(rng), u(rng)};
  ChartSpec spec{"curves", "epoch", "loss"};
  const std::string svg = svg_line_chart(spec, {a, b, dots});
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  CHECK(svg.find("</svg>") == svg.size() - 7);
  CHECK(count_of(svg, "<path ") == 2);
  CHECK(count_of(svg, "<circle ") == 3 + 1);  // three points and the legend mark
  // Series a: 1 move + 11 lines. Series b: NaN at epoch 6 starts a second piece: 2 moves + 9 lines.
  const size_t first_path = svg.find("<path d=\"");
  const size_t second_path = svg.find("<path d=\"", first_path + 1);
  const std::string path_a = svg.substr(first_path, svg.find('"', first_path + 9) - first_path);
  const std::string path_b = svg.substr(second_path, svg.find('"', second_path + 9) - second_path);
  CHECK(count_of(path_a, "M") == 1);
  CHECK(count_of(path_a, "L") == 11);
  CHECK(count_of(path_b, "M") == 2);
  CHECK(count_of(path_b, "L") == 9);
  CHECK(svg.find("loss &lt;train&gt;") != std::string::npos);
  CHECK(svg.find("val &amp; ema") != std::string::npos);
  CHECK(svg.find("<train>") == std::string::npos);
}

TEST_CASE("write_png_gray writes the exact pixels") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> byte(0, 255);
  const int width = 37, height = 11;
  std::vector<uint8_t> pixels(width * height);
  for (auto& p : pixels) p = static_cast<uint8_t>(byte(rng));
  const fs::path path = temp_file("gray.png");
  write_png_gray(path, width, height, pixels);
  const Gray back = read_png_gray(path);
  fs::remove(path);
  CHECK(back.width == width);
  CHECK(back.height == height);
  CHECK(back.pixels == pixels);
  CHECK_THROWS_AS(write_png_gray(path, width, height + 1, pixels), dsmil::ShapeError);
}

TEST_CASE("a montage tiles slices scaled by their own range, with black padding") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-3.0f, 5.0f);
  GraySlice big{4, 3, {}}, small{2, 2, {}}, flat{3, 2, std::vector<float>(6, 1.5f)};
  for (int i = 0; i < 12; ++i) big.values.push_back(u(rng));
  for (int i = 0; i < 4; ++i) small.values.push_back(u(rng));
  const fs::path path = temp_file("montage.png");
  write_png_montage(path, {big, small, flat}, 2, 1);
  const Gray g = read_png_gray(path);
  fs::remove(path);
  // Tiles of 4 × 3 (the largest slice), 2 columns, 2 rows, padding 1: 9 × 7.
  REQUIRE(g.width == 9);
  REQUIRE(g.height == 7);
  const auto at = [&](int x, int y) { return static_cast<int>(g.pixels[y * g.width + x]); };
  const auto expect_tile = [&](const GraySlice& s, int x0, int y0) {
    const auto [lo, hi] = std::minmax_element(s.values.begin(), s.values.end());
    for (int y = 0; y < s.height; ++y)
      for (int x = 0; x < s.width; ++x) {
        const double level = (s.values[y * s.width + x] - *lo) / double(*hi - *lo) * 255.0;
        CHECK(std::abs(at(x0 + x, y0 + y) - level) <= 0.5 + 1e-3);
      }
  };
  expect_tile(big, 0, 0);
  expect_tile(small, 5, 0);
  for (int y = 0; y < 7; ++y) CHECK(at(4, y) == 0);  // padding column
  for (int x = 5; x < 9; ++x) CHECK(at(x, 2) == 0);  // below the small slice
  for (int x = 0; x < 9; ++x) CHECK(at(x, 3) == 0);  // padding row
  for (int y = 4; y < 6; ++y)
    for (int x = 0; x < 3; ++x) CHECK(at(x, y) == 0);  // a constant slice is black
  CHECK_THROWS_AS(write_png_montage(path, {}, 2), dsmil::ShapeError);
  CHECK_THROWS_AS(write_png_montage(path, {GraySlice{2, 2, {1.0f}}}, 2), dsmil::ShapeError);
}
