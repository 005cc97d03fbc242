// The membership view between Python and C++: a dict
//   {"epoch": int, "self_id": str, "grace_ms": int,
//    "members": [{"id", "host", "port", "weight", "healthy"}, ...],
//    "previous_epoch": int, "previous_members": [...]}
// <-> proto::ViewInfo (node/peer_protocol.h). Used by NodeServer.set_view/view and
// PoolClient.set_view/view. Call with the GIL held.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "node/peer_protocol.h"

namespace mch::binding {

inline std::vector<proto::MemberInfo> members_from(const pybind11::handle& list) {
  std::vector<proto::MemberInfo> out;
  if (list.is_none()) return out;
  for (const pybind11::handle& h : list) {
    pybind11::dict d = pybind11::reinterpret_borrow<pybind11::dict>(h);
    proto::MemberInfo m;
    m.id = d["id"].cast<std::string>();
    m.host = d["host"].cast<std::string>();
    m.port = d["port"].cast<uint16_t>();
    m.weight = d["weight"].cast<double>();
    m.healthy = d.contains("healthy") ? d["healthy"].cast<bool>() : true;
    if (m.id.empty() || m.id.size() > proto::kMaxIdLen || m.host.size() > proto::kMaxHostLen)
      throw pybind11::value_error("member id must be 1 to 64 bytes and host at most 255: '" + m.id + "'");
    out.push_back(std::move(m));
  }
  if (out.size() > proto::kMaxMembers) throw pybind11::value_error("a view holds at most 4096 members");
  return out;
}

inline proto::ViewInfo view_from(const pybind11::dict& d) {
  proto::ViewInfo v;
  v.epoch = d["epoch"].cast<uint64_t>();
  v.self_id = d.contains("self_id") ? d["self_id"].cast<std::string>() : "";
  v.grace_ms = d.contains("grace_ms") ? d["grace_ms"].cast<uint32_t>() : 0;
  v.members = members_from(d["members"]);
  v.prev_epoch = d.contains("previous_epoch") ? d["previous_epoch"].cast<uint64_t>() : 0;
  if (d.contains("previous_members")) v.prev_members = members_from(d["previous_members"]);
  return v;
}

inline pybind11::list members_to(const std::vector<proto::MemberInfo>& ms) {
  pybind11::list out;
  for (const proto::MemberInfo& m : ms) {
    pybind11::dict d;
    d["id"] = m.id;
    d["host"] = m.host;
    d["port"] = m.port;
    d["weight"] = m.weight;
    d["healthy"] = m.healthy;
    out.append(d);
  }
  return out;
}

inline pybind11::dict view_to(const proto::ViewInfo& v) {
  pybind11::dict d;
  d["epoch"] = v.epoch;
  d["self_id"] = v.self_id;
  d["grace_ms"] = v.grace_ms;
  d["members"] = members_to(v.members);
  d["previous_epoch"] = v.prev_epoch;
  d["previous_members"] = members_to(v.prev_members);
  return d;
}

}  // namespace mch::binding
