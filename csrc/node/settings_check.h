// The settings fingerprint a client sends in HELLO: the settings that shape the node's store
// (tiers.*), as "name=value" lines, written by mooncake_hicache/config.py
// (Config.node_settings()). A node started with other settings is refused (ERROR 9) with the
// fields that differ, so a client never silently uses a stale node built from another config.
// Pure functions; thread-safe.
#pragma once
#include <string>

namespace mch {

// "" when both fingerprints agree (or either is empty: nothing to compare); else the differing
// fields, e.g. "tiers.dram.capacity (node 16777216, client 33554432)", joined by "; ".
std::string differing_settings(const std::string& node, const std::string& client);

}  // namespace mch
