"""The training stream: cached (winner, K losers, cond) batches, shuffled, split by node and by worker, epoch after
epoch, resumable at any batch.

Before training every process reads the shards once with webdataset (`iter_shard_samples`) and the processes
together cache real latents, prompt embeddings and negatives (`ensure_cached`). Each then trains on its share,
every N-th sample, which works for any number of shards (a single shard included). The stream only reads the small
cached tensors: a `wds.DataPipeline` of key batches (a fresh permutation each epoch, seeded
by run seed, rank and epoch), split across loader workers batch by batch, then loaded and collated. Batch `j` of a
process is a pure function of (seed, rank, j), so `--resume` restarts the stream exactly at the saved batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from realbase.errors import UserError
from realdpo.data.cache import ClipRef, LatentCache
from realdpo.data.clips import ClipSample, ShardReport
from realdpo.data.losers import LoserPlan


@dataclass
class PairBatch:
    """winners [B, *L], losers [B, K, *L], cond {name: [B, ...]} (everything but the latents of the real entry)."""

    keys: list[str]
    winners: torch.Tensor
    losers: torch.Tensor
    cond: dict[str, torch.Tensor]

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(self.keys, self.winners.to(device), self.losers.to(device),
                         {k: v.to(device) for k, v in self.cond.items()})


def collate(items: Sequence[tuple[str, dict[str, torch.Tensor], torch.Tensor]]) -> PairBatch:
    """(key, real entry with batch dim 1, negatives [K, ...]) per sample -> one PairBatch."""
    keys = [k for k, _, _ in items]
    winners = torch.cat([real["latents"] for _, real, _ in items])
    losers = torch.stack([neg for _, _, neg in items])
    names = [n for n in items[0][1] if n != "latents"]
    cond = {n: torch.cat([real[n] for _, real, _ in items]) for n in names}
    return PairBatch(keys, winners, losers, cond)


class ShardSamples:
    """The shards read in order with webdataset, re-readable; remembers the clips of the last pass (`refs`, in
    reading order, the order process_share splits), the first clip (validation prompt and first frame) and the first
    pass's ShardReport. Bad samples are warned about on the first pass only, and only when `warn` (the main process)."""

    def __init__(self, urls: Sequence[str], *, allow_blank_captions: bool = False, warn: bool = True):
        self.urls = list(urls)
        self.allow_blank_captions, self.warn = allow_blank_captions, warn
        self.refs: list[ClipRef] = []
        self.first: ClipSample | None = None
        self.report: ShardReport | None = None

    def __iter__(self) -> Iterator[ClipSample]:
        from realdpo.data.clips import iter_shard_samples

        first_pass = self.report is None
        report = ShardReport()
        self.refs = []
        for s in iter_shard_samples(self.urls, allow_blank_captions=self.allow_blank_captions, report=report,
                                    warn=self.warn and first_pass):
            if self.first is None:
                self.first = s
            self.refs.append(s.ref)
            yield s
        if first_pass:
            self.report = report


def process_share(refs: Sequence[ClipRef], rank: int, world: int) -> list[ClipRef]:
    """This process's clips: every `world`-th in reading order starting at `rank` (a key seen before is dropped,
    as ensure_cached drops it)."""
    out, seen = [], set()
    for n, ref in enumerate(refs):
        if ref.key in seen:
            continue
        seen.add(ref.key)
        if n % world == rank:
            out.append(ref)
    return out


def usable(cache: LatentCache, refs: Sequence[ClipRef], losers: LoserPlan) -> list[ClipRef]:
    """Clips whose real entry and K losers are cached (clips too short for the run were skipped)."""
    return [ref for ref in refs if losers.complete(cache, ref)]


def derive_seed(tag: str, *parts: int) -> int:
    """A generator seed that depends only on `tag` and `parts` (not on process or iteration order)."""
    text = ":".join([tag, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2


class KeyStream:
    """Batch j of keys: samples j*B .. j*B+B-1 of an endless sequence of shuffled epochs over `keys`."""

    def __init__(self, keys: Sequence, batch_size: int, seed: int, rank: int):
        if not keys:
            raise UserError("no usable clips for this process (too few clips in --shards for the number of "
                            "processes, or every clip is shorter than --frames at --fps)")
        self.keys, self.batch_size, self.seed, self.rank = list(keys), batch_size, seed, rank
        self._perm: tuple[int, list[int]] | None = None

    def _epoch(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed("realdpo-data", self.seed, self.rank, epoch))
            self._perm = (epoch, torch.randperm(len(self.keys), generator=g).tolist())
        return self._perm[1]

    def batch(self, j: int) -> list:
        n = len(self.keys)
        out = []
        for i in range(j * self.batch_size, (j + 1) * self.batch_size):
            out.append(self.keys[self._epoch(i // n)[i % n]])
        return out

    def epoch_of(self, j: int) -> int:
        return j * self.batch_size // len(self.keys)

    def batches(self, start: int = 0) -> Iterator[tuple[int, list[str]]]:
        j = start
        while True:
            yield j, self.batch(j)
            j += 1


class PairStream(torch.utils.data.IterableDataset):
    """Endless PairBatches from batch `start` on; every DataLoader worker loads every num_workers-th batch, so the
    loader's round-robin returns them in order."""

    def __init__(self, cache: LatentCache, refs: Sequence[ClipRef], *, losers: LoserPlan, batch_size: int, seed: int,
                 rank: int, start: int = 0):
        super().__init__()
        self.cache, self.losers, self.start = cache, losers, start
        self.stream = KeyStream(refs, batch_size, seed, rank)

    def _load(self, item: tuple[int, list[ClipRef]]) -> PairBatch:
        _, refs = item
        items = []
        for ref in refs:
            pair = self.losers.load(self.cache, ref)
            if pair is None:  # the cache was filled for these clips before training; losing an entry is an error
                raise RuntimeError(f"cache entry of {ref.key!r} (round {self.losers.round}) vanished from {self.cache.dir}")
            items.append((ref.key, *pair))
        return collate(items)

    def __iter__(self) -> Iterator[PairBatch]:
        import webdataset as wds

        pipeline = wds.DataPipeline(lambda: self.stream.batches(self.start), wds.split_by_worker, wds.map(self._load))
        return iter(pipeline)


def pair_loader(dataset: PairStream, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over the (already batched) stream."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None)
