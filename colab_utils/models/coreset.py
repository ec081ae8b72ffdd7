"""The memory bank's patch machinery: the greedy k-center coreset (PatchCore's), the cells it leaves and each
entry's stand-in for leave-one-out calibration, and exact nearest-neighbour search (torch or faiss).

Shapes: patch features are (N, D) float32 (float16 for thousands of images), indices int64, image ids int32.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor


def _sq_norms(x: Tensor) -> Tensor:
    return (x * x).sum(1)


class Cells(NamedTuple):
    """Where each of N points lies relative to a coreset: ``index`` int64 (N,), its nearest chosen point (a
    position in the coreset's indices), and ``runner_up`` float (N,), its squared distance to the second nearest
    (inf when there is none)."""

    index: Tensor
    runner_up: Tensor


def greedy_coreset(
    features: Tensor,
    n_select: int,
    projection_dim: int = 64,
    seed: int = 0,
    progress: bool = False,
    start: int | str | None = None,
    return_radius: bool = False,
    return_cells: bool = False,
) -> Tensor | tuple:
    """Greedy k-center (farthest-point) subsampling, as in PatchCore.

    features: (N, D) float. Returns int64 indices (n_select,) into ``features``, in the order chosen: each next
    index is the point farthest (L2) from all chosen so far. ``start`` is the first one (default: a seeded random
    point; ``"mean"``: the point nearest the mean, which depends on the data alone). Distances are computed on a
    seeded Gaussian random projection to ``projection_dim`` dimensions when D is larger (Johnson-Lindenstrauss;
    0 = no projection), which is what makes it fast: one matrix-vector product over the N projected points per
    selection. Runs on the device of ``features``. ``return_radius``: also the
    covering radius, the largest distance (in the space the distances were computed in) from any point to its
    nearest chosen one; every point lies within it, and it is at most twice the best possible (k-center).
    ``return_cells``: also the :class:`Cells` of the points (each one's nearest chosen point and its squared
    distance to the second nearest, found along the way at the cost of a few comparisons per point and step).
    With both, returns (indices, radius, cells).
    """
    from ..env import progress_bar as tqdm

    n = features.shape[0]
    n_select = int(min(max(1, n_select), n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = features.shape[1]
    proj = None
    if projection_dim and projection_dim < d:
        proj = (torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)).to(features.device)
    if features.dtype == torch.float32:
        x = features if proj is None else features @ proj
    else:  # float16 features of thousands of images: to float32 block by block, never a whole float32 copy
        x = torch.cat([features[i : i + 65536].float() if proj is None else features[i : i + 65536].float() @ proj
                       for i in range(0, features.shape[0], 65536)])  # fmt: skip
    x = x.contiguous()
    norms = _sq_norms(x)
    if start == "mean":
        last = int(torch.argmin(((x - x.mean(0)) ** 2).sum(1)))
    else:
        last = int(torch.randint(n, (1,), generator=gen)) if start is None else int(start)
    chosen = torch.empty(n_select, dtype=torch.long)
    chosen[0] = last
    min_d = torch.full((n,), math.inf, device=x.device)
    cells = Cells(torch.zeros(n, dtype=torch.long, device=x.device), torch.full_like(min_d, math.inf)) if return_cells else None
    for i in tqdm(range(1, n_select + 1), desc="coreset", disable=not progress, leave=False, mininterval=1.0):
        # squared distance of every point to the last chosen one: |x|^2 - 2 x.c + |c|^2
        d = torch.addmv(norms, x, x[last], alpha=-2.0).add_(norms[last])
        if cells is not None:
            closer = d < min_d
            torch.where(closer, min_d, torch.minimum(cells.runner_up, d), out=cells.runner_up)
            cells.index.masked_fill_(closer, i - 1)
        torch.minimum(min_d, d, out=min_d)
        if i == n_select:  # the last chosen point only updates the distances
            break
        last = int(torch.argmax(min_d))
        chosen[i] = last
    if not (return_radius or return_cells):
        return chosen
    radius = float(min_d.clamp_min(0).max().sqrt())
    found = Cells(cells.index.cpu(), cells.runner_up.cpu()) if cells is not None else None
    return (chosen,) + ((radius,) if return_radius else ()) + ((found,) if return_cells else ())


def chunked_coreset(
    features: Tensor,
    ratio: float,
    chunk: int,
    projection_dim: int = 64,
    seed: int = 0,
    progress: bool = False,
    oversample: int = 4,
    start: str | None = None,
) -> Tensor:
    """A composable greedy k-center coreset: :func:`greedy_coreset` of each consecutive block of ``chunk`` rows,
    ``oversample`` times the block's share, then :func:`greedy_coreset` of their union down to
    ``round(ratio * N)`` points (Indyk et al., PODS 2014: the union of per-block k-center coresets is a coreset).

    features: (N, D). Returns int64 indices (``round(ratio * N)``,) into ``features``, in the order the final
    pass chose them. Each block's greedy keeps its rarest patches first, so the union holds the points a single
    pass would pick; the cost grows linearly with N (each block costs ``oversample * ratio * chunk**2`` distance
    evaluations, the union ``oversample * (ratio * N)**2``) where one pass costs ``ratio * N**2``, and a block's
    projected points stay in the CPU cache. ``chunk <= 0`` or ``>= N``: one pass.
    """
    n = features.shape[0]
    n_select = max(1, round(ratio * n))
    if chunk <= 0 or chunk >= n:
        return greedy_coreset(features, n_select, projection_dim, seed, progress, start)
    blocks = -(-n // chunk)
    size = -(-n // blocks)  # equal blocks, so none is a sliver
    union = []
    for b, first in enumerate(range(0, n, size)):
        block = features[first : first + size]
        picked = greedy_coreset(block, min(len(block), oversample * max(1, round(ratio * len(block)))),
                                projection_dim, seed + 1 + b, False, start)  # fmt: skip
        union.append(picked + first)
    union = torch.cat(union)
    if len(union) <= n_select:
        return union
    final = greedy_coreset(features[union.to(features.device)], n_select, projection_dim, seed, progress, start)
    return union[final.cpu()]


def nearest_torch(
    queries: Tensor,
    bank: Tensor,
    bank_sq: Tensor | None = None,
    chunk: int = 4096,
    query_source: Tensor | None = None,
    bank_source: Tensor | None = None,
    stand_in_for: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact nearest bank entry of each query. queries (Q, D), bank (M, D) -> (L2 distance (Q,), index (Q,)).

    With ``query_source`` (Q,) and ``bank_source`` (M,) (int image ids), a query never matches a bank entry of
    its own image (leave-one-image-out); a query with no other entry left gets distance inf. ``stand_in_for``
    (M,) int: for an entry >= 0, the only image whose queries may match it (a stand-in for that image's own
    entries, :func:`stand_ins`); -1 for an ordinary entry.
    """
    bank = bank.float()
    bank_sq = _sq_norms(bank) if bank_sq is None else bank_sq
    dists, idxs = [], []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk].float()
        d = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0)  # (q, M) = |b|^2 - 2 q.b
        if query_source is not None:
            qs = query_source[s : s + chunk, None]
            barred = qs == bank_source[None, :]
            if stand_in_for is not None:
                barred |= (stand_in_for[None, :] >= 0) & (qs != stand_in_for[None, :])
            d.masked_fill_(barred, math.inf)
        val, idx = d.min(1)
        dists.append((val + _sq_norms(q)).clamp_min_(0).sqrt_())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


#: How a bank entry's stand-in is chosen (``MemoryBankSettings.stand_ins``), see :func:`stand_ins`.
STAND_IN_RULES = ("greedy", "random", "nearest", "none")


def cells_of(pool: Tensor, bank: Tensor, chunk: int = 4096) -> Cells:
    """The :class:`Cells` of pool (N, D) relative to bank (M, D), by one exact (N x M) search."""
    bank = bank.float()
    sq = _sq_norms(bank)
    index, runner_up = [], []
    for s in range(0, pool.shape[0], chunk):
        q = pool[s : s + chunk].float()
        d = torch.addmm(sq[None, :], q, bank.T, alpha=-2.0).add_(_sq_norms(q)[:, None])
        top = d.topk(min(2, d.shape[1]), dim=1, largest=False)
        index.append(top.indices[:, 0])
        runner_up.append(top.values[:, 1] if d.shape[1] > 1 else torch.full_like(top.values[:, 0], math.inf))
    return Cells(torch.cat(index).cpu(), torch.cat(runner_up).cpu())


def stand_ins(
    chosen: Tensor, pool: Tensor, pool_source: Tensor, rule: str = "greedy", cells: Cells | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """For each bank entry, a patch of the fit from *another* training image that takes the entry's place when the
    entry's own image is scored leave-one-out: what a bank built without that image would hold there.

    A coreset keeps one entry for a whole neighbourhood (its cell) of similar patches, often an entry of the image
    scored leave-one-out; dropping that image's entries leaves holes that the patches the coreset passed over
    would have filled, so leave-one-out scores sit above those of unseen good images (screw: the 95th percentile
    flagged none of its good test images and recalled 52 % of the defects; benchmarks/README.md, section 14).
    Rules, among the patches of other images in the entry's cell:

    - ``"greedy"``: the one farthest from every other entry (largest ``runner_up``), which the greedy coreset
      would have chosen there had the entry's image been absent;
    - ``"random"``: a seeded random one;
    - ``"nearest"``: the other images' patch nearest the entry, from the whole pool.

    chosen (M,) int64 the bank's indices into pool (N, D), the fit's patches (or its coreset candidates);
    pool_source (N,) int their training images; cells: :func:`greedy_coreset`'s ``return_cells`` (None: found by
    :func:`cells_of`). Returns (stand-ins (M, D) float32, their images (M,) int32, -1 where the cell (for
    "nearest", the pool) holds no patch of another image).
    """
    bank_source = pool_source[chosen].cpu()
    none = torch.full((len(chosen),), -1, dtype=torch.int32)
    if rule == "nearest":
        chunk = max(1, 2**25 // max(1, pool.shape[0]))
        dist, idx = nearest_torch(pool[chosen.to(pool.device)], pool, chunk=chunk,
                                  query_source=bank_source.to(pool.device), bank_source=pool_source.to(pool.device))  # fmt: skip
        idx, found = idx.cpu(), torch.isfinite(dist).cpu()
    else:
        if cells is None:
            cells = cells_of(pool, pool[chosen.to(pool.device)])
        n = len(cells.index)
        if rule == "random":
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:  # farthest from the other entries first
            order = torch.argsort(cells.runner_up, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n)
        other = pool_source.cpu() != bank_source[cells.index]  # patches of another image than their cell's entry
        first = torch.full((len(chosen),), n, dtype=torch.long)
        first.scatter_reduce_(0, cells.index[other], rank[other], reduce="amin")  # each cell's first such patch
        found = first < n
        idx = torch.where(found, order[first.clamp_max(n - 1)], 0)
    source = torch.where(found, pool_source.cpu()[idx].to(torch.int32), none)
    return pool[idx.to(pool.device)].float(), source


def nearest_faiss(queries: Tensor, index: Any) -> tuple[Tensor, Tensor]:
    """Exact nearest entry through a faiss ``IndexFlatL2`` (CPU). Same returns as :func:`nearest_torch`."""
    import numpy as np

    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    d2, idx = index.search(q, 1)
    dist = torch.from_numpy(d2[:, 0]).clamp_min_(0).sqrt_().to(queries.device)
    return dist, torch.from_numpy(idx[:, 0]).long().to(queries.device)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
