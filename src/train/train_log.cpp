#include "train/train_log.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <string_view>

#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv::train {

const char* const kLogCsvHeader = "step,tokens,loss,lr,grad_norm,tokens_per_s,elapsed_s";

namespace {

constexpr int kColumns = 7;

// Shortest round-trip text of a number (std::to_chars): "0.0006" rather than %.17g's noise.
template <typename T>
void append_number(std::string& out, T value) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, result.ptr);
}

std::string format_row(const LogRow& row) {
  std::string line;
  append_number(line, row.step);
  line += ',';
  append_number(line, row.tokens);
  for (double x : {row.loss, row.lr, row.grad_norm, row.tokens_per_s, row.elapsed_s}) {
    line += ',';
    append_number(line, x);
  }
  line += '\n';
  return line;
}

template <typename T>
bool parse_number(std::string_view text, T& value) {
  const char* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  return result.ec == std::errc() && result.ptr == end;
}

struct Line {
  std::string_view text;  // without the '\n' (and a '\r' before it)
  bool terminated;        // false only for a last line with no '\n' (a write cut short)
};

std::vector<Line> split_lines(std::string_view text) {
  std::vector<Line> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    const bool terminated = nl != std::string_view::npos;
    std::string_view line = text.substr(start, (terminated ? nl : text.size()) - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back({line, terminated});
    start = terminated ? nl + 1 : text.size();
  }
  return lines;
}

LogRow parse_row(const std::string& path, size_t line_number, std::string_view line) {
  std::string_view fields[kColumns];
  int count = 0;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    if (count == kColumns) fail(path, ":", line_number, ": more than ", kColumns, " columns");
    const size_t length = comma == std::string_view::npos ? line.npos : comma - start;
    fields[count++] = line.substr(start, length);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (count != kColumns)
    fail(path, ":", line_number, ": expected ", kColumns, " columns, found ", count);
  LogRow row;
  double* doubles[] = {&row.loss, &row.lr, &row.grad_norm, &row.tokens_per_s, &row.elapsed_s};
  bool ok = parse_number(fields[0], row.step) && parse_number(fields[1], row.tokens);
  for (int i = 0; i < 5 && ok; ++i) ok = parse_number(fields[2 + i], *doubles[i]);
  if (!ok) fail(path, ":", line_number, ": cannot parse the row '", line, "'");
  return row;
}

// Checks the header and parses the rows; with keep_partial false an unterminated last line is
// ignored (see TrainLog). `kept` receives the text of each parsed row line.
std::vector<LogRow> parse_log(const std::string& path, std::string_view text, bool keep_partial,
                              std::vector<std::string_view>* kept = nullptr) {
  std::vector<Line> lines = split_lines(text);
  if (lines.empty() || lines[0].text != kLogCsvHeader)
    fail(path, ": not a training log (the first line must be '", kLogCsvHeader, "')");
  if (!keep_partial && lines.size() > 1 && !lines.back().terminated) lines.pop_back();
  std::vector<LogRow> rows;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].text.empty()) continue;
    rows.push_back(parse_row(path, i + 1, lines[i].text));
    if (kept) kept->push_back(lines[i].text);
  }
  return rows;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

TrainLog::TrainLog(const std::string& path, int64_t resume_step) : path_(path) {
  if (resume_step < 0) fail(path, ": resume step must be >= 0, got ", resume_step);
  std::string content = std::string(kLogCsvHeader) + "\n";
  if (resume_step > 0 && file_exists(path)) {
    // Keep the original text of the kept rows: the rewritten file is byte-identical to what an
    // uninterrupted run would have written up to the resume step.
    const std::string old = read_file(path);
    std::vector<std::string_view> lines;
    const std::vector<LogRow> rows = parse_log(path, old, /*keep_partial=*/false, &lines);
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].step >= resume_step) continue;
      content.append(lines[i]);
      content += '\n';
    }
  }
  // Rewritten atomically: a crash here leaves the old log, never a truncated one.
  write_file_atomic(path, content.data(), content.size());
  file_ = std::fopen(path.c_str(), "ab");
  if (!file_) fail(path, ": cannot open for appending: ", std::strerror(errno));
}

TrainLog::~TrainLog() {
  if (file_) std::fclose(file_);
}

void TrainLog::append(const LogRow& row) {
  const std::string line = format_row(row);
  // Flushed per row so that a crash or a `tail -f` sees every finished step.
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail(path_, ": cannot append to the training log: ", std::strerror(errno));
}

std::vector<LogRow> read_log_csv(const std::string& path) {
  return parse_log(path, read_file(path), /*keep_partial=*/true);
}

// ---- SVG chart -------------------------------------------------------------------------------

namespace {

constexpr double kWidth = 800, kHeight = 480;
constexpr double kLeft = 72, kRight = 24, kTop = 48, kBottom = 56;  // plot margins
constexpr size_t kMaxDrawnPoints = 4000;  // longer runs are drawn at a stride (file size)

// Axis ticks at 1, 2 or 5 × 10^k, about `target` of them, and the range widened to them.
struct Axis {
  double lo, hi, tick;
};
Axis nice_axis(double lo, double hi, int target, double min_tick) {
  if (!(hi > lo)) {  // one value: give it some room
    const double pad = std::max(std::abs(lo) * 0.05, min_tick > 0 ? min_tick : 0.05);
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  if (!std::isfinite(raw) || raw <= 0) return {lo, hi, 0};
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double tick = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    tick = m * magnitude;
    if (tick >= raw) break;
  }
  tick = std::max(tick, min_tick);
  return {std::floor(lo / tick) * tick, std::ceil(hi / tick) * tick, tick};
}

std::string fmt(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}

}  // namespace

void write_loss_svg(const std::string& path, const std::vector<LogRow>& rows) {
  std::vector<std::pair<double, double>> points;  // (step, loss), finite losses only
  for (const LogRow& row : rows) {
    if (std::isfinite(row.loss)) points.emplace_back(double(row.step), row.loss);
  }
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  std::string svg = cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", kWidth,
                        "\" height=\"", kHeight, "\" viewBox=\"0 0 ", kWidth, " ", kHeight,
                        "\" font-family=\"sans-serif\" font-size=\"12\">\n",
                        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  std::string title = "Training loss";
  if (!points.empty())
    title += cat(", steps ", int64_t(points.front().first), "-", int64_t(points.back().first),
                 " (last ", fmt("%.4g", points.back().second), ")");
  svg += cat("<text x=\"", kWidth / 2, "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">",
             title, "</text>\n");
  // The frame of the plot area (drawn after the grid lines, so it stays on top of them).
  const std::string frame = cat("<path d=\"M", kLeft, " ", kTop, " V", kTop + plot_h, " H",
                                kLeft + plot_w, "\" fill=\"none\" stroke=\"black\"/>\n");
  if (points.empty()) {
    svg += frame;
    svg += cat("<text x=\"", kLeft + plot_w / 2, "\" y=\"", kTop + plot_h / 2,
               "\" text-anchor=\"middle\">no finite loss values</text>\n</svg>\n");
    write_file_atomic(path, svg.data(), svg.size());
    return;
  }
  double xmin = points[0].first, xmax = xmin, ymin = points[0].second, ymax = ymin;
  for (const auto& [x, y] : points) {
    xmin = std::min(xmin, x), xmax = std::max(xmax, x);
    ymin = std::min(ymin, y), ymax = std::max(ymax, y);
  }
  const Axis ax = nice_axis(xmin, xmax, 8, 1.0);  // steps are integers
  const Axis ay = nice_axis(ymin, ymax, 6, 0.0);
  auto px = [&](double x) { return kLeft + (x - ax.lo) / (ax.hi - ax.lo) * plot_w; };
  auto py = [&](double y) { return kTop + plot_h - (y - ay.lo) / (ay.hi - ay.lo) * plot_h; };

  // Ticks, grid lines and labels (bounded count, whatever the range).
  for (int i = 0; ax.tick > 0 && i <= 50; ++i) {
    const double x = ax.lo + i * ax.tick;
    if (x > ax.hi + ax.tick * 1e-9) break;
    const std::string sx = fmt("%.2f", px(x));
    svg += cat("<path d=\"M", sx, " ", kTop, " V", kTop + plot_h + 5,
               "\" stroke=\"#ddd\"/><text x=\"", sx, "\" y=\"", kTop + plot_h + 20,
               "\" text-anchor=\"middle\">", fmt("%.6g", x), "</text>\n");
  }
  for (int i = 0; ay.tick > 0 && i <= 50; ++i) {
    const double y = ay.lo + i * ay.tick;
    if (y > ay.hi + ay.tick * 1e-9) break;
    const std::string sy = fmt("%.2f", py(y));
    svg += cat("<path d=\"M", kLeft - 5, " ", sy, " H", kLeft + plot_w,
               "\" stroke=\"#ddd\"/><text x=\"", kLeft - 8, "\" y=\"", sy,
               "\" dy=\"4\" text-anchor=\"end\">", fmt("%.4g", y),
               "</text>\n");
  }
  svg += frame;
  svg += cat("<text x=\"", kLeft + plot_w / 2, "\" y=\"", kHeight - 12,
             "\" text-anchor=\"middle\">step</text>\n", "<text x=\"18\" y=\"", kTop + plot_h / 2,
             "\" text-anchor=\"middle\" transform=\"rotate(-90 18 ", kTop + plot_h / 2,
             ")\">loss</text>\n");

  // EMA with bias correction (as TensorBoard's smoothing): the span grows with the run so short
  // runs are barely smoothed and long ones show the trend. ema/(1-beta^k) avoids a start at 0.
  const double span = std::max(1.0, double(points.size()) / 50.0);
  const double beta = 1.0 - 2.0 / (span + 1.0);
  std::vector<double> smooth(points.size());
  double ema = 0, weight = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    ema = beta * ema + (1 - beta) * points[i].second;
    weight = beta * weight + (1 - beta);
    smooth[i] = ema / weight;
  }
  const size_t stride = (points.size() + kMaxDrawnPoints - 1) / kMaxDrawnPoints;
  auto polyline = [&](auto y_of) {
    std::string d;
    for (size_t i = 0; i < points.size(); i += stride) {
      d += cat(i == 0 ? "M" : " L", fmt("%.2f", px(points[i].first)), " ",
               fmt("%.2f", py(y_of(i))));
    }
    if ((points.size() - 1) % stride != 0) {  // always end at the last point
      const size_t i = points.size() - 1;
      d += cat(" L", fmt("%.2f", px(points[i].first)), " ", fmt("%.2f", py(y_of(i))));
    }
    return d;
  };
  svg += cat("<path d=\"", polyline([&](size_t i) { return points[i].second; }),
             "\" fill=\"none\" stroke=\"#9ecae1\" stroke-width=\"1\"/>\n");
  if (points.size() <= 100) {  // few points: mark them, a lone point draws no line
    for (const auto& [x, y] : points)
      svg += cat("<circle cx=\"", fmt("%.2f", px(x)), "\" cy=\"", fmt("%.2f", py(y)),
                 "\" r=\"2.5\" fill=\"#9ecae1\"/>\n");
  }
  svg += cat("<path d=\"", polyline([&](size_t i) { return smooth[i]; }),
             "\" fill=\"none\" stroke=\"#08519c\" stroke-width=\"2\"/>\n</svg>\n");
  write_file_atomic(path, svg.data(), svg.size());
}

}  // namespace rwkv::train
