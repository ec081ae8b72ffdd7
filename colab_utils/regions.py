"""Connected regions of defect masks (8-connectivity, no scipy): the regions AU-PRO averages its overlap over.
Pure numpy on flat foreground indices; :func:`colab_utils.metrics.label_8_connected_regions` is the public entry."""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------------------------------
# connected components (8-connectivity), no scipy
# ----------------------------------------------------------------------------------------------------------------------


def region_ids(fg_index: np.ndarray, h: int, w: int) -> tuple[np.ndarray, int]:
    """8-connected region of each foreground pixel.

    ``fg_index``: sorted flat indices (int64) of the foreground pixels of a (N, h, w) stack. Returns (region id per
    foreground pixel, int64 in [0, R), numbered in raster order of each region's first pixel; R). Regions never cross
    images. Vectorised union-find: edges to the 4 forward neighbours, then rounds of "hook the larger root under the
    smaller" + full path compression until every edge joins equal roots.
    """
    n = fg_index.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    x = fg_index % w
    not_last_row = (fg_index // w) % h < h - 1
    heads, tails = [], []
    right = np.flatnonzero((fg_index[1:] == fg_index[:-1] + 1) & (x[:-1] < w - 1))
    heads.append(right)
    tails.append(right + 1)
    for dx in (-1, 0, 1):  # neighbours in the next row: down-left, down, down-right
        ok = not_last_row
        if dx == -1:
            ok = ok & (x > 0)
        elif dx == 1:
            ok = ok & (x < w - 1)
        src = np.flatnonzero(ok)
        target = fg_index[src] + (w + dx)
        dst = np.minimum(np.searchsorted(fg_index, target), n - 1)
        hit = fg_index[dst] == target
        heads.append(src[hit])
        tails.append(dst[hit])
    a = np.concatenate(heads)
    b = np.concatenate(tails)
    del heads, tails, x, not_last_row
    parent = np.arange(n, dtype=np.int64)  # invariant: parent[i] <= i, roots point to themselves
    while a.size:
        ra = parent[a]
        rb = parent[b]
        open_edge = ra != rb
        if not open_edge.any():
            break
        a, b, ra, rb = a[open_edge], b[open_edge], ra[open_edge], rb[open_edge]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # path compression until every pixel points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    is_root = parent == np.arange(n)
    number = np.cumsum(is_root) - 1
    return number[parent], int(number[-1] + 1)
