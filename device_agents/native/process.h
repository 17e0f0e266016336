// Process facts and the timing loop of the native runner (split from runner.cpp): clocks, peak
// RSS, CPU affinity per thread, the run loop (same stopping rule as device_agents/bench.py
// _timed_loop), and latency statistics computed as numpy computes them.
#pragma once

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "json.h"

struct Fail {  // one error result: {"ok":false,"error":{"code":...,"message":...}}
  std::string code, message;
};

inline double mono_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // what Python's time.monotonic/perf_counter read
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
inline int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
inline double peak_rss_mb() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}
inline double status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + std::strlen(key)) / 1024.0;
  return 0.0;
}

// Reset the process's RSS high-water mark (VmHWM) so the next read is the peak from here on
// (Linux >= 4.0: "5" > /proc/self/clear_refs); false where /proc forbids it.
inline bool reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

inline std::vector<int> affinity() {
  cpu_set_t set;
  std::vector<int> out;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

inline json::Obj thread_affinity(int* count) {
  std::map<std::string, long> masks;
  *count = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      ++*count;
      std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/status");
      std::string line;
      while (std::getline(f, line))
        if (line.rfind("Cpus_allowed_list:", 0) == 0) {
          size_t b = line.find_first_not_of(" \t", 18);
          masks[b == std::string::npos ? "" : line.substr(b)]++;
        }
    }
    closedir(d);
  }
  json::Obj o;
  for (auto& m : masks) o.num(m.first, m.second);
  return o;
}

inline std::vector<int64_t> timed_loop(const std::function<void()>& fn, long min_runs, double min_time_s, long max_runs,
                                       double hard_stop) {
  std::vector<int64_t> s;
  s.reserve(std::min<long>(max_runs, 1 << 16));
  int64_t until = mono_ns() + int64_t(min_time_s * 1e9);
  while (true) {
    int64_t t0 = mono_ns();
    fn();
    int64_t t1 = mono_ns();
    s.push_back(t1 - t0);
    long n = long(s.size());
    if (n >= max_runs || (n >= min_runs && t1 >= until)) return s;
    if (hard_stop > 0 && (n & 15) == 0 && mono_s() > hard_stop)
      throw Fail{"deadline", "the model did not finish its runs within deadline_s; stopped"};
  }
}

inline double percentile(std::vector<double> v, double q) {  // numpy's default (linear)
  std::sort(v.begin(), v.end());
  double pos = (v.size() - 1) * q / 100.0;
  size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

inline json::Obj stats(const std::vector<double>& ms) {
  double mean = 0, var = 0;
  for (double v : ms) mean += v;
  mean /= ms.size();
  for (double v : ms) var += (v - mean) * (v - mean);
  double sd = ms.size() > 1 ? std::sqrt(var / (ms.size() - 1)) : 0.0;
  json::Obj o;
  o.num("runs", double(ms.size())).num("min_ms", *std::min_element(ms.begin(), ms.end())).num("mean_ms", mean).num("std_ms", sd)
      .num("p50_ms", percentile(ms, 50)).num("p90_ms", percentile(ms, 90)).num("p99_ms", percentile(ms, 99))
      .num("max_ms", *std::max_element(ms.begin(), ms.end()));
  if (mean > 0) o.num("cv", sd / mean); else o.raw("cv", "null");
  return o;
}
