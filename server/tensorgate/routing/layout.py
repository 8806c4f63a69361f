"""Sticky routes' key space: which target owns which range of key hashes.

A route key hashes to a point in ``[0, SPACE)``. The space is split into ranges, each
owned by a target (by label), with each target owning exactly its weight's share. When
the weights change, ``rebalance`` moves the least key space it can: a target that
shrinks gives up the tail of what it owns, a target that grows takes over what was
given up, and every other range stays where it was. So the share of keys that change
variant is exactly the total weight that moved (50/30/20 -> 40/30/30 moves 10% of
keys, all from the first target to the third), which hashing schemes that recompute
the split from the weights alone cannot promise with three or more targets.

The ranges are state, not a function of the weights: the manager persists them with
the route (``Route.key_ranges``) so a restart keeps every key's variant.
"""

from __future__ import annotations

SPACE = 1 << 48
# A canary's stages split a few ranges each time; a layout that has been rebalanced
# thousands of times starts again from contiguous ranges rather than grow without end.
MAX_RANGES = 4096

Ranges = list[tuple[int, str]]  # (start, label), starts ascending from 0


def shares(weights: list[tuple[str, float]]) -> dict[str, int]:
    """Each positive-weight label's share of SPACE, in integers that add up to SPACE
    exactly (largest remainder)."""
    live = [(label, w) for label, w in weights if w > 0]
    total = sum(w for _, w in live)
    if not live or total <= 0:
        return {}
    exact = [(label, w * SPACE / total) for label, w in live]
    out = {label: int(x) for label, x in exact}
    short = SPACE - sum(out.values())
    by_remainder = sorted(exact, key=lambda item: item[1] - int(item[1]), reverse=True)
    for label, _ in by_remainder[:short]:
        out[label] += 1
    return out


def is_valid(ranges: Ranges) -> bool:
    if not ranges or ranges[0][0] != 0:
        return False
    return all(a[0] < b[0] for a, b in zip(ranges, ranges[1:])) and ranges[-1][0] < SPACE


def owned(ranges: Ranges) -> dict[str, int]:
    """How much of the key space each label owns."""
    out: dict[str, int] = {}
    for (start, label), end in zip(ranges, _ends(ranges)):
        out[label] = out.get(label, 0) + end - start
    return out


def rebalance(ranges: Ranges, weights: list[tuple[str, float]]) -> Ranges:
    """The layout for ``weights`` that keeps the most of ``ranges``. Returns ``ranges``
    itself when it already matches; an invalid or empty one starts from scratch
    (contiguous ranges in target order)."""
    want = shares(weights)
    if not want:
        raise ValueError("no target has a positive weight")
    if not is_valid(ranges) or len(ranges) > MAX_RANGES:
        ranges = []
    elif owned(ranges) == want:
        return ranges
    kept: list[tuple[int, int, str]] = []  # (start, end, label)
    free: list[tuple[int, int]] = []
    budget = dict(want)
    for (start, label), end in zip(ranges, _ends(ranges)):
        room = budget.get(label, 0)
        take = min(room, end - start)  # a label keeps its earliest ranges
        if take:
            kept.append((start, start + take, label))
            budget[label] = room - take
        if start + take < end:
            free.append((start + take, end))
    if not ranges:
        free.append((0, SPACE))
    free.sort()
    # What was given up goes to the labels still short, in target order.
    for label, _ in weights:
        need = budget.get(label, 0)
        while need and free:
            start, end = free[0]
            take = min(need, end - start)
            kept.append((start, start + take, label))
            need -= take
            if start + take < end:
                free[0] = (start + take, end)
            else:
                free.pop(0)
        budget[label] = need
    kept.sort()
    merged: Ranges = []
    for start, _, label in kept:
        if merged and merged[-1][1] == label:
            continue  # ranges tile the space, so a same-label neighbour extends this one
        merged.append((start, label))
    return merged


def moved(before: Ranges, after: Ranges) -> int:
    """How much key space changed label between two layouts."""
    points = sorted({s for s, _ in before} | {s for s, _ in after} | {SPACE})
    total = 0
    i = j = 0
    for lo, hi in zip(points, points[1:]):
        while i + 1 < len(before) and before[i + 1][0] <= lo:
            i += 1
        while j + 1 < len(after) and after[j + 1][0] <= lo:
            j += 1
        if before[i][1] != after[j][1]:
            total += hi - lo
    return total


def _ends(ranges: Ranges) -> list[int]:
    return [s for s, _ in ranges[1:]] + [SPACE]
