// The runner's command line (every value checked; an unknown option is an error) and the
// address-space / CPU-time caps it applies to itself after start-up, as the Python child does.
#pragma once

#include "process.h"

static const int THREAD_AS_MB = 72;  // as device_agents/bench.py: 8 MiB stack + 64 MiB malloc arena

struct Opts {
  std::string model, sha, out_dir, ref_out, etdump;
  std::vector<std::string> inputs;
  std::vector<int64_t> input_shape;
  double atol = 1e-5, rtol = 1e-3, min_time_s = 0, deadline_s = 600, max_cpu_s = -1;
  long threads = 1, warmup = 5, runs = 50, max_runs = 100000, max_memory_mb = 2048, max_open_files = 256, max_file_mb = 64;
};

inline Opts parse(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; i++) {
    std::string k = argv[i];
    if (i + 1 >= argc) throw Fail{"bad_arguments", "option " + k + " needs a value"};
    std::string v = argv[++i];
    char* end = nullptr;
    auto num = [&](double lo) {
      double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || !std::isfinite(x) || x < lo) throw Fail{"bad_arguments", k + " " + v + " must be a number >= " + std::to_string(lo)};
      return x;
    };
    if (k == "--model") o.model = v;
    else if (k == "--sha256") o.sha = v;
    else if (k == "--input") o.inputs.push_back(v);
    else if (k == "--out-dir") o.out_dir = v;
    else if (k == "--reference-output") o.ref_out = v;
    else if (k == "--etdump") o.etdump = v;
    else if (k == "--atol") o.atol = num(0);
    else if (k == "--rtol") o.rtol = num(0);
    else if (k == "--min-time-s") o.min_time_s = num(0);
    else if (k == "--deadline-s") o.deadline_s = num(1e-3);
    else if (k == "--max-cpu-s") o.max_cpu_s = num(0);
    else if (k == "--threads") o.threads = long(num(1));
    else if (k == "--warmup") o.warmup = long(num(0));
    else if (k == "--runs") o.runs = long(num(2));
    else if (k == "--max-runs") o.max_runs = long(num(1));
    else if (k == "--max-memory-mb") o.max_memory_mb = long(num(1));
    else if (k == "--max-open-files") o.max_open_files = long(num(1));
    else if (k == "--max-file-mb") o.max_file_mb = long(num(1));
    else if (k == "--input-shape") {
      size_t p = 0;
      while (p <= v.size()) {
        size_t q = v.find(',', p);
        std::string t = v.substr(p, q == std::string::npos ? std::string::npos : q - p);
        long d = std::strtol(t.c_str(), &end, 10);
        if (t.empty() || *end || d < 1 || o.input_shape.size() >= 16) throw Fail{"bad_arguments", "--input-shape " + v + " must list positive sizes"};
        o.input_shape.push_back(d);
        if (q == std::string::npos) break;
        p = q + 1;
      }
    } else throw Fail{"bad_arguments", "unknown option " + k};
  }
  if (o.model.empty() || o.sha.empty() || o.out_dir.empty()) throw Fail{"bad_arguments", "--model, --sha256 and --out-dir are required"};
  return o;
}

inline json::Obj apply_limits(const Opts& o) {
  double base = status_mb("VmSize:");
  double as_mb = base + o.max_memory_mb + THREAD_AS_MB * (o.threads + 2);
  rlimit r{rlim_t(as_mb * 1024 * 1024), rlim_t(as_mb * 1024 * 1024)};
  setrlimit(RLIMIT_AS, &r);
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double used = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  cpu_set_t set;
  sched_getaffinity(0, sizeof set, &set);
  double budget = o.max_cpu_s >= 0 ? o.max_cpu_s : o.deadline_s * CPU_COUNT(&set);
  rlim_t soft = rlim_t(used + budget) + 1;
  rlimit c{soft, soft + 5};
  setrlimit(RLIMIT_CPU, &c);
  return json::Obj().num("address_space_mb", std::round(as_mb * 10) / 10).num("runtime_address_space_mb", std::round(base * 10) / 10)
      .num("max_memory_mb", o.max_memory_mb).num("cpu_s", budget).num("open_files", o.max_open_files)
      .num("file_size_mb", o.max_file_mb).num("deadline_s", o.deadline_s);
}
