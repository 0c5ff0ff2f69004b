"""Warnings of the multi-object pair drawer: overlapping target boxes, unsaved changes."""

from __future__ import annotations

from pathlib import Path


def box_overlap(a, b) -> int:
    """Area in pixels shared by two [x0, y0, x1, y1] boxes (0 if either is None)."""
    if a is None or b is None:
        return 0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def overlap_warnings(target_boxes: list) -> list[str]:
    """One sentence per pair of overlapping target boxes (pairs numbered from 1). Where
    target regions overlap, the library gives the pixels to the later pair."""
    out = []
    for i, a in enumerate(target_boxes):
        for j in range(i + 1, len(target_boxes)):
            area = box_overlap(a, target_boxes[j])
            if area:
                out.append(f"the target boxes of pairs {i + 1} and {j + 1} overlap ({area} px): "
                           f"there pair {j + 1} takes the pixels, pair {i + 1} loses them")
    return out


def unsaved_text(saved: tuple[Path, dict] | None, current: dict) -> str | None:
    """What to say when the drawer no longer matches the file it last saved (None when
    it does, or nothing was saved)."""
    if saved is None:
        return None
    path, document = saved
    if document == current:
        return None
    return (f"changed since saved: {path} holds {len(document['objects'])} pair(s), the "
            f"drawer has {len(current['objects'])}: press Save to write them")
