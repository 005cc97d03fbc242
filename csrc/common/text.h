// Text helpers shared by every layer: human byte sizes for messages and JSON string escaping.
// Pure functions; thread-safe.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace mch {

// "512 B", "1.5 KiB", "64.0 MiB", ... (binary units, one decimal above bytes).
inline std::string format_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  char buf[64];
  snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// `s` as the body of a JSON string (quotes, backslashes and control characters escaped).
inline std::string json_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += ch;
    }
  }
  return o;
}

}  // namespace mch
