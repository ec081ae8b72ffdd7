"""Patch memory bank (``mode="memory_bank"``), PatchCore-style: no training by gradient.

Fitting: locally aware patch features of every good training image (frozen ImageNet backbone, each stage's
output averaged over a ``bank_neighbourhood`` x ``bank_neighbourhood`` window, brought to one grid of stride
``bank_stride`` and concatenated), then a greedy k-center coreset of ``coreset_ratio`` of them, chosen on a
random projection to ``coreset_projection`` dimensions. The bank is stored as float16 in the model's
state_dict, so a checkpoint holds it like any other weights.

Inference: every patch of a test image is compared with its nearest bank entry (exact L2 search); the raw map is
that distance on the patch grid, (B, 1, H // stride, W // stride), >= 0. The image score is PatchCore's: the
largest patch distance, re-weighted by how isolated its nearest bank entry is among its
``bank_reweight_neighbors`` nearest bank neighbours (``bank_reweight_neighbors=0``: the plain largest
distance).

Search backends (``bank_search``): ``"torch"`` (chunked ``|q|^2 - 2 q.b + |b|^2`` with a matrix product) or
``"faiss"`` (``faiss.IndexFlatL2``, the optional ``faiss-cpu`` package); ``"auto"`` is torch (measured in
benchmarks/README.md: the same speed on this CPU, and no extra dependency).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry
from ..backbones import FeatureExtractor
from ..settings import Settings
from .base import Family, MapOutput, register

#: Default stages per backbone. MobileNetV2: strides 4, 8 and 16 (``features[3]``, ``[6]``, ``[13]``), measured:
#: adding the stride-4 stage to PatchCore's usual strides 8 + 16 raised screw image AUROC from 87.4 to 94.3 at a
#: 1 % coreset (benchmarks/README.md). The ResNets: PatchCore's own layer2 + layer3 (not measured here).
DEFAULT_BANK_LAYERS = {
    "mobilenet_v2": (3, 6, 13),
    "efficientnet_b0": (3, 5),
    "resnet18": (2, 3),
    "wide_resnet50_2": (2, 3),
}

SEARCH_BACKENDS = ("auto", "torch", "faiss")


def _sq_norms(x: Tensor) -> Tensor:
    return (x * x).sum(1)


def greedy_coreset(
    features: Tensor,
    n_select: int,
    projection_dim: int = 64,
    seed: int = 0,
    progress: bool = False,
    start: int | str | None = None,
    return_radius: bool = False,
) -> Tensor | tuple[Tensor, float]:
    """Greedy k-center (farthest-point) subsampling, as in PatchCore.

    features: (N, D) float. Returns int64 indices (n_select,) into ``features``, in the order chosen: each next
    index is the point farthest (L2) from all chosen so far. ``start`` is the first one (default: a seeded random
    point; ``"mean"``: the point nearest the mean, which depends on the data alone). Distances are computed on a Gaussian random projection to ``projection_dim`` dimensions when D is
    larger (Johnson-Lindenstrauss; 0 = no projection), which is what makes it fast: one matrix-vector product
    over the N projected points per selection. Runs on the device of ``features``. ``return_radius``: also the
    covering radius, the largest distance (in the space the distances were computed in) from any point to its
    nearest chosen one; every point lies within it, and it is at most twice the best possible (k-center).
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
    for i in tqdm(range(1, n_select), desc="coreset", disable=not progress, leave=False, mininterval=1.0):
        # squared distance of every point to the last chosen one: |x|^2 - 2 x.c + |c|^2
        d = torch.addmv(norms, x, x[last], alpha=-2.0).add_(norms[last])
        torch.minimum(min_d, d, out=min_d)
        last = int(torch.argmax(min_d))
        chosen[i] = last
    if not return_radius:
        return chosen
    d = torch.addmv(norms, x, x[last], alpha=-2.0).add_(norms[last])
    radius = float(torch.minimum(min_d, d).clamp_min_(0).max().sqrt())
    return chosen, radius


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
) -> tuple[Tensor, Tensor]:
    """Exact nearest bank entry of each query. queries (Q, D), bank (M, D) -> (L2 distance (Q,), index (Q,)).

    With ``query_source`` (Q,) and ``bank_source`` (M,) (int image ids), a query never matches a bank entry of
    its own image (leave-one-image-out); a query with no other entry left gets distance inf.
    """
    bank = bank.float()
    bank_sq = _sq_norms(bank) if bank_sq is None else bank_sq
    dists, idxs = [], []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk].float()
        d = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0)  # (q, M) = |b|^2 - 2 q.b
        if query_source is not None:
            d.masked_fill_(query_source[s : s + chunk, None] == bank_source[None, :], math.inf)
        val, idx = d.min(1)
        dists.append((val + _sq_norms(q)).clamp_min_(0).sqrt_())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


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


class MemoryBankModel(nn.Module):
    """Frozen backbone + memory bank of normal patch features.

    ``forward(images)``: (B, 3|1, H, W) in [0, 1] -> ``{"maps": (B, 1, H // stride, W // stride) L2 distance to
    the nearest bank entry, >= 0, "scores": (B,) PatchCore image scores}``. Needs a fitted bank
    (:meth:`set_bank`); ``state_dict()`` holds the frozen extractor and ``bank`` (M, D) float16, and
    :meth:`load_state_dict` accepts a bank of any size M.
    """

    def __init__(self, extractor: FeatureExtractor, reweight_neighbors: int = 0, search: str = "auto") -> None:
        super().__init__()
        if search not in SEARCH_BACKENDS:
            raise ValueError(f"bank_search={search!r}: choose from {SEARCH_BACKENDS}")
        self.extractor = extractor
        self.reweight_neighbors = int(reweight_neighbors)
        self.search = search
        self.search_chunk = 4096  # queries per distance-matrix block of the torch search (ONNX export: one block)
        self.register_buffer("bank", torch.zeros(0, extractor.out_channels, dtype=torch.float16))
        self.register_buffer("bank_source", torch.zeros(0, dtype=torch.int32))  # training image of each entry
        self._cache: dict[str, Any] = {}
        self._fit_patches: Tensor | None = None  # (N, per_image, D) the fit's features, for its calibration

    # ------------------------------------------------------------------ bank
    def set_bank(self, bank: Tensor, source: Tensor | None = None) -> None:
        """Install a bank (M, D) (stored as float16) and the training-image index (M,) each entry came from."""
        if bank.ndim != 2 or bank.shape[1] != self.extractor.out_channels:
            raise ValueError(f"bank must be (M, {self.extractor.out_channels}), got {tuple(bank.shape)}")
        if source is None:
            source = torch.full((bank.shape[0],), -1, dtype=torch.int32)
        if source.shape != (bank.shape[0],):
            raise ValueError(f"bank source must be ({bank.shape[0]},), got {tuple(source.shape)}")
        self.bank = bank.detach().to(self.bank.device, torch.float16).contiguous()
        self.bank_source = source.detach().to(self.bank.device, torch.int32)
        self._cache.clear()
        self._fit_patches = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's signature
        for name in ("bank", "bank_source"):  # their size is only known from the checkpoint
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name], device=self.bank.device))
        self._cache.clear()
        self._fit_patches = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _bank32(self) -> tuple[Tensor, Tensor]:
        key = (self.bank.device, self.bank.data_ptr(), self.bank.shape[0])
        if self._cache.get("key") != key:
            b = self.bank.float()
            self._cache = {"key": key, "bank": b, "sq": _sq_norms(b)}
        return self._cache["bank"], self._cache["sq"]

    def _faiss_index(self) -> Any:
        if "faiss" not in self._cache or self._cache.get("faiss_key") != self._bank32()[0].data_ptr():
            import faiss

            b = self._bank32()[0].cpu().numpy()
            index = faiss.IndexFlatL2(b.shape[1])
            index.add(b)
            self._cache["faiss"], self._cache["faiss_key"] = index, self._bank32()[0].data_ptr()
        return self._cache["faiss"]

    def nearest(self, queries: Tensor, query_source: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Q, D) -> (distance to the nearest bank entry (Q,), its index (Q,)).

        ``query_source`` (Q,): the training image each query comes from; its own entries are then skipped.
        """
        if self.bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: fit the model first (python -m colab_utils train)")
        if query_source is None and self.search == "faiss" and queries.device.type == "cpu":
            return nearest_faiss(queries, self._faiss_index())
        bank, sq = self._bank32()
        if query_source is None:
            return nearest_torch(queries, bank, sq, chunk=self.search_chunk)
        return nearest_torch(queries, bank, sq, query_source=query_source.to(bank.device),
                             bank_source=self.bank_source.to(bank.device))  # fmt: skip

    # --------------------------------------------------------------- forward
    def patch_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, D, H // stride, W // stride) locally aware patch features."""
        return self.extractor(images)

    def remember_fit_patches(self, patches: Tensor | None, per_image: int = 0) -> None:
        """Keep the fit's patch features, (N * per_image, D) in fit order, for the leave-one-out scoring of those
        same images that calibration runs next (it then skips the backbone). Memory only, never saved."""
        self._fit_patches = None if patches is None else patches.reshape(-1, per_image, patches.shape[-1])

    def _remembered(self, images: Tensor, exclude: Tensor) -> Tensor | None:
        """The fit's own patch features of ``images`` (B, C, H, W), the training images (or their tiles, each
        image's tiles consecutive) at ``exclude`` (B,): (B * h * w, D), or None when not remembered."""
        cache = self._fit_patches
        if cache is None or torch.jit.is_tracing():
            return None
        stride = self.extractor.stride
        hw = (images.shape[-2] // stride) * (images.shape[-1] // stride)
        if cache.shape[1] % hw or int(exclude.max()) >= cache.shape[0]:
            return None
        e = exclude.to(cache.device).long()
        new_run = torch.ones_like(e, dtype=torch.bool)
        new_run[1:] = e[1:] != e[:-1]
        first = new_run.nonzero().flatten()
        k = torch.arange(len(e), device=e.device) - first[new_run.long().cumsum(0) - 1]
        if int(k.max()) >= cache.shape[1] // hw:
            return None
        return cache.view(cache.shape[0], -1, hw, cache.shape[-1])[e, k].reshape(-1, cache.shape[-1]).float()

    def forward(self, images: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
        """``exclude`` (B,) int: the training-image index of each image, whose own bank entries are skipped
        (leave-one-image-out scores of the training images, for calibration; their patch features come from
        the fit when it kept them, :meth:`remember_fit_patches`)."""
        b = images.shape[0]
        h, w = images.shape[-2] // self.extractor.stride, images.shape[-1] // self.extractor.stride
        flat = self._remembered(images, exclude) if exclude is not None else None
        if flat is None:
            feats = self.patch_features(images)
            b, d, h, w = feats.shape
            flat = feats.permute(0, 2, 3, 1).reshape(-1, d)
        d = flat.shape[1]
        source = None if exclude is None else exclude.to(flat.device).repeat_interleave(h * w)
        dist, idx = self.nearest(flat, source)
        dist, idx = dist.view(b, h * w), idx.view(b, h * w)
        top, where = dist.max(1)
        scores = top
        k = min(self.reweight_neighbors, self.bank.shape[0])
        if k > 1:
            bank, sq = self._bank32()
            q = flat.view(b, h * w, d)[torch.arange(b), where]  # (B, D) the most anomalous patch of each image
            m = bank[idx[torch.arange(b), where]]  # (B, D) its nearest bank entry
            # the k nearest bank neighbours of that entry (itself included), then the query's distance to them
            d_mm = torch.addmm(sq[None, :], m, bank.T, alpha=-2.0)
            support = d_mm.topk(k, dim=1, largest=False).indices  # (B, k)
            d_q = (q[:, None, :] - bank[support]).norm(dim=2)  # (B, k), d_q[:, 0] is ~ the patch distance
            weight = 1.0 - torch.softmax(d_q, dim=1)[:, 0]
            scores = weight * top
        return {"maps": dist.view(b, 1, h, w), "scores": scores}


def _bank_layers(config) -> tuple[int, ...]:
    return tuple(config.model.bank_layers) or DEFAULT_BANK_LAYERS.get(config.backbone, ())


#: Fit features larger than this are kept as float16 (half the memory; the bank is stored as float16 anyway).
FLOAT32_FEATURE_BYTES = 1 * 2**30


@torch.no_grad()
def collect_patches(
    model: MemoryBankModel, images_uint8: Tensor, device: torch.device, batch_size: int, config: Any = None,
    progress: bool = False,
) -> Tensor:
    """Patch features of uint8 images (N, C, H, W): (N * h * w, D) on ``device``, image by image (under
    ``config.geometry="tile"`` each image's tiles, :func:`colab_utils.geometry.cut`). float32, or float16 when
    they would take more than :data:`FLOAT32_FEATURE_BYTES` (thousands of images), written into one buffer."""
    from ..env import progress_bar as tqdm

    tiled = config is not None and config.geometry == "tile"
    out: Tensor | None = None
    row = 0
    bar = tqdm(total=len(images_uint8), desc="features", unit="img", disable=not progress, leave=False)
    for s in range(0, len(images_uint8), batch_size):
        x = batch = images_uint8[s : s + batch_size]
        if tiled:
            x = geometry.cut(x, config.image_size, config.tile_overlap)
        x = x.to(device).float().div_(255.0)
        f = model.patch_features(x)
        f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        if out is None:  # the first batch gives the patches per image: size the buffer once
            total = len(images_uint8) * (f.shape[0] // len(batch))
            dtype = torch.float32 if total * f.shape[1] * 4 <= FLOAT32_FEATURE_BYTES else torch.float16
            out = torch.empty(total, f.shape[1], dtype=dtype, device=f.device)
        out[row : row + f.shape[0]] = f
        row += f.shape[0]
        bar.update(len(batch))
        bar.set_postfix(patches=f"{row:,}")
    bar.close()
    return out if out is not None else torch.zeros(0, model.extractor.out_channels)


@dataclass
class MemoryBankSettings(Settings):
    """The memory bank's own fields (``Config.model`` when ``mode="memory_bank"``); the backbone is
    ``Config.backbone``."""

    bank_layers: tuple[int, ...] = ()  # backbone stages; () = the backbone's default (mobilenet_v2: strides 4, 8, 16)
    bank_stride: int = 8  # grid stride of the patch features (8: 32 x 32 patches at 256 px)
    bank_neighbourhood: int = 3  # local average window of each stage's features (PatchCore's 3)
    coreset_ratio: float = 0.01  # share of training patches kept by the greedy k-center coreset (1 = all)
    coreset_projection: int = 64  # random-projection dimension the coreset distances are computed in (0 = none)
    coreset_chunk: int = 0  # composable coreset over blocks of this many patches (faster, measured less accurate); 0 = one pass
    coreset_start: str = "random"  # the coreset's first patch: "random" (seeded, PatchCore's) or "mean" (nearest the mean)
    coreset_candidates: int = 1_000_000  # the greedy coreset runs over at most this many patches (a seeded sample); 0 = all
    bank_reweight_neighbors: int = 0  # PatchCore's image-score re-weighting over this many bank neighbours; 0 = off (measured better)
    bank_search: str = "auto"  # nearest-neighbour search: "auto" (= torch), "torch" or "faiss" (faiss-cpu)

    def check(self, config) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            self.bad("coreset_ratio", "must lie in (0, 1]; 1 keeps every training patch")
        if self.bank_neighbourhood < 0 or (self.bank_neighbourhood > 1 and self.bank_neighbourhood % 2 == 0):
            self.bad("bank_neighbourhood", "must be 0 or 1 (off) or an odd window such as 3")
        if self.bank_stride not in (4, 8, 16):
            self.bad("bank_stride", "must be 4, 8 or 16")
        if self.coreset_start not in ("random", "mean"):
            self.bad("coreset_start", "must be 'random' or 'mean'")
        if self.bank_search not in SEARCH_BACKENDS:
            self.bad("bank_search", f"must be one of {SEARCH_BACKENDS}")
        for name in ("coreset_projection", "bank_reweight_neighbors", "coreset_chunk", "coreset_candidates"):
            if getattr(self, name) < 0:
                self.bad(name, "must not be negative")


class MemoryBankFamily(Family):
    """Registry entry of the patch memory bank."""

    name = "memory_bank"
    settings = MemoryBankSettings
    trains_by_gradient = False
    needs_backbone = True
    has_reconstruction = False
    has_image_score = True
    cross_fits = True  # the bank holds every good training image; calibration scores each one without its own patches
    # image score on the map standardised per position with the leave-one-out maps of the training images:
    # measured above the bank's own (largest patch distance) score on all four dev categories
    # (benchmarks/README.md: KolektorSDD 80.1 -> 92.9, screw 94.8 -> 96.2, capsule 98.0 -> 98.8, bottle 100 = 100)
    default_score_norm = "position"
    # it calibrates on leave-one-image-out scores of all its training images, which sit above those of unseen good
    # images (the coreset keeps each image's rare patches), so its 95th percentile is a false-alarm budget of at
    # most 5 %: measured, 0-4 % of good test images flagged with defect recall 50-100 %, where the 99th flagged
    # none and recalled 17-98 % (benchmarks/README.md, section 9)
    threshold_percentile = 95.0
    resumable = frozenset({"bank_reweight_neighbors", "bank_search"})
    profiles = {
        "smoke": {"image_size": 64, "epochs": 1, "batch_size": 8, "smooth_sigma": 1.0},
        "cpu": {"image_size": 256, "epochs": 1, "batch_size": 16},
        "gpu": {"image_size": 256, "epochs": 1, "batch_size": 16},
    }

    def build(self, config, pretrained: bool | None = None) -> nn.Module:
        s = config.model
        extractor = FeatureExtractor(
            config.backbone,
            layers=_bank_layers(config),
            pretrained=config.pretrained if pretrained is None else pretrained,
            pool=s.bank_neighbourhood,
            stride=s.bank_stride,
        )
        return MemoryBankModel(extractor, s.bank_reweight_neighbors, s.bank_search)

    def describe_fit(self, info: dict) -> str:
        return (
            f"bank of {info.get('bank_size', 0):,} patches from {info.get('patches_seen', 0):,} "
            f"({info.get('images', 0)} images, {info.get('feature_dim', 0)} dims, "
            f"{info.get('bank_megabytes', 0.0):.1f} MB, fitted in {info.get('fit_seconds', 0.0):.1f} s)"
        )

    @contextmanager
    def exportable(self, model):
        """The torch search in one block while ONNX traces (no faiss, no data-dependent chunk loop)."""
        saved = model.search, model.search_chunk
        model.search, model.search_chunk = "torch", 2**31 - 1
        try:
            yield model
        finally:
            model.search, model.search_chunk = saved

    def fit(self, model, train_set, config, device, progress: bool = True, log: Callable[[str], None] = print) -> dict:
        """Fill the bank from the good training images; returns what fitting did (for notebook 02).

        The greedy coreset costs (bank size) x (patches), so above ``coreset_candidates`` patches it runs over a
        seeded sample of that many, keeping ``coreset_ratio`` of the sample: fitting then grows linearly with the
        images (features) and the bank stops growing. Below the cap it is the plain PatchCore coreset."""
        t0 = time.perf_counter()
        patches = collect_patches(model, train_set.images, device, config.batch_size, config, progress)
        t1 = time.perf_counter()
        s = config.model
        n = patches.shape[0]
        candidates = None
        if s.coreset_candidates and n > s.coreset_candidates and s.coreset_ratio < 1.0:
            gen = torch.Generator().manual_seed(config.seed)
            candidates = torch.randperm(n, generator=gen)[: s.coreset_candidates].sort().values
        pool = patches if candidates is None else patches[candidates.to(patches.device)]
        n_select = max(1, int(round(s.coreset_ratio * pool.shape[0])))
        if s.coreset_ratio >= 1.0:
            chosen = torch.arange(n)
        else:
            log(f"{config.category}: coreset of {n_select:,} from {n:,} patches"
                + (f" (a sample of {pool.shape[0]:,} candidates)" if candidates is not None else ""))  # fmt: skip
            chosen = chunked_coreset(pool, s.coreset_ratio, s.coreset_chunk, s.coreset_projection, config.seed,
                                     progress, start=None if s.coreset_start == "random" else s.coreset_start)  # fmt: skip
            if candidates is not None:
                chosen = candidates[chosen.cpu()]
        per_image = n // len(train_set)
        model.set_bank(patches[chosen.to(patches.device)].float(), (chosen // per_image).to(torch.int32))
        # calibration scores these same images leave-one-out next: keep their features for it (up to 2 GB)
        model.remember_fit_patches(patches if patches.numel() * patches.element_size() <= 2 * 2**30 else None, per_image)
        t2 = time.perf_counter()
        return {
            "images": len(train_set),
            "patches_seen": int(n),
            "coreset_candidates": int(pool.shape[0]),
            "bank_size": int(model.bank.shape[0]),
            "feature_dim": int(patches.shape[1]),
            "feature_dtype": str(patches.dtype).replace("torch.", ""),
            "bank_megabytes": model.bank.numel() * 2 / 2**20,
            "feature_seconds": t1 - t0,
            "coreset_seconds": t2 - t1,
            "fit_seconds": t2 - t0,
        }

    def raw_maps(self, model, images: Tensor, config, exclude: Tensor | None = None) -> MapOutput:
        out = model(images, exclude=exclude)
        maps = F.interpolate(out["maps"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return MapOutput(maps=maps, recon=None, scores=out["scores"])


register(MemoryBankFamily())
