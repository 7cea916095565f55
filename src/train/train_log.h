// The training log: a CSV with one row per optimiser step, flushed as it is written (a crash
// loses at most the row being written), and an SVG chart of the loss drawn from it.
//
// CSV: a header line `step,tokens,loss,lr,grad_norm,tokens_per_s,elapsed_s`, then one row per
// step. Numbers use the shortest text that reads back to the same double ("0.0006", "nan",
// "inf"), so read_log_csv returns exactly what was appended.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace rwkv::train {

struct LogRow {
  int64_t step = 0;         // 0-based global step
  int64_t tokens = 0;       // tokens trained on after this step
  double loss = 0;          // mean cross-entropy of the step
  double lr = 0;            // learning rate used
  double grad_norm = 0;     // global gradient norm before clipping
  double tokens_per_s = 0;  // throughput of this step
  double elapsed_s = 0;     // wall time since the run started (across resumes)
  bool operator==(const LogRow&) const = default;
};

extern const char* const kLogCsvHeader;  // "step,tokens,loss,lr,grad_norm,tokens_per_s,elapsed_s"

// An open CSV log, appending one flushed row at a time.
class TrainLog {
 public:
  // resume_step == 0: a fresh run; the file is created (replacing any old one) with the header.
  // resume_step > 0: a resumed run; rows with step >= resume_step (written after the checkpoint
  // being resumed from) and an unterminated last line (a crash mid-write) are dropped, so the
  // file reads as if the run had never stopped. A missing file starts fresh.
  // Throws rwkv::Error naming the file when it cannot be read, parsed or written.
  TrainLog(const std::string& path, int64_t resume_step = 0);
  ~TrainLog();
  TrainLog(const TrainLog&) = delete;
  TrainLog& operator=(const TrainLog&) = delete;

  void append(const LogRow& row);  // writes and flushes one line
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Reads a log written by TrainLog, strictly: an unterminated last line is returned if it parses
// (only TrainLog's resume drops a cut-short row). Throws rwkv::Error naming the file and line on
// a bad header, a wrong column count or a number that does not parse.
std::vector<LogRow> read_log_csv(const std::string& path);

// Writes a self-contained SVG chart of loss against step (raw points faint, an exponential
// moving average bold, axes with ticks and labels, a title), atomically. Rows with a non-finite
// loss are left out of the chart; an empty chart says so instead of failing.
void write_loss_svg(const std::string& path, const std::vector<LogRow>& rows);

}  // namespace rwkv::train
