// The runner's one output document: a tiny JSON builder (objects, arrays, numbers, strings).
// NaN and infinities become null, as JSON has no spelling for them.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace json {

inline std::string quote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { o += '\\'; o += char(c); }
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += char(c);
  }
  return o + "\"";
}

inline std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

class Arr;

class Obj {
 public:
  Obj& raw(const std::string& k, const std::string& v) { body_ += (body_.empty() ? "" : ",") + quote(k) + ":" + v; return *this; }
  Obj& num(const std::string& k, double v) { return raw(k, number(v)); }
  Obj& str(const std::string& k, const std::string& v) { return raw(k, quote(v)); }
  Obj& boolean(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
  Obj& obj(const std::string& k, const Obj& v) { return raw(k, v.text()); }
  inline Obj& arr(const std::string& k, const Arr& v);
  std::string text() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

class Arr {
 public:
  Arr& num(double v) { body_ += (body_.empty() ? "" : ",") + number(v); return *this; }
  Arr& str(const std::string& v) { body_ += (body_.empty() ? "" : ",") + quote(v); return *this; }
  std::string text() const { return "[" + body_ + "]"; }

 private:
  std::string body_;
};

inline Obj& Obj::arr(const std::string& k, const Arr& v) { return raw(k, v.text()); }

}  // namespace json
