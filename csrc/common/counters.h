// Counters: the one way every component exports its figures.
//
// A component's stats struct has
//     template <class V> void visit(V& v) const;
// that names each field once, with its kind:
//     v.counter("puts", puts);        // only goes up (Prometheus counter)
//     v.gauge("entries", entries);    // goes up and down, or a setting (Prometheus gauge)
//     v.info("io_backend", backend);  // a string (Prometheus info-style series)
//     v.by_label("requests_by_op", "op", pairs);  // one counter per label value
//     v.pids("client_pids", pids);    // a list of integers (JSON only)
//     v.section("nvme", nested);      // a nested struct with its own visit()
// Two visitors walk them: JsonVisitor writes the JSON object every stats call returns, and
// KindVisitor writes the kind of every field, from which mooncake_hicache/metrics.py types the
// Prometheus series. So /metrics, `stats --format prometheus` and Store.stats() share one field
// list per component. Visitors are plain values used by one thread.
#pragma once
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "common/text.h"

namespace mch {

// Builds one JSON object; nested objects with open()/close().
class JsonWriter {
 public:
  JsonWriter() { out_ = "{"; }
  void key(const char* k) {
    if (!first_) out_ += ',';
    first_ = false;
    out_ += '"';
    out_ += k;
    out_ += "\":";
  }
  void raw(const char* k, const std::string& json) {
    key(k);
    out_ += json;
  }
  void u64(const char* k, uint64_t v) { raw(k, std::to_string(v)); }
  void i64(const char* k, int64_t v) { raw(k, std::to_string(v)); }
  void boolean(const char* k, bool v) { raw(k, v ? "true" : "false"); }
  void str(const char* k, const std::string& v) { raw(k, "\"" + json_escape(v) + "\""); }
  // Doubles always carry a decimal point, so they read back as floats.
  void dbl(const char* k, double v) {
    char buf[64];
    snprintf(buf, sizeof(buf), "%.9g", v);
    std::string s(buf);
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    raw(k, s);
  }
  void open(const char* k) {
    key(k);
    out_ += '{';
    first_ = true;
  }
  void close() {
    out_ += '}';
    first_ = false;
  }
  std::string done() { return out_ + "}"; }

 private:
  std::string out_;
  bool first_ = true;
};

using LabeledCounts = std::vector<std::pair<std::string, uint64_t>>;
// A run of integer fields of one kind: for (auto [k, x] : Fields{{"puts", puts}, ...}) v.counter(k, x);
using Fields = std::initializer_list<std::pair<const char*, uint64_t>>;

// Nested sections are JSON objects for every visitor.
template <class Derived>
class SectionVisitor {
 public:
  explicit SectionVisitor(JsonWriter& w) : w_(w) {}
  template <class Section>
  void section(const char* k, const Section& s) {
    w_.open(k);
    s.visit(static_cast<Derived&>(*this));
    w_.close();
  }

 protected:
  JsonWriter& w_;
};

class JsonVisitor : public SectionVisitor<JsonVisitor> {
 public:
  using SectionVisitor::SectionVisitor;
  void counter(const char* k, uint64_t v) { w_.u64(k, v); }
  void gauge(const char* k, uint64_t v) { w_.u64(k, v); }
  void gauge(const char* k, double v) { w_.dbl(k, v); }
  void flag(const char* k, bool v) { w_.boolean(k, v); }
  void info(const char* k, const std::string& v) { w_.str(k, v); }
  void by_label(const char* k, const char*, const LabeledCounts& v) {
    w_.open(k);
    for (const auto& [name, n] : v) w_.u64(name.c_str(), n);
    w_.close();
  }
  void pids(const char* k, const std::vector<int32_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + std::to_string(v[i]);
    w_.raw(k, s + "]");
  }
};

// Writes {"field": "counter" | "gauge" | "flag" | "info" | "counter:<label>" | "list", ...}.
class KindVisitor : public SectionVisitor<KindVisitor> {
 public:
  using SectionVisitor::SectionVisitor;
  void counter(const char* k, uint64_t) { w_.str(k, "counter"); }
  template <class T>
  void gauge(const char* k, T) { w_.str(k, "gauge"); }
  void flag(const char* k, bool) { w_.str(k, "flag"); }
  void info(const char* k, const std::string&) { w_.str(k, "info"); }
  void by_label(const char* k, const char* label, const LabeledCounts&) {
    w_.str(k, std::string("counter:") + label);
  }
  void pids(const char* k, const std::vector<int32_t>&) { w_.str(k, "list"); }
};

// Walks `stats` with a Visitor (JsonVisitor or KindVisitor) into one JSON object.
template <class Visitor, class Stats>
std::string render(const Stats& stats) {
  JsonWriter w;
  Visitor v(w);
  stats.visit(v);
  return w.done();
}

// The figures of `stats` as one JSON object.
template <class Stats>
std::string to_json(const Stats& stats) {
  return render<JsonVisitor>(stats);
}

// The kind of every field of `stats`, as one JSON object of the same shape.
template <class Stats>
std::string kinds_json(const Stats& stats) {
  return render<KindVisitor>(stats);
}

}  // namespace mch
