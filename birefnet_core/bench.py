"""Benchmarks that print figures: ``python -m birefnet_core bench <name>``.

Each figure is the median of several timed runs after one warm-up run, with the machine named,
and the peak of temporary memory during one more run (CUDA: the caching allocator's peak; CPU:
the growth of the process's resident memory, sampled every millisecond after glibc has handed
freed memory back to the system; the timed runs run without the sampler).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import threading
import time
from typing import Callable, Iterator, List, Optional

import torch

from .ops import BACKEND_NAMES, deform_conv2d
from .ops.deform_conv import BACKENDS
from .ops.spec import check_arguments

MiB = 2**20


def machine_description(device: torch.device) -> str:
    """One line naming the machine a figure was measured on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return f"{cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores), torch {torch.__version__}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    """glibc only: hand freed heap memory back to the system, so that resident memory equals
    live memory when a measurement starts (and grows with every new allocation during it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[List[Optional[int]]]:
    """Yields a one-element list that holds, on exit, the peak bytes above the starting level
    (None where it cannot be measured)."""
    result: List[Optional[int]] = [None]
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        _synchronize(device)
        result[0] = torch.cuda.max_memory_allocated(device) - start
        return
    if device.type != "cpu" or not os.path.exists("/proc/self/statm"):
        yield result
        return
    _release_free_memory()
    start = _resident_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result[0] = max(peak[0], _resident_bytes()) - start


def measure(fn: Callable[[], object], device: torch.device, repeats: int):
    """(median seconds, peak temporary bytes) of ``fn`` after one warm-up call. The timed runs
    and the memory run are separate, so the CPU memory sampler never slows a timed run."""
    fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    with peak_memory(device) as peak:
        fn()
    return statistics.median(times), peak[0]


def bench_deform(args: argparse.Namespace) -> None:
    """The decoder's deformable convolutions at a 1024^2 input: 64 -> 256 channels, k = 1, 3, 7,
    on 256^2, 128^2, 64^2 and 32^2 maps (one per decoder stage)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name) for name in args.dtypes]
    backends = args.backends or [n for n in BACKEND_NAMES]
    print(f"deform_conv2d on {device}: {machine_description(device)}")
    print(f"median of {args.repeats} runs after a warm-up; batch {args.batch}, 64 -> 256 channels; "
          "peak = memory above the inputs during one more call, output included")
    print(f"{'backend':<12} {'dtype':<9} {'k':>2} {'map':>5} {'median ms':>10} {'peak MiB':>9}")
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        for k in args.kernels:
            for dtype in dtypes:
                x = torch.randn(args.batch, 64, size, size, generator=gen)
                offset = torch.randn(args.batch, 2 * k * k, size, size, generator=gen) * 2
                mask = 2 * torch.rand(args.batch, k * k, size, size, generator=gen)
                weight = torch.randn(256, 64, k, k, generator=gen) / (8 * k)
                x, offset, mask, weight = (t.to(device=device, dtype=dtype) for t in (x, offset, mask, weight))
                spec = check_arguments(x, offset, weight, None, 1, k // 2, 1, mask)
                for name in backends:
                    backend = BACKENDS[name]
                    if not (backend.supports(device, dtype, spec) and backend.usable(device, dtype)):
                        print(f"{name:<12} {args_dtype(dtype):<9} {k:>2} {size:>5} {'n/a':>10} {'':>9}")
                        continue

                    def run() -> torch.Tensor:
                        with torch.no_grad():
                            return deform_conv2d(x, offset, weight, None, padding=k // 2, mask=mask, backend=name)

                    seconds, peak = measure(run, device, args.repeats)
                    peak_text = f"{peak / MiB:9.0f}" if peak is not None else f"{'?':>9}"
                    print(f"{name:<12} {args_dtype(dtype):<9} {k:>2} {size:>5} {seconds * 1e3:10.1f} {peak_text}",
                          flush=True)


def args_dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def bench_model(args: argparse.Namespace) -> None:
    """The whole network (randomly initialised: speed does not depend on the values) on a
    batch at one resolution, in one dtype, under ``torch.inference_mode``."""
    from .inference import Resolution, parse_dtype
    from .models import build_model

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype, device)
    height, width = Resolution.parse(args.size).size_for(1, 1)
    model = build_model(args.backbone).to(device=device, dtype=dtype)
    x = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    print(f"BiRefNet {args.backbone} on {device}: {machine_description(device)}")

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    seconds, peak = measure(run, device, args.repeats)
    peak_text = f"{peak / MiB:.0f} MiB" if peak is not None else "not measured"
    print(f"{args.backbone} {width}x{height} batch {args.batch} {args_dtype(dtype)}: median {seconds * 1e3:.1f} ms "
          f"({seconds * 1e3 / args.batch:.1f} ms per image) over {args.repeats} runs; peak {peak_text} above the "
          "weights and input")


BENCHMARKS = {"deform": bench_deform, "model": bench_model}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")

    deform = benchmarks.add_parser("deform", help="deformable convolution backends on the decoder's shapes")
    deform.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="dtypes to time")
    deform.add_argument("--backends", nargs="+", choices=BACKEND_NAMES, help="backends (default: all)")
    deform.add_argument("--sizes", nargs="+", type=int, default=[256, 128, 64, 32], help="feature-map sides")
    deform.add_argument("--kernels", nargs="+", type=int, default=[1, 3, 7], help="kernel sizes")

    model = benchmarks.add_parser("model", help="the whole network at one resolution")
    model.add_argument("--backbone", default="swin_v1_l", help="backbone (default swin_v1_l)")
    model.add_argument("--size", default="1024", help="N (square) or WxH, multiples of 32 (default 1024)")
    model.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")

    for sub, repeats in ((deform, 5), (model, 3)):
        sub.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
        sub.add_argument("--batch", type=int, default=1, help="batch size")
        sub.add_argument("--repeats", type=int, default=repeats, help="timed runs (the median is printed)")
        sub.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> None:
    BENCHMARKS[args.benchmark](args)
