"""Throughput and memory of the streamed weight-bin analysis on a multi-shard model pair.

    python bench/bins_speed.py [--tensors 12] [--rows 4096] [--cols 4096] [--shards 4] [--dtype bf16]

Writes a synthetic (target, unlearned) pair as sharded safetensors, then in fresh processes (a) reads
every tensor of both models, (b) runs `bins` on them (cold, and with its compiled kernel already loaded: numba loads it from
its disk cache once per process, ~0.3 s), (c) times its two jobs apart: reading the chunks, then counting
them (the kernel uses every core, so on few cores the two cannot overlap much: the ratio with no overlap,
read / (reading + counting), is the bound this prints beside the measured one).
Prints bins throughput / plain-read throughput (goal >= 0.8) and the peak anonymous memory of the bins
process against the largest tensor (goal <= 2x). `--scheme bnb-fp4` (or bnb-nf4) measures the codebook kernel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

CHILD = r"""
import json, sys, threading, time
def anon_kb():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1])
    return 0
import torch, safetensors
from unlearn_audit.quantize import bins
peak = [0]; stop = [False]
def watch():
    while not stop[0]:
        peak[0] = max(peak[0], anon_kb()); time.sleep(0.002)
mode, t, u, scheme = sys.argv[1:5]
base = anon_kb()
th = threading.Thread(target=watch, daemon=True); th.start()
started = time.perf_counter()
load = 0.0
if mode in ('bins-warm', 'parts'):  # load the compiled kernel (numba's on-disk cache) before the clock starts
    import numpy as np
    from unlearn_audit.quantize import bins_kernel
    t0 = time.perf_counter()
    if bins_kernel.available():
        z = np.zeros((1, 128), np.uint16)
        bins_kernel.rtn_chunk_stats(z, z, 128, True, 8.0, 4, -8, 7, None)
        bins_kernel.codebook_chunk_stats(z.reshape(-1), z.reshape(-1), np.zeros(16), 0.1, None, 1, np.arange(3.0))
    load = time.perf_counter() - t0
    started = time.perf_counter()
if mode == 'read':
    for folder in (t, u):
        w = bins.ShardedWeights(folder)
        for name in w.names():
            x = w.slice(name)[:]
            x.float().sum()  # touch every value once, as the analysis does
elif mode == 'parts':  # the analysis's two jobs one after the other: reading its chunks, then counting them
    from unlearn_audit.quantize.schemes import parse_scheme
    s = parse_scheme(scheme)
    a, b = bins.open_weights(t), bins.open_weights(u)
    reading = counting = 0.0
    in_kernel = [0.0]
    def timed(compiled):  # the compiled kernel's share of the counting
        def run(*args):
            k0 = time.perf_counter()
            out = compiled(*args)
            in_kernel[0] += time.perf_counter() - k0
            return out
        return run
    bins_kernel.rtn_chunk_stats = timed(bins_kernel.rtn_chunk_stats)
    bins_kernel.codebook_chunk_stats = timed(bins_kernel.codebook_chunk_stats)
    for name in bins.select_tensors(a, b, bins.BinsOptions(), s):
        per = bins.chunk_rows(a.shape(name), s, bins.CHUNK_ELEMENTS)
        for r0 in range(0, a.shape(name)[0], per):
            t0 = time.perf_counter()
            pair = [w.rows(name, r0, r0 + per, None, keep_bf16=bins.fused(s)) for w in (a, b)]
            t1 = time.perf_counter()
            bins.tally_chunk(*pair, s, None)
            reading, counting = reading + t1 - t0, counting + time.perf_counter() - t1
    print(json.dumps({'reading': reading, 'counting': counting, 'kernel': in_kernel[0]}))
    raise SystemExit
else:
    bins.analyse(t, u, scheme)
seconds = time.perf_counter() - started
stop[0] = True; th.join()
print(json.dumps({'seconds': seconds, 'load': load, 'peak_extra_mb': (max(peak[0], anon_kb()) - base) / 1024}))
"""


def write_pair(folder: Path, n: int, rows: int, cols: int, shards: int, dtype: torch.dtype) -> int:
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(n)]
    per = (n + shards - 1) // shards
    for model in ("target", "unlearned"):
        (folder / model).mkdir(parents=True)
    for s in range(shards):
        part_t, part_u = {}, {}
        for name in names[s * per:(s + 1) * per]:
            w = torch.randn(rows, cols, generator=g) * 0.02
            part_t[name] = w.to(dtype)
            upd = torch.where(w.abs() < 0.004, w + 1e-4 * torch.sign(torch.randn(rows, cols, generator=g)), w)
            part_u[name] = upd.to(dtype)
        save_file(part_t, str(folder / "target" / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))
        save_file(part_u, str(folder / "unlearned" / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))
    return rows * cols * torch.tensor([], dtype=dtype).element_size()


def child(mode: str, folder: Path, scheme: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder / "target"), str(folder / "unlearned"),
                          scheme], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", type=int, default=12)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--scheme", default="rtn-int4-g128")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    from unlearn_audit.quantize import bins

    compiled = bins.fused(bins.parse_scheme(args.scheme))  # the two jobs are timed apart for the compiled kernels
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        largest = write_pair(folder, args.tensors, args.rows, args.cols, args.shards, dtype)
        total = 2 * args.tensors * largest
        child("read", folder, args.scheme)  # warm the page cache so both runs read from memory
        read = child("read", folder, args.scheme)
        child("bins", folder, args.scheme)  # compiles the kernel once into numba's cache, as a first `bins` run does
        analysed = child("bins", folder, args.scheme)
        warm = child("bins-warm", folder, args.scheme)
        split = child("parts", folder, args.scheme) if compiled else None
    mb = 2**20
    print(f"model pair: 2 x {args.tensors} tensors of {args.rows}x{args.cols} {args.dtype} in {args.shards} shards "
          f"({total / mb:.0f} MiB), largest tensor {largest / mb:.0f} MiB")
    print(f"read only: {read['seconds']:.2f} s ({total / mb / read['seconds']:.0f} MiB/s)")
    print(f"bins:      {analysed['seconds']:.2f} s ({total / mb / analysed['seconds']:.0f} MiB/s)")
    print(f"bins, kernel already loaded: {warm['seconds']:.2f} s (loading the compiled kernel once per process: "
          f"{warm['load']:.2f} s)")
    print(f"throughput ratio bins / read: {read['seconds'] / warm['seconds']:.2f} (goal >= 0.8); "
          f"with the one-time kernel load: {read['seconds'] / analysed['seconds']:.2f}")
    if split is None:
        print("(this scheme is analysed by the torch path, tensor by tensor as its twin resolves it: no compiled kernel)")
    else:
        both = split["reading"] + split["counting"]
        print(f"its two jobs apart (kernel loaded): reading the chunks {split['reading']:.2f} s, counting them "
              f"{split['counting']:.2f} s; the best overlap on these cores could reach "
              f"{read['seconds'] / max(split['reading'], split['counting']):.2f}x of read speed, none at all "
              f"{read['seconds'] / both:.2f}x, and bins ran at {read['seconds'] / warm['seconds']:.2f}x")
        if split["kernel"]:
            print(f"of the counting, the compiled kernel {split['kernel']:.2f} s (alone it would run at "
                  f"{read['seconds'] / split['kernel']:.2f}x of read speed), the work around it (histogram sampling, "
                  f"indexing) {split['counting'] - split['kernel']:.2f} s")
    print(f"peak extra memory of bins: {analysed['peak_extra_mb']:.0f} MiB = "
          f"{analysed['peak_extra_mb'] * mb / largest:.2f} x the largest tensor (goal <= 2)")


if __name__ == "__main__":
    main()
