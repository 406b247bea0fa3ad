"""Allocation of a Llama-3-8B @ 4K KV cache (512 MiB) on a CUDA device: cudaMemGetInfo before,
while held and after freeing, and the time to allocate + zero-initialise it (first and warm)."""

from __future__ import annotations

import statistics
import time

import kvinfer
from kvinfer import _core


def main() -> None:
    if not kvinfer.cuda_available():
        print("no CUDA device: nothing to measure")
        return
    dev = _core.cuda_devices()[0]
    cfg = kvinfer.KVCacheConfig(num_layers=32, max_context=4096, num_kv_heads=8, head_dim=128)
    size = kvinfer.KVCache.size_bytes(cfg)
    tracker = kvinfer.VramTracker()

    kvinfer.DeviceMemory(256, "cuda:0", "warmup", tracker).free()  # create the CUDA context
    free0, total = _core.cuda_mem_info(0)
    t0 = time.perf_counter()
    cache = kvinfer.KVCache(cfg, device="cuda:0", tracker=tracker)  # returns once zeroed
    first_ms = (time.perf_counter() - t0) * 1e3
    free1, _ = _core.cuda_mem_info(0)
    del cache
    free2, _ = _core.cuda_mem_info(0)

    warm = []
    for _ in range(20):
        t0 = time.perf_counter()
        cache = kvinfer.KVCache(cfg, device="cuda:0", tracker=tracker)
        warm.append((time.perf_counter() - t0) * 1e3)
        del cache

    print(f"device: {dev['name']}, {total / 2**30:.2f} GiB")
    print(f"cache: {cfg} = {size:,} B")
    print(f"cudaMemGetInfo free before      {free0:,} B")
    print(f"cudaMemGetInfo free while held  {free1:,} B  (delta {free0 - free1:,} B)")
    print(f"cudaMemGetInfo free after free  {free2:,} B  (returned {free2 - free1:,} B; "
          f"net {free0 - free2:,} B)")
    print(f"allocate + zero, first: {first_ms:.3f} ms; warm median of 20: "
          f"{statistics.median(warm):.3f} ms (min {min(warm):.3f}, max {max(warm):.3f})")
    print(f"tracker after: {tracker.total_bytes} B in use, peak {tracker.peak_bytes:,} B")


if __name__ == "__main__":
    main()
