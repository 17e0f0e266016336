// edgekit-runner: run a .pte with the ExecuTorch runtime libraries the executorch wheel ships
// (libexecutorch, XNNPACK backend, optimized + quantized kernels, threadpool), no Python, no torch.
//
//   runner --model M.pte --sha256 HEX --input a.npy [--input b.npy ...] --out-dir DIR
//          [--reference-output r.npy --atol A --rtol R] [--threads N] [--warmup N] [--runs N]
//          [--min-time-s S] [--max-runs N] [--deadline-s S] [--max-memory-mb MB] [--max-cpu-s S]
//          [--max-open-files N] [--max-file-mb MB] [--input-shape 1,3,224,224] [--etdump PATH]
//
// It does what the Python bench child (device_agents/bench.py run()) does and prints the same
// result fields as ONE JSON document on stdout: {"ok":true,"result":{...}} or
// {"ok":false,"error":{"code":...,"message":...}}. The model is hostile input: its bytes are
// re-hashed before parsing, the program is verified (InternalConsistency), inputs are checked
// against method_meta, every runtime Error is reported, allocation failures are resource_limit.
// Address space and CPU time are capped here after start-up (the runtime libraries are trusted
// code; the model gets max_memory_mb on top), like the Python child's _apply_limits.
#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdlib>
#include <fstream>
#include <new>
#include <random>

#include "json.h"
#include "npy.h"
#include "options.h"
#include "process.h"
#include "sha256.h"

// libexecutorch_threadpool exports these, but the wheel ships no threadpool.h: declare the two
// members used (same names and signatures as extension/threadpool/threadpool.h in ExecuTorch 1.x).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
namespace tp = executorch::extension::threadpool;

static std::string et_error(Error e) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "ExecuTorch error 0x%x", unsigned(e));
  return std::string(executorch::runtime::to_string(e)) + " (" + buf + ")";
}
static void check(Error e, const std::string& what) {
  if (e == Error::Ok) return;
  if (e == Error::MemoryAllocationFailed || e == Error::DelegateMemoryAllocationFailed || e == Error::OutOfResources)
    throw Fail{"resource_limit", "the model ran out of memory " + what + " under the agent's limit (max_memory_mb): " + et_error(e)};
  throw Fail{what.rfind("loading", 0) == 0 ? "load_failed" : "run_failed", "executorch cannot run the model (" + what + "): " + et_error(e)};
}

// ScalarType <-> npy descr for the dtypes a method may declare.
static std::string descr_of(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "<f4";
    case ScalarType::Double: return "<f8";
    case ScalarType::Half: return "<f2";
    case ScalarType::Long: return "<i8";
    case ScalarType::Int: return "<i4";
    case ScalarType::Short: return "<i2";
    case ScalarType::Byte: return "|u1";
    case ScalarType::Char: return "|i1";
    case ScalarType::Bool: return "|b1";
    default: return "";
  }
}
static std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}
static double as_double(const uint8_t* p, const std::string& d, size_t i) {
  if (d == "<f4") { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
  if (d == "<f8") { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
  if (d == "<i8") { int64_t v; std::memcpy(&v, p + 8 * i, 8); return double(v); }
  if (d == "<i4") { int32_t v; std::memcpy(&v, p + 4 * i, 4); return v; }
  if (d == "<i2") { int16_t v; std::memcpy(&v, p + 2 * i, 2); return v; }
  if (d == "|i1") return int8_t(p[i]);
  if (d == "|u1" || d == "|b1") return p[i];
  return NAN;  // float16 outputs: compared as NaN (fails the check loudly rather than silently)
}


// Every output tensor of one execution, copied out of the method's planned memory.
static std::vector<npy::Array> outputs_of(const std::vector<EValue>& outs) {
  std::vector<npy::Array> res;
  for (size_t i = 0; i < outs.size(); i++) {
    if (!outs[i].isTensor()) throw Fail{"run_failed", "output " + std::to_string(i) + " is not a tensor; the runner handles tensor outputs only"};
    const auto& t = outs[i].toTensor();
    npy::Array a;
    a.descr = descr_of(t.scalar_type());
    if (a.descr.empty()) throw Fail{"run_failed", "output " + std::to_string(i) + " has a dtype the runner cannot save"};
    for (auto d : t.sizes()) a.shape.push_back(d);
    const uint8_t* p = static_cast<const uint8_t*>(t.const_data_ptr());
    a.data.assign(p, p + t.nbytes());
    res.push_back(std::move(a));
  }
  return res;
}

static json::Obj reference_check(const npy::Array& out, const npy::Array& ref, double atol, double rtol) {
  json::Obj c;
  if (out.shape != ref.shape)
    return c.boolean("passed", false).raw("max_abs_err", "null").str("reason", "output shape " + shape_str(out.shape) + " != reference " + shape_str(ref.shape));
  size_t n = out.data.size() / npy::item_size(out.descr);
  double err = 0;
  bool close = true;
  size_t am_o = 0, am_r = 0;
  for (size_t i = 0; i < n; i++) {
    double a = as_double(out.data.data(), out.descr, i), b = as_double(ref.data.data(), ref.descr, i);
    double e = std::fabs(a - b);
    if (std::isnan(e)) err = NAN; else if (!std::isnan(err)) err = std::max(err, e);
    if (!(e <= atol + rtol * std::fabs(b))) close = false;
    if (a > as_double(out.data.data(), out.descr, am_o)) am_o = i;
    if (b > as_double(ref.data.data(), ref.descr, am_r)) am_r = i;
  }
  return c.boolean("passed", close).num("max_abs_err", err).num("atol", atol).num("rtol", rtol).boolean("top1_match", n > 0 && am_o == am_r);
}

static json::Obj run(const Opts& o, double t_start) {
  double hard_stop = t_start + o.deadline_s;
  double rss_start = peak_rss_mb();  // ru_maxrss: carries the forking parent's peak over exec
  double rss_now = status_mb("VmRSS:");  // the runner with the runtime libraries loaded
  json::Obj limits = apply_limits(o);
  tp::ThreadPool* pool = tp::get_threadpool();  // XNNPACK's pool, sized before the model loads
  if (pool == nullptr)  // cpuinfo could not read the CPU topology: XNNPACK cannot start either
    throw Fail{"runtime_failed", "ExecuTorch's threadpool did not start: cpuinfo cannot read the CPU topology "
                                 "(/sys/devices/system/cpu/possible and present); mount /sys on the device"};
  pool->_unsafe_reset_threadpool(uint32_t(o.threads));

  // The model: read, re-hash, refuse what cannot fit before allocating it.
  double rss_before_load = status_mb("VmRSS:");  // the model's load cost includes its bytes in memory
  std::ifstream f(o.model, std::ios::binary | std::ios::ate);
  if (!f) throw Fail{"bad_input", "cannot open the model file " + o.model};
  uint64_t size = uint64_t(f.tellg());
  if (size > uint64_t(o.max_memory_mb) * 1024 * 1024) throw Fail{"resource_limit", "the bundle's files do not fit in max_memory_mb"};
  std::vector<uint8_t> data(size);
  f.seekg(0);
  if (size && !f.read(reinterpret_cast<char*>(data.data()), std::streamsize(size))) throw Fail{"bad_input", "cannot read " + o.model};
  if (sha256::hex(data.data(), data.size()) != o.sha) throw Fail{"hash_mismatch", "the model file changed after it was verified; re-push the bundle"};

  uint64_t max_npy = uint64_t(o.max_memory_mb) * 1024 * 1024;
  std::vector<npy::Array> in;
  for (auto& p : o.inputs) {
    try { in.push_back(npy::load(p, max_npy)); } catch (const npy::NpyError& e) { throw Fail{"bad_input", "input " + p + " " + e.what()}; }
  }
  npy::Array ref;
  if (!o.ref_out.empty()) {
    try { ref = npy::load(o.ref_out, max_npy); } catch (const npy::NpyError& e) { throw Fail{"bad_input", "reference output " + o.ref_out + " " + e.what()}; }
  }

  double t0 = mono_s();
  std::unique_ptr<executorch::etdump::ETDumpGen> tracer;
  if (!o.etdump.empty()) tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  auto* tracer_ptr = tracer.get();
  Module module(std::make_unique<executorch::extension::BufferDataLoader>(data.data(), data.size()), nullptr, nullptr,
                std::move(tracer));
  check(module.load(executorch::runtime::Program::Verification::InternalConsistency), "loading the program");
  check(module.load_forward(), "loading method forward");
  double load_ms = (mono_s() - t0) * 1e3;
  double rss_after_load = status_mb("VmRSS:");
  double hwm_load = status_mb("VmHWM:");  // per address space: starts fresh at exec, unlike ru_maxrss
  bool hwm_reset = reset_peak_rss();

  auto meta_r = module.method_meta("forward");
  if (!meta_r.ok()) check(meta_r.error(), "loading forward's metadata");
  auto meta = meta_r.get();
  if (meta.num_inputs() != in.size())
    throw Fail{"bad_input", "the model's forward takes " + std::to_string(meta.num_inputs()) + " input(s), got " + std::to_string(in.size()) + " .npy file(s)"};
  // Tensors over the caller's arrays: set_inputs copies them into the method's memory each run.
  std::vector<executorch::extension::TensorPtr> keep;
  std::vector<EValue> ref_in, timed_in;
  std::vector<std::vector<uint8_t>> random_bufs;
  std::vector<int64_t> timed_shape;
  for (size_t i = 0; i < in.size(); i++) {
    auto tm = meta.input_tensor_meta(i);
    if (!tm.ok()) throw Fail{"bad_input", "input " + std::to_string(i) + " of forward is not a tensor; the runner feeds tensors only"};
    std::vector<int64_t> want(tm->sizes().begin(), tm->sizes().end());
    std::string wd = descr_of(tm->scalar_type());
    std::string where = "input " + std::to_string(i) + " (" + o.inputs[i] + ")";
    if (in[i].descr != wd)
      throw Fail{"bad_input", where + " is " + npy::dtype_name(in[i].descr) + " but forward takes " + (wd.empty() ? "an unsupported dtype" : npy::dtype_name(wd)) + " " + shape_str(want)};
    if (in[i].shape != want)
      throw Fail{"bad_input", where + " has shape " + shape_str(in[i].shape) + " but forward takes " + shape_str(want)};
    std::vector<executorch::aten::SizesType> sz(want.begin(), want.end());
    keep.push_back(executorch::extension::make_tensor_ptr(sz, in[i].data.data(), tm->scalar_type()));
    ref_in.emplace_back(*keep.back());
  }
  timed_in = ref_in;
  if (!o.input_shape.empty()) {  // like the Python child: random normal input of that shape, input 0
    if (in.size() != 1) throw Fail{"bad_input_shape", "input_shape applies to single-input models only"};
    if (o.input_shape != in[0].shape)
      throw Fail{"bad_input_shape", "input_shape " + shape_str(o.input_shape) + " does not fit the model's input " + shape_str(in[0].shape)};
    std::mt19937 rng(0);
    std::normal_distribution<float> nd;
    npy::Array& a = in[0];
    random_bufs.emplace_back(a.data.size());
    size_t n = a.data.size() / npy::item_size(a.descr);
    for (size_t j = 0; j < n; j++) {
      float v = nd(rng);
      if (a.descr == "<f4") std::memcpy(random_bufs.back().data() + 4 * j, &v, 4);
      else if (a.descr == "<f8") { double d = v; std::memcpy(random_bufs.back().data() + 8 * j, &d, 8); }
      else if (npy::item_size(a.descr) == 1) random_bufs.back()[j] = uint8_t(int8_t(v));
      else { int64_t q = int64_t(v); std::memcpy(random_bufs.back().data() + npy::item_size(a.descr) * j, &q, npy::item_size(a.descr)); }
    }
    std::vector<executorch::aten::SizesType> sz(a.shape.begin(), a.shape.end());
    keep.push_back(executorch::extension::make_tensor_ptr(sz, random_bufs.back().data(), meta.input_tensor_meta(0)->scalar_type()));
    timed_in = {EValue(*keep.back())};
  }
  timed_shape = o.input_shape.empty() ? (in.empty() ? std::vector<int64_t>{} : in[0].shape) : o.input_shape;

  t0 = mono_s();
  auto first = module.forward(ref_in);
  double first_ms = (mono_s() - t0) * 1e3;
  if (!first.ok()) check(first.error(), "on its reference input");
  std::vector<npy::Array> outs = outputs_of(first.get());
  json::Arr out_files;
  for (size_t i = 0; i < outs.size(); i++) {
    std::string p = o.out_dir + "/output_" + std::to_string(i) + ".npy";
    try { npy::save(p, outs[i].descr, outs[i].shape, outs[i].data.data(), outs[i].data.size()); }
    catch (const npy::NpyError& e) { throw Fail{"run_failed", "saving output " + p + ": " + e.what()}; }
    out_files.str(p);
  }
  json::Obj check_doc;
  if (o.ref_out.empty()) check_doc.raw("passed", "null").str("reason", "no reference output given");
  else if (outs.empty()) check_doc.boolean("passed", false).raw("max_abs_err", "null").str("reason", "the model returned no outputs");
  else check_doc = reference_check(outs[0], ref, o.atol, o.rtol);

  std::string what = "during warm-up";
  Error run_err = Error::Ok;
  auto call = [&]() {
    auto r = module.forward(timed_in);
    if (!r.ok()) { run_err = r.error(); throw Fail{"", ""}; }
  };
  double w0 = 0, w1 = 0;
  std::vector<int64_t> ns;
  try {
    for (long i = 0; i < o.warmup; i++) call();
    what = "during the timed runs";
    w0 = mono_s();
    ns = timed_loop(call, o.runs, o.min_time_s, o.max_runs, hard_stop);
    w1 = mono_s();
  } catch (const Fail& f) {
    if (run_err == Error::Ok) throw;
    check(run_err, what);
  }
  double inference_peak = hwm_reset ? status_mb("VmHWM:") : -1;
  std::vector<double> ms;
  for (auto v : ns) ms.push_back(v / 1e6);
  json::Obj latency = stats(ms);
  double p50 = percentile(ms, 50);

  long n_over = std::min<long>(std::max<long>(long(ns.size()), 1000), 20000);
  volatile int sink = 0;
  auto over = timed_loop([&]() { sink = sink + 1; }, n_over, 0.0, n_over, 0);
  double over_ms = 0;
  for (auto v : over) over_ms += v;
  over_ms = over_ms / n_over / 1e6;

  json::Obj res, memory;
  double planned = 0;
  json::Arr planned_bufs;
  for (size_t i = 0; i < meta.num_memory_planned_buffers(); i++) {
    auto sz = meta.memory_planned_buffer_size(i);
    if (sz.ok()) { planned += double(sz.get()); planned_bufs.num(double(sz.get())); }
  }
  memory.num("runtime_rss_mb", rss_now).num("before_load_rss_mb", rss_before_load).num("after_load_rss_mb", rss_after_load)
      .num("model_load_mb", rss_after_load - rss_before_load).num("planned_mb", planned / (1024.0 * 1024.0))
      .arr("planned_buffers_bytes", planned_bufs).num("peak_rss_mb", std::max(hwm_load, std::max(inference_peak, status_mb("VmHWM:"))));
  if (inference_peak >= 0) memory.num("inference_peak_rss_mb", inference_peak);
  else memory.raw("inference_peak_rss_mb", "null");
  if (tracer_ptr != nullptr) {
    auto dump = tracer_ptr->get_etdump_data();
    if (dump.buf == nullptr || dump.size == 0) res.raw("etdump", "null").str("etdump_reason", "the runtime recorded no events");
    else {
      std::ofstream e(o.etdump, std::ios::binary);
      e.write(static_cast<const char*>(dump.buf), std::streamsize(dump.size));
      std::free(dump.buf);
      if (!e) throw Fail{"run_failed", "cannot write the ETDump to " + o.etdump};
      res.str("etdump", o.etdump);
    }
  }
  int n_threads = 0;
  json::Obj tmasks = thread_affinity(&n_threads);
  json::Arr aff, samples, win;
  for (int c : affinity()) aff.num(c);
  for (size_t i = 0; i < ms.size() && i < 5000; i++) samples.num(std::round(ms[i] * 1e5) / 1e5);
  win.num(w0).num(w1);
  json::Arr shape_arr;
  for (auto d : timed_shape) shape_arr.num(double(d));
  res.str("runtime", "executorch").str("pte_runtime", "native").num("threads", o.threads)
      .obj("runtime_threads", json::Obj().num("threadpool", double(pool->get_thread_count())))
      .num("process_threads", n_threads).arr("affinity", aff).obj("thread_affinity", tmasks).arr("input_shape", shape_arr)
      .num("load_ms", load_ms).num("first_inference_ms", first_ms).obj("latency", latency).arr("samples_ms", samples)
      .obj("agent_overhead", json::Obj().num("per_run_ms", over_ms).num("fraction_of_p50", p50 > 0 ? over_ms / p50 : 0)
           .str("method", "the timing loop around a no-op call, " + std::to_string(n_over) + " runs"))
      .num("peak_rss_mb", peak_rss_mb()).num("rss_after_import_mb", rss_start).obj("limits", limits)
      .obj("reference_check", check_doc).obj("memory", memory).arr("outputs", out_files).arr("window", win).num("window_s", w1 - w0);
  return res;
}

int main(int argc, char** argv) {
  double t_start = mono_s();
  std::string doc;
  try {
    Opts o = parse(argc, argv);
    doc = json::Obj().boolean("ok", true).obj("result", run(o, t_start)).text();
  } catch (const Fail& f) {
    doc = json::Obj().boolean("ok", false).obj("error", json::Obj().str("code", f.code).str("message", f.message)).text();
  } catch (const std::bad_alloc&) {
    doc = json::Obj().boolean("ok", false).obj("error", json::Obj().str("code", "resource_limit")
        .str("message", "the model ran out of memory under max_memory_mb (std::bad_alloc)")).text();
  } catch (const std::exception& e) {
    doc = json::Obj().boolean("ok", false).obj("error", json::Obj().str("code", "run_failed").str("message", std::string("the native runner failed: ") + e.what())).text();
  }
  std::fputs((doc + "\n").c_str(), stdout);
  std::fflush(stdout);
  return doc.compare(0, 10, "{\"ok\":true") == 0 ? 0 : 1;
}
