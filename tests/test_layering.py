"""The C++ layers include only downward: common < nvme, dram, transport < tiering < node <
cluster < python (the pybind11 module). nvme, dram and transport are siblings and never include
each other. Parses every ``#include "..."`` under csrc/ (no build needed)."""

from __future__ import annotations

import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"

# folder -> rank; a file may include its own folder or a folder of lower rank.
LAYERS = {
    "common": 0,
    "nvme": 1, "dram": 1, "transport": 1,
    "tiering": 2,
    "node": 3,
    "cluster": 4,
    "python": 5,
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _includes():
    for path in sorted(CSRC.rglob("*")):
        if path.suffix not in (".h", ".hpp", ".cpp", ".cc"):
            continue
        rel = path.relative_to(CSRC)
        for target in INCLUDE.findall(path.read_text()):
            yield rel, target


def test_every_source_file_lives_in_a_known_layer():
    folders = {rel.parts[0] if len(rel.parts) > 1 else "<csrc root>" for rel, _ in _includes()}
    unknown = sorted(folders - set(LAYERS))
    assert not unknown, f"add these csrc/ folders to LAYERS (with their rank) or move the files: {unknown}"


def test_no_include_points_up_or_sideways():
    bad = []
    for rel, target in _includes():
        src = rel.parts[0]
        dst = target.split("/")[0] if "/" in target else None
        if dst is None:
            bad.append(f"{rel}: includes '{target}' without its folder (write \"<folder>/{target}\")")
        elif dst not in LAYERS:
            bad.append(f"{rel}: includes '{target}' from unknown folder '{dst}'")
        elif dst != src and LAYERS[dst] >= LAYERS[src]:
            kind = "sibling" if LAYERS[dst] == LAYERS[src] else "higher"
            bad.append(f"{rel}: includes {kind} layer '{target}'")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_checker_sees_the_includes():
    # Guards the test itself: the parse must find the includes it is meant to check.
    targets = {t for _, t in _includes()}
    assert "common/status.h" in targets and "tiering/tiered_store.h" in targets
