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
from .coreset import (
    STAND_IN_RULES,
    _sq_norms,
    chunked_coreset,
    greedy_coreset,
    nearest_faiss,
    nearest_torch,
    stand_ins,
)

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
        # each entry's stand-in from another training image and that image (-1: none), for leave-one-out only
        self.register_buffer("stand_in", torch.zeros(0, extractor.out_channels, dtype=torch.float16))
        self.register_buffer("stand_in_source", torch.zeros(0, dtype=torch.int32))
        self._cache: dict[str, Any] = {}
        self._fit_patches: Tensor | None = None  # (N, per_image, D) the fit's features, for its calibration

    # ------------------------------------------------------------------ bank
    def set_bank(
        self, bank: Tensor, source: Tensor | None = None, stand_in: Tensor | None = None,
        stand_in_source: Tensor | None = None,
    ) -> None:
        """Install a bank (M, D) (stored as float16), the training-image index (M,) each entry came from, and the
        entries' stand-ins (M, D) with their images (M,) (:func:`stand_ins`; -1 or none given: no stand-in)."""
        if bank.ndim != 2 or bank.shape[1] != self.extractor.out_channels:
            raise ValueError(f"bank must be (M, {self.extractor.out_channels}), got {tuple(bank.shape)}")
        if source is None:
            source = torch.full((bank.shape[0],), -1, dtype=torch.int32)
        if source.shape != (bank.shape[0],):
            raise ValueError(f"bank source must be ({bank.shape[0]},), got {tuple(source.shape)}")
        if stand_in is None or stand_in_source is None:
            stand_in, stand_in_source = torch.zeros(0, bank.shape[1]), torch.zeros(0, dtype=torch.int32)
        elif stand_in.shape != bank.shape or stand_in_source.shape != (bank.shape[0],):
            raise ValueError(f"stand-ins must be {tuple(bank.shape)} and ({bank.shape[0]},), "
                             f"got {tuple(stand_in.shape)} and {tuple(stand_in_source.shape)}")  # fmt: skip
        self.bank = bank.detach().to(self.bank.device, torch.float16).contiguous()
        self.bank_source = source.detach().to(self.bank.device, torch.int32)
        self.stand_in = stand_in.detach().to(self.bank.device, torch.float16).contiguous()
        self.stand_in_source = stand_in_source.detach().to(self.bank.device, torch.int32)
        self._cache.clear()
        self._fit_patches = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's signature
        for name in ("bank", "bank_source", "stand_in", "stand_in_source"):  # their size is only known from the checkpoint
            if prefix + name not in state_dict and name.startswith("stand_in"):  # saved before stand-ins: none
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name)[:0])
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
        query_source = query_source.to(bank.device)
        source = self.bank_source.to(bank.device)
        use = None
        if self.stand_in.shape[0] == bank.shape[0]:  # else a bank saved without stand-ins
            # the stand-ins of the entries of the images being scored, usable by those images' queries only
            use = torch.isin(source, query_source.unique()) & (self.stand_in_source.to(bank.device) >= 0)
        if use is None or not bool(use.any()):
            return nearest_torch(queries, bank, sq, query_source=query_source, bank_source=source)
        extra = self.stand_in[use].float()
        dist, idx = nearest_torch(
            queries, torch.cat([bank, extra]), torch.cat([sq, _sq_norms(extra)]),
            query_source=query_source, bank_source=torch.cat([source, self.stand_in_source[use].to(bank.device)]),
            stand_in_for=torch.cat([torch.full_like(source, -1), source[use]]),
        )
        substitutes = use.nonzero().flatten()  # a stand-in's index is that of the entry it stands in for
        return dist, torch.where(idx < len(bank), idx, substitutes[(idx - len(bank)).clamp_min(0)])

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
    coreset_ratio: float = 0.02  # share of training patches kept by the greedy k-center coreset (1 = all)
    coreset_projection: int = 64  # random-projection dimension the coreset distances are computed in (0 = none)
    coreset_chunk: int = 0  # composable coreset over blocks of this many patches (faster, measured less accurate); 0 = one pass
    coreset_start: str = "random"  # the coreset's first patch: "random" (seeded, PatchCore's) or "mean" (nearest the mean)
    coreset_candidates: int = 1_000_000  # the greedy coreset runs over at most this many patches (a seeded sample); 0 = all
    coreset_max: int = 10_000  # the bank keeps at most this many entries, whatever coreset_ratio gives; 0 = no cap
    stand_ins: str = "greedy"  # leave-one-out calibration meets each left-out entry's stand-in: "greedy", "random", "nearest" or "none"
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
        if self.stand_ins not in STAND_IN_RULES:
            self.bad("stand_ins", f"must be one of {STAND_IN_RULES}")
        if self.bank_search not in SEARCH_BACKENDS:
            self.bad("bank_search", f"must be one of {SEARCH_BACKENDS}")
        for name in ("coreset_projection", "bank_reweight_neighbors", "coreset_chunk", "coreset_candidates", "coreset_max"):
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
    # it calibrates on leave-one-image-out scores of all its training images, each without its own bank entries
    # (their stand-ins in their place) and standardised without its own map: a false-alarm budget of 5 % that
    # unseen good images meet (benchmarks/README.md, section 14; before the stand-ins it flagged 0-4 % and
    # recalled 50-100 %, section 9)
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
        seeded sample of that many, keeping ``coreset_ratio`` of the sample, and the bank holds at most
        ``coreset_max`` entries: fitting then grows linearly with the images (features) and the bank stops growing.
        Below the caps it is the plain PatchCore coreset; the stand-ins come from the coreset's own pass."""
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
        if s.coreset_max:
            n_select = min(n_select, s.coreset_max)
        cells = None
        if s.coreset_ratio >= 1.0:
            picked = torch.arange(n)
        else:
            log(f"{config.category}: coreset of {n_select:,} from {n:,} patches"
                + (f" (a sample of {pool.shape[0]:,} candidates)" if candidates is not None else ""))  # fmt: skip
            start = None if s.coreset_start == "random" else s.coreset_start
            if 0 < s.coreset_chunk < pool.shape[0]:
                picked = chunked_coreset(pool, n_select / pool.shape[0], s.coreset_chunk, s.coreset_projection,
                                         config.seed, progress, start=start)  # fmt: skip
            else:  # one pass, which also tells each patch's cell for the stand-ins
                picked, cells = greedy_coreset(pool, n_select, s.coreset_projection, config.seed, progress, start,
                                               return_cells=True)  # fmt: skip
        per_image = n // len(train_set)
        pool_source = ((torch.arange(n) if candidates is None else candidates) // per_image).to(torch.int32)
        t_spare = time.perf_counter()
        spare = None, None
        if s.stand_ins != "none" and s.coreset_ratio < 1.0:  # a full bank has no holes: every neighbour is in it
            spare = stand_ins(picked, pool, pool_source, s.stand_ins, cells, config.seed)
        t_spare = time.perf_counter() - t_spare
        model.set_bank(pool[picked.to(pool.device)].float(), pool_source[picked], *spare)
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
            "coreset_seconds": t2 - t1 - t_spare,  # the stand-in cells found along the way included
            "stand_in_seconds": t_spare,
            "fit_seconds": t2 - t0,
        }

    def raw_maps(self, model, images: Tensor, config, exclude: Tensor | None = None) -> MapOutput:
        out = model(images, exclude=exclude)
        maps = F.interpolate(out["maps"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return MapOutput(maps=maps, recon=None, scores=out["scores"])


register(MemoryBankFamily())
