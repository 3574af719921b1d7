"""Splitting one `restore` over processes: render-farm nodes (`--shard K/N`) or GPUs (`accelerate launch`,
`torchrun`, which set RANK, WORLD_SIZE and LOCAL_RANK).

Shards are contiguous runs of the input list after the folder scan, so N processes restore exactly the frames one
process would, each frame once, and a shard holds neighbouring frames of a shot. With --temporal a shard that starts
inside a sequence first restores, without writing, the frames its fusion needs from before its start
(temporal.sequences.preroll).
"""
from __future__ import annotations

from .jobs import UsageError


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N): the K-th of N shards, counted from 0 as RANK is."""
    k, sep, n = text.partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = None
    if not sep or k is None or n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: expected K/N with N >= 1 and K from 0 to N-1 (e.g. 0/4 ... 3/4 for "
                         f"four processes)")
    return k, n


def shard_from_env(env) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when a launcher started several processes, else None."""
    if "WORLD_SIZE" not in env:
        return None
    try:
        k, n = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
    except ValueError:
        raise UsageError(f"RANK={env.get('RANK')!r} and WORLD_SIZE={env['WORLD_SIZE']!r} must be whole numbers "
                         f"(set by accelerate launch or torchrun)") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"RANK={k} is not between 0 and WORLD_SIZE-1={n - 1}")
    return (k, n) if n > 1 else None


def shard_start(count: int, k: int, n: int) -> int:
    """Where the K-th of N shards of `count` inputs starts (the next shard's start is where it stops)."""
    return count * k // n


def take_shard(items: list, k: int, n: int) -> list:
    return items[shard_start(len(items), k, n):shard_start(len(items), k + 1, n)]


def rank_device(requested: str, env, cuda_available: bool) -> str:
    """One GPU per process under a launcher: `auto` or `cuda` becomes cuda:LOCAL_RANK; an explicit cuda:N stays."""
    if requested in ("auto", "cuda") and cuda_available and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return requested
