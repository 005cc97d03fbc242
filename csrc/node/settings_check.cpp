// Settings fingerprints: see settings_check.h.
#include "node/settings_check.h"

#include <map>
#include <sstream>

namespace mch {

namespace {

std::map<std::string, std::string> parse(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

std::string shown(const std::map<std::string, std::string>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? "unset" : it->second;
}

}  // namespace

std::string differing_settings(const std::string& node, const std::string& client) {
  if (node.empty() || client.empty()) return "";
  auto a = parse(node), b = parse(client);
  std::map<std::string, std::string> keys = a;
  keys.insert(b.begin(), b.end());
  std::string out;
  for (const auto& [k, unused] : keys) {
    if (shown(a, k) == shown(b, k)) continue;
    if (!out.empty()) out += "; ";
    out += k + " (node " + shown(a, k) + ", client " + shown(b, k) + ")";
  }
  return out;
}

}  // namespace mch
