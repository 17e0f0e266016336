// A minimal .npy reader/writer (format versions 1.0-3.0, little-endian, C order).
//
// Written by hand because the ExecuTorch wheel ships no C++ npy library and the runner must build
// from the wheel alone (a device gets no extra packages for it). Only what the runner exchanges
// with the agent: plain numeric/bool dtypes, C-contiguous, no pickles, no structured dtypes.
// Every malformed or oversized file is reported as a NpyError naming what is wrong.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct NpyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Array {
  std::string descr;             // numpy dtype string, e.g. "<f4", "|u1", "|b1"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;     // raw little-endian C-order bytes
};

// descr -> element size, 0 when not one the runner handles.
inline size_t item_size(const std::string& d) {
  if (d == "<f4" || d == "<i4") return 4;
  if (d == "<f8" || d == "<i8") return 8;
  if (d == "<f2" || d == "<i2") return 2;
  if (d == "|u1" || d == "|i1" || d == "|b1") return 1;
  return 0;
}

inline std::string dtype_name(const std::string& d) {
  if (d == "<f4") return "float32";
  if (d == "<f8") return "float64";
  if (d == "<f2") return "float16";
  if (d == "<i8") return "int64";
  if (d == "<i4") return "int32";
  if (d == "<i2") return "int16";
  if (d == "|u1") return "uint8";
  if (d == "|i1") return "int8";
  if (d == "|b1") return "bool";
  return d;
}

inline std::string field(const std::string& h, const std::string& key) {
  size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) throw NpyError("header has no '" + key + "'");
  size_t c = h.find(':', k);
  if (c == std::string::npos) throw NpyError("header field '" + key + "' has no value");
  size_t s = h.find_first_not_of(" ", c + 1);
  if (s == std::string::npos) throw NpyError("header field '" + key + "' has no value");
  if (h[s] == '\'') {
    size_t e = h.find('\'', s + 1);
    if (e == std::string::npos) throw NpyError("unterminated string in the header");
    return h.substr(s + 1, e - s - 1);
  }
  if (h[s] == '(') {
    size_t e = h.find(')', s);
    if (e == std::string::npos) throw NpyError("unterminated shape in the header");
    return h.substr(s + 1, e - s - 1);
  }
  size_t e = h.find_first_of(",}", s);
  return h.substr(s, e == std::string::npos ? std::string::npos : e - s);
}

// Read `path`; refuses files over max_bytes before reading them.
inline Array load(const std::string& path, uint64_t max_bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw NpyError("cannot open (" + std::string(std::strerror(errno)) + ")");
  struct Closer { FILE* f; ~Closer() { std::fclose(f); } } closer{f};
  if (std::fseek(f, 0, SEEK_END) != 0) throw NpyError("cannot seek");
  long end = std::ftell(f);
  if (end < 0) throw NpyError("cannot tell its size");
  uint64_t size = static_cast<uint64_t>(end);
  if (size > max_bytes) throw NpyError("is " + std::to_string(size) + " bytes, over the limit of " + std::to_string(max_bytes));
  std::rewind(f);
  unsigned char pre[12];
  if (size < 10 || std::fread(pre, 1, 10, f) != 10 || std::memcmp(pre, "\x93NUMPY", 6) != 0)
    throw NpyError("is not a .npy file (bad magic)");
  uint64_t hlen, off;
  if (pre[6] == 1) {
    hlen = pre[8] | (pre[9] << 8);
    off = 10;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (std::fread(pre + 10, 1, 2, f) != 2) throw NpyError("truncated header");
    hlen = uint64_t(pre[8]) | (uint64_t(pre[9]) << 8) | (uint64_t(pre[10]) << 16) | (uint64_t(pre[11]) << 24);
    off = 12;
  } else {
    throw NpyError("has unsupported .npy version " + std::to_string(pre[6]));
  }
  if (hlen > 65536 || off + hlen > size) throw NpyError("header length " + std::to_string(hlen) + " is out of range");
  std::string h(hlen, '\0');
  if (std::fread(&h[0], 1, hlen, f) != hlen) throw NpyError("truncated header");
  Array a;
  a.descr = field(h, "descr");
  if (item_size(a.descr) == 0) throw NpyError("has dtype '" + a.descr + "', not one the runner reads (little-endian f2/f4/f8, i2/i4/i8, u1, i1, b1)");
  std::string fo = field(h, "fortran_order");
  if (fo.find("False") == std::string::npos) throw NpyError("is Fortran-ordered; save it C-contiguous");
  std::string sh = field(h, "shape");
  uint64_t n = 1;
  size_t p = 0;
  while (p < sh.size()) {
    size_t q = sh.find(',', p);
    std::string tok = sh.substr(p, q == std::string::npos ? std::string::npos : q - p);
    p = q == std::string::npos ? sh.size() : q + 1;
    size_t b = tok.find_first_not_of(" "), e = tok.find_last_not_of(" L");
    if (b == std::string::npos) continue;
    tok = tok.substr(b, e - b + 1);
    if (tok.empty() || tok.find_first_not_of("0123456789") != std::string::npos || tok.size() > 12)
      throw NpyError("has a bad shape entry '" + tok + "'");
    int64_t d = std::stoll(tok);
    if (a.shape.size() >= 16) throw NpyError("has more than 16 dimensions");
    a.shape.push_back(d);
    if (d != 0 && n > max_bytes / static_cast<uint64_t>(d)) throw NpyError("shape is too large");
    n *= static_cast<uint64_t>(d);
  }
  uint64_t nbytes = n * item_size(a.descr);
  if (nbytes != size - off - hlen)
    throw NpyError("holds " + std::to_string(size - off - hlen) + " data bytes but its shape needs " + std::to_string(nbytes));
  a.data.resize(nbytes);
  if (nbytes && std::fread(a.data.data(), 1, nbytes, f) != nbytes) throw NpyError("truncated data");
  return a;
}

// Write a version 1.0 .npy (what np.load reads back); header padded to a multiple of 64 bytes.
inline void save(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
                 const void* data, size_t nbytes) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); i++) s += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  s += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + s + ", }";
  size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw NpyError("cannot create (" + std::string(std::strerror(errno)) + ")");
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(h.size() & 0xff),
                           static_cast<unsigned char>(h.size() >> 8)};
  bool ok = std::fwrite(pre, 1, 10, f) == 10 && std::fwrite(h.data(), 1, h.size(), f) == h.size() &&
            (nbytes == 0 || std::fwrite(data, 1, nbytes, f) == nbytes);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw NpyError("write failed (disk full or over the file size limit)");
}

}  // namespace npy
