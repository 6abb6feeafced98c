"""A stable arm -> colour mapping shared by every figure.

The colour of an arm depends only on its name (never on which other arms a figure happens to
show), so "ewc" is the same blue in the heatmaps, the curves, the sensitivity and the cost plots,
in every study and every notebook. Well-known strategy names have fixed colours; other names take
a colour from the rest of the palette chosen by a checksum of the name (stable across processes,
unlike ``hash()``), and :func:`arm_colors` resolves clashes among the arms of one figure.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

#: Fixed colours of the strategy names the shipped studies use (normalised: lower case, "_").
KNOWN_ARM_COLORS: dict[str, str] = {
    "naive": "#7f7f7f",          # grey: the baseline recedes
    "ewc": "#1f77b4",            # blue
    "online_ewc": "#17becf",     # cyan: a relative of EWC, same family of hue
    "ewc_online": "#17becf",
    "si": "#ff7f0e",             # orange
    "synaptic_intelligence": "#ff7f0e",
    "rwalk": "#2ca02c",          # green
    "gem": "#d62728",            # red
    "agem": "#e377c2",           # pink
    "a_gem": "#e377c2",
    "replay": "#8c564b",         # brown
    "lwf": "#bcbd22",            # olive
    "gdumb": "#9467bd",          # purple
    "cwr_star": "#393b79",       # dark blue
    "cumulative": "#000000",     # black: an upper bound
    "joint": "#000000",
}

# Colours for other names: distinct from the fixed ones and from each other.
_OTHER_COLORS: tuple[str, ...] = (
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
    "#9edae5", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
)


def _normalise(arm: str) -> str:
    return arm.strip().lower().replace("-", "_").replace(" ", "_")


def _base_name(arm: str) -> str:
    # In multi-study figures arms are labelled "study:arm"; the colour follows the arm.
    return arm.rsplit(":", 1)[-1]


def arm_color(arm: str) -> str:
    """The colour (hex string) of one arm, a function of its name only."""
    name = _normalise(_base_name(arm))
    if name in KNOWN_ARM_COLORS:
        return KNOWN_ARM_COLORS[name]
    return _OTHER_COLORS[zlib.crc32(name.encode()) % len(_OTHER_COLORS)]


def arm_colors(arms: Iterable[str]) -> dict[str, str]:
    """Colours for the arms of one figure: :func:`arm_color`, with clashes moved to a free colour.

    Known names keep their fixed colour; an unknown name whose checksum colour is already taken
    (or the same known arm from a second study, labelled ``study:arm``) moves to the next free
    colour, in sorted name order, so the result is deterministic.
    """
    unique = sorted(set(arms))
    result: dict[str, str] = {}
    used: set[str] = set()
    for arm in unique:
        # A known name keeps its colour unless the same arm of another study already has it.
        color = arm_color(arm)
        if color in KNOWN_ARM_COLORS.values() and color not in used:
            result[arm] = color
            used.add(color)
    for arm in unique:
        if arm in result:
            continue
        color = arm_color(arm)
        start = _OTHER_COLORS.index(color) if color in _OTHER_COLORS else zlib.crc32(
            arm.encode()) % len(_OTHER_COLORS)
        for step in range(len(_OTHER_COLORS)):
            candidate = _OTHER_COLORS[(start + step) % len(_OTHER_COLORS)]
            if candidate not in used:
                break
        else:  # more arms than colours: reuse rather than fail
            candidate = _OTHER_COLORS[start]
        result[arm] = candidate
        used.add(candidate)
    return result
