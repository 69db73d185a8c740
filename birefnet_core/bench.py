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
import gc
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from .cli import one_line
from .files import atomic_output
from .inference import OUT_OF_MEMORY, cpu_model_name
from .ops import BACKEND_NAMES, deform_conv2d
from .ops.deform_conv import BACKENDS
from .ops.spec import check_arguments
from .streaming import STREAMING_ENV

MiB = 2**20


def machine_description(device: torch.device) -> str:
    """One line naming the machine a figure was measured on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"{cpu_model_name()}, {torch.get_num_threads()} threads ({os.cpu_count()} cores), torch {torch.__version__}"


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


# one ASPP block of the decoder: deformable convolutions 64 -> 256 channels, k = 1 (twice), 3, 7
DECODER_CALLS_PER_BLOCK = {1: 2, 3: 1, 7: 1}
# decoder blocks per feature-map side at a 1024^2 input (the squeeze block and block 4 share 32^2)
DECODER_BLOCKS_AT_1024 = {32: 2, 64: 1, 128: 1, 256: 1}


class DeformCase:
    """Random arguments of one decoder deformable convolution (64 -> 256 channels, k x k,
    padding k // 2, a size x size map), on ``device`` in ``dtype``."""

    def __init__(self, batch: int, size: int, k: int, dtype: torch.dtype, device: torch.device,
                 gen: torch.Generator, in_channels: int = 64, out_channels: int = 256) -> None:
        x = torch.randn(batch, in_channels, size, size, generator=gen)
        offset = torch.randn(batch, 2 * k * k, size, size, generator=gen) * 2
        mask = 2 * torch.rand(batch, k * k, size, size, generator=gen)
        weight = torch.randn(out_channels, in_channels, k, k, generator=gen) / (8 * k)
        self.x, self.offset, self.mask, self.weight = (t.to(device=device, dtype=dtype)
                                                       for t in (x, offset, mask, weight))
        self.k, self.size, self.dtype, self.device = k, size, dtype, device
        self.spec = check_arguments(self.x, self.offset, self.weight, None, 1, k // 2, 1, self.mask)

    def run(self, backend: str) -> torch.Tensor:
        with torch.no_grad():
            return deform_conv2d(self.x, self.offset, self.weight, None, padding=self.k // 2, mask=self.mask,
                                 backend=backend)


def backend_runs(name: str, case: DeformCase) -> bool:
    """Whether backend ``name`` itself (not a fall-back) computes ``case``."""
    backend = BACKENDS[name]
    return backend.supports(case.device, case.dtype, case.spec) and backend.usable(case.device, case.dtype)


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
                case = DeformCase(args.batch, size, k, dtype, device, gen)
                for name in backends:
                    if not backend_runs(name, case):
                        print(f"{name:<12} {args_dtype(dtype):<9} {k:>2} {size:>5} {'n/a':>10} {'':>9}")
                        continue
                    seconds, peak = measure(lambda: case.run(name), device, args.repeats)
                    peak_text = f"{peak / MiB:9.0f}" if peak is not None else f"{'?':>9}"
                    print(f"{name:<12} {args_dtype(dtype):<9} {k:>2} {size:>5} {seconds * 1e3:10.1f} {peak_text}",
                          flush=True)


def args_dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def bench_model(args: argparse.Namespace) -> None:
    """The whole network (randomly initialised: speed does not depend on the values) on a
    batch at one resolution, in one dtype, under ``torch.inference_mode``. BiRefNet runs at the
    size given; FOCUS at that size padded to multiples of 32 (default 704x512: a 4:3 photo at
    its test-time short side 512). Wall and CPU time per run are both printed (median)."""
    from .inference import Resolution, parse_dtype
    from .models import build_model
    from .models.families import family_of_architecture

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype, device)
    family = family_of_architecture(args.backbone)
    if family is None:
        from .models.families import architecture_names

        raise ValueError(f"unknown model {args.backbone!r}; choose one of {', '.join(architecture_names())}")
    size = args.size or ("704x512" if family.name == "focus" else "1024")
    height, width = Resolution.parse(size).size_for(1, 1)
    model = build_model(args.backbone).to(device=device, dtype=dtype)
    x = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device=device)
    # BiRefNet takes its input in its dtype; FOCUS takes float32 (its edge input is computed from it)
    x = x.to(dtype) if family.name == "birefnet" else x
    print(f"{family.title} {args.backbone} on {device}: {machine_description(device)}; "
          f"{torch.get_num_threads()} CPU threads")

    cpu_times: List[float] = []

    def run() -> object:
        start = time.process_time()
        with torch.inference_mode():
            out = model(x)
        cpu_times.append(time.process_time() - start)
        return out

    seconds, peak = measure(run, device, args.repeats)
    cpu = statistics.median(cpu_times[1:1 + args.repeats])  # the timed runs (not the warm-up or memory run)
    peak_text = f"{peak / MiB:.0f} MiB" if peak is not None else "not measured"
    print(f"{args.backbone} {width}x{height} batch {args.batch} {args_dtype(dtype)}: median {seconds * 1e3:.1f} ms "
          f"({seconds * 1e3 / args.batch:.1f} ms per image), CPU time {cpu:.1f} s, over {args.repeats} runs; "
          f"peak {peak_text} above the weights and input")


def _official_blur_fusion(image: torch.Tensor, alpha: torch.Tensor, radii=(90, 6)) -> torch.Tensor:
    """The official torch form for comparison: replicate padding + avg_pool2d(r x r), O(r^2) per
    pixel (padded r // 2 before and (r - 1) // 2 after: OpenCV's anchor, the same as box_blur's)."""
    import torch.nn.functional as F

    def blur(x: torch.Tensor, r: int) -> torch.Tensor:
        x = F.pad(x, (r // 2, (r - 1) // 2, r // 2, (r - 1) // 2), mode="replicate")
        return F.avg_pool2d(x, r, stride=1)

    fg, bg = image, image
    for r in radii:
        a = blur(alpha, r)
        fb = blur(fg * alpha, r) / (a + 1e-5)
        bb = blur(bg * (1 - alpha), r) / (1 - a + 1e-5)
        fg, bg = (fb + alpha * (image - alpha * fb - (1 - alpha) * bb)).clamp(0, 1), bb
    return fg


def bench_matting(args: argparse.Namespace) -> None:
    """Matte refinement: quality on the synthetic scene (known alpha, foreground, background)
    and the speed and memory of foreground estimation (blur-fusion, multi-level) and guided
    alpha refinement."""
    from . import matting
    from .synthetic_matte import degrade_alpha, foreground_error, gradient_error, make_scene, sad

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"matting on {device}: {machine_description(device)}")

    # (1) quality
    size = args.size
    image, alpha, fg_true, _ = make_scene(size, seed=args.seed, device=device)
    raw = degrade_alpha(alpha)
    band = (alpha > 0.05) & (alpha < 0.95)
    sigma = 2.0 * size / 1024
    print(f"scene: synthetic {size}x{size}, seed {args.seed}; band 0.05 < alpha < 0.95: {int(band.sum())} px "
          f"({100 * band.float().mean().item():.1f} %); raw alpha = true alpha Gaussian-blurred "
          f"(sigma {sigma:.1f} px) and quantised to 16 levels (a stand-in for a network's mask)")
    radius = matting.default_guided_radius(size, size)
    width = matting.band_width_for(size, size)
    refined = matting.refine_alpha(image, raw)
    alphas = {"true": alpha, "raw": raw, "refined": refined}
    print("foreground colour error: alpha-weighted MSE in the band, sum(a |F - F*|^2 / 3) / sum(a) over band "
          "pixels (true a), x 1e-3; columns: the alpha the estimator is given")
    print(f"{'method':<26} {'true alpha':>11} {'raw alpha':>10} {'refined':>10}")
    naive = foreground_error(image, fg_true, alpha)
    print(f"{'naive (F = image)':<26} {naive * 1e3:11.3f} {naive * 1e3:10.3f} {naive * 1e3:10.3f}")
    estimators = {"blur-fusion (90, 6)": lambda a: matting.estimate_foreground(image, a, radii=(90, 6)),
                  "multi-level (Germer)": lambda a: matting.estimate_foreground_ml(image, a)}
    errors = {}
    for method, estimate in estimators.items():
        errors[method] = {name: foreground_error(estimate(a), fg_true, alpha) for name, a in alphas.items()}
        e = errors[method]
        print(f"{method:<26} {e['true'] * 1e3:11.3f} {e['raw'] * 1e3:10.3f} {e['refined'] * 1e3:10.3f}")
    for method, e in errors.items():
        print(f"{method} vs naive: {naive / e['true']:.1f}x lower error with the true alpha, "
              f"{naive / e['raw']:.1f}x with the raw alpha, {naive / e['refined']:.1f}x with the refined alpha")
    print("alpha error vs the true alpha: SAD = sum |a - a*| / 1e3; GRAD = sum over pixels of "
          "(dx(a - a*))^2 + (dy(a - a*))^2 with forward differences, / 1e3")
    print(f"{'alpha':<58} {'SAD':>8} {'GRAD':>8}")
    print(f"{'raw (degraded)':<58} {sad(raw, alpha):8.3f} {gradient_error(raw, alpha):8.3f}")
    label = f"guided refinement, defaults (r {radius}, eps 1e-4, band {width} px)"
    print(f"{label:<58} {sad(refined, alpha):8.3f} {gradient_error(refined, alpha):8.3f}")
    wide = matting.refine_alpha(image, raw, radius=3 * radius)
    label = f"guided refinement (r {3 * radius}, eps 1e-4, band {width} px)"
    print(f"{label:<58} {sad(wide, alpha):8.3f} {gradient_error(wide, alpha):8.3f}")

    # (2) speed and memory
    gen = torch.Generator().manual_seed(0)
    side = args.speed_size
    x = torch.rand(args.batch, 3, side, side, generator=gen).to(device)
    a = torch.rand(args.batch, 1, side, side, generator=gen).to(device)
    for name, fn in (("blur-fusion (90, 6), both passes", lambda: matting.estimate_foreground(x, a)),
                     ("multi-level (Germer)", lambda: matting.estimate_foreground_ml(x, a)),
                     ("guided refinement (defaults)", lambda: matting.refine_alpha(x, a))):
        with torch.no_grad():
            seconds, peak = measure(fn, device, args.repeats)
        peak_text = f" (peak {peak / MiB:.0f} MiB)" if peak is not None else ""
        print(f"{name} {side}x{side} batch {args.batch} float32: median {seconds * 1e3:.1f} ms over "
              f"{args.repeats} runs{peak_text}")
    if args.reference:
        start = time.perf_counter()
        with torch.no_grad():
            ref = _official_blur_fusion(x, a)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        ours = matting.estimate_foreground(x, a)
        inner = (slice(None), slice(None), slice(48, -48), slice(48, -48))
        print(f"official form (replicate pad + avg_pool2d r x r) {side}x{side}: {elapsed:.2f} s, one run; "
              f"max |difference| {float((ref - ours)[inner].abs().max()):.1e} away from the borders")
    side = args.memory_size
    if side:
        x = torch.rand(1, 3, side, side, generator=gen).to(device)
        a = torch.rand(1, 1, side, side, generator=gen).to(device)
        inputs = (x.numel() + a.numel()) * x.element_size() / MiB
        for name, fn in (("blur-fusion (90, 6)", matting.estimate_foreground),
                         ("multi-level (Germer)", matting.estimate_foreground_ml)):
            with torch.no_grad():
                with peak_memory(device) as peak:
                    start = time.perf_counter()
                    fn(x, a)
                    _synchronize(device)
                    elapsed = time.perf_counter() - start
            peak_text = f"{peak[0] / MiB:.0f} MiB" if peak[0] is not None else "not measured"
            print(f"{name} {side}x{side} float32: {elapsed:.2f} s (one run); peak {peak_text} above the inputs "
                  f"({inputs:.0f} MiB), output included")


def _frame_size(text: str):
    """"N" -> (N, N); "WxH" -> (H, W)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[1]), int(parts[0])
    raise ValueError(f"frame size must be N or WxH, got {text!r}")


def _load_average() -> str:
    """The 1-minute load average (other processes on a shared machine slow the timings)."""
    with contextlib.suppress(OSError, AttributeError):
        return f"{os.getloadavg()[0]:.1f}"
    return "?"


def bench_video(args: argparse.Namespace) -> None:
    """Video: (a) temporal quality of the smoothing on a synthetic clip with a known alpha and
    per-frame errors; (b) frames per second and peak memory of ``matte_frames`` with a real
    (randomly initialised) network at two frame sizes; (c) peak memory per output set (mask,
    RGBA, composite, all three) in float32 and float16, measured, with the figure for 300 frames
    of 1080p beside it."""
    from .video import OUTPUT_NAMES, TemporalSmoother, VideoOutputs, matte_frames, parse_strength

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"video on {device}: {machine_description(device)}")

    if "quality" in args.parts:
        from .synthetic_video import (dtssd, excess_flicker, flicker, mad, make_clip, motion_kinds, moving_region,
                                      noisy_predictions)

        start = time.perf_counter()
        frames, alpha = make_clip(args.frames, args.size, seed=args.seed)
        pred = noisy_predictions(alpha, seed=args.seed)
        moving = moving_region(alpha)
        fast = torch.tensor([k.startswith("fast") for k in motion_kinds(args.frames)]).view(-1, 1, 1)
        moving_fast = moving & fast
        soft = ((alpha > 0.02) & (alpha < 0.98)).float().mean().item()
        print(f"(a) quality: synthetic clip, {args.frames} frames {args.size}x{args.size}, seed {args.seed} "
              f"(generated in {time.perf_counter() - start:.1f} s): a soft blob with thin fractional strands "
              f"(0.02 < alpha < 0.98 on {100 * soft:.1f} % of pixels) drifting, rotating and swaying over a "
              "panning texture, two bursts of fast motion, sensor noise s.d. 0.01")
        print("predictions: a model of per-frame network errors (not a network): the true alpha independently "
              "warped by ~0.5 px, blurred, its soft levels and soft regions perturbed, occasional blotches")
        print(f"moving region: true alpha changed > 0.02 within the last 3 frames, grown 1 px: "
              f"{100 * moving.float().mean().item():.1f} % of pixels; 'fast' = its part in the "
              f"{int(fast.sum())} fast-motion frames (where lag would leave ghosts)")
        print(f"flicker of the true alpha: {flicker(alpha) * 1e3:.2f} (x 1e-3, all pixels), "
              f"{flicker(alpha, moving) * 1e3:.2f} (moving region); per-frame predictions: "
              f"{flicker(pred) * 1e3:.2f}, {flicker(pred, moving) * 1e3:.2f}")
        print("excess flicker = flicker(smoothed) - flicker(true), x 1e-3 (negative = changes less than the "
              "truth: lag); dtSSD x 1e2 (RVM, mean over t >= 1); MAD x 1e3")
        print(f"{'smoothing':<34} {'all pixels':^26} {'moving region':^26} {'fast':>7}")
        print(f"{'':<34} {'exc.flick':>9} {'dtSSD':>7} {'MAD':>8} {'exc.flick':>9} {'dtSSD':>7} {'MAD':>8} "
              f"{'MAD':>7}")
        cases = [(f"{s} ({parse_strength(s):g})" if str(s).strip().lower() in ("off", "light", "strong") else
                  str(s), TemporalSmoother(s, motion_full=args.motion_full, motion_window=args.motion_window))
                 for s in args.strengths]
        reference = parse_strength(args.strengths[-1]) if args.strengths else 0.7
        if reference > 0:
            cases.append((f"{reference:g}, no motion gate (plain EMA)",
                          TemporalSmoother(reference, motion_full=1e9, motion_window=args.motion_window)))
        for label, smoother in cases:
            out = smoother(frames, pred)
            print(f"{label:<34} {excess_flicker(out, alpha) * 1e3:9.2f} {dtssd(out, alpha):7.3f} "
                  f"{mad(out, alpha):8.2f} {excess_flicker(out, alpha, moving) * 1e3:9.2f} "
                  f"{dtssd(out, alpha, moving):7.3f} {mad(out, alpha, moving):8.2f} "
                  f"{mad(out, alpha, moving_fast):7.2f}", flush=True)
        print(f"smoother settings: motion_full {args.motion_full:g}, motion_window {args.motion_window}")

    if "speed" in args.parts:
        from .inference import Predictor
        from .models import build_model

        print(f"(b) throughput: matte_frames (network at {args.resolution}, chunks of {args.batch} frames, "
              f"smoothing {args.smoothing}), frames float32 [N, H, W, 3] on the CPU as ComfyUI passes them; "
              f"randomly initialised weights (speed does not depend on the values); median of {args.repeats} "
              "timed run(s) after a warm-up run; peak = memory above the frames and weights during one more "
              "run, the outputs (mask, RGBA, composite) included")
        if device.type == "cpu":
            print(f"CPU defaults are small ({args.count} frames, network {args.resolution}) so that this part "
                  "finishes in a few minutes; figures are measured, not extrapolated")
        gen = torch.Generator().manual_seed(0)
        for backbone in args.backbone:
            model = build_model(backbone).to(device)
            predictor = Predictor(model, resolution=args.resolution, batch_size=args.batch)
            for text in args.frame_sizes:
                h, w = _frame_size(text)
                clip = torch.rand(args.count, h, w, 3, generator=gen)
                outputs_mib = args.count * h * w * 8 * 4 / MiB

                def run() -> object:
                    return matte_frames(predictor, clip, smoother=TemporalSmoother(args.smoothing))

                load_before = _load_average()
                seconds, peak = measure(run, device, args.repeats)
                peak_text = f"{peak / MiB:.0f} MiB" if peak is not None else "not measured"
                print(f"{backbone} {w}x{h}, {args.count} frames: {seconds:.2f} s, {args.count / seconds:.2f} "
                      f"frames/s ({seconds * 1e3 / args.count:.0f} ms per frame); peak {peak_text} "
                      f"(outputs {outputs_mib:.0f} MiB, input frames {clip.numel() * 4 / MiB:.0f} MiB); "
                      f"1-min load average {load_before} -> {_load_average()}", flush=True)
            del model, predictor

    if "memory" in args.parts:
        from .inference import Predictor
        from .models import build_model

        def available_bytes() -> Optional[int]:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                with open("/proc/meminfo") as f:
                    return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
            return None

        h, w = _frame_size(args.memory_size)
        n = args.memory_frames
        input_dtype = {"float32": torch.float32, "uint8": torch.uint8}[args.memory_input]
        gen = torch.Generator().manual_seed(0)
        clip = torch.empty(n, h, w, 3, dtype=input_dtype)
        for start in range(0, n, 8):  # filled in pieces: no float32 copy of a whole uint8 clip
            piece = torch.rand(min(8, n - start), h, w, 3, generator=gen)
            clip[start:start + len(piece)] = piece if input_dtype == torch.float32 else (piece * 255).round()
        GB = 1e9
        model = build_model(args.memory_backbone).to(device)
        predictor = Predictor(model, resolution=args.memory_resolution, batch_size=args.batch)
        print(f"(c) memory per output set: matte_frames on {n} frames {w}x{h} ({args.memory_input} [N, H, W, 3], "
              f"{clip.numel() * clip.element_size() / GB:.2f} GB, made before and not counted), "
              f"{args.memory_backbone} at network {args.memory_resolution}, chunks of {args.batch}, smoothing "
              f"{args.smoothing}; peak = growth of the process's "
              + ("resident memory (sampled every ms)" if device.type == "cpu" else "device memory")
              + " during one run; working set = peak - outputs; GB = 1e9 bytes. Last column: the outputs of 300 "
              "frames of 1920x1080 plus the working set measured here (it does not grow with the length)")
        print(f"{'outputs':<24} {'dtype':<8} {'outputs':>9} {'peak':>9} {'working set':>12} {'300 x 1080p':>12}")
        matte_frames(predictor, clip[:2], smoother=TemporalSmoother(args.smoothing))  # warm-up: lazy set-up
        sets = [OUTPUT_NAMES if name == "all" else (name,) for name in args.memory_outputs]
        for dtype in (getattr(torch, name) for name in args.memory_dtypes):
            for which in sets:
                label, dtype_name = "+".join(which), str(dtype).replace("torch.", "")
                outputs_bytes = VideoOutputs.nbytes_for(n, h, w, which=which, dtype=dtype)
                full_bytes = VideoOutputs.nbytes_for(300, 1080, 1920, which=which, dtype=dtype)
                free = available_bytes()
                if device.type == "cpu" and free is not None and outputs_bytes + 2**30 > free:
                    print(f"{label:<24} {dtype_name:<8} {outputs_bytes / GB:8.2f}G  skipped: needs the outputs + "
                          f"1 GiB, {free / GB:.1f} GB available", flush=True)
                    continue
                start = time.perf_counter()
                with peak_memory(device) as peak:  # the outputs live until the call returns, then go
                    matte_frames(predictor, clip, smoother=TemporalSmoother(args.smoothing), which=which, dtype=dtype)
                seconds = time.perf_counter() - start
                gc.collect()
                if peak[0] is None:
                    print(f"{label:<24} {dtype_name:<8} {outputs_bytes / GB:8.2f}G  peak not measured on {device}")
                    continue
                working = peak[0] - outputs_bytes
                print(f"{label:<24} {dtype_name:<8} {outputs_bytes / GB:8.2f}G {peak[0] / GB:8.2f}G "
                      f"{working / MiB:9.0f} MiB {(full_bytes + max(working, 0)) / GB:11.2f}G   ({seconds:.0f} s)",
                      flush=True)
        del model, predictor, clip


# ------------------------------------------------------------------------------ bench gpu

GPU_PARTS = ("model", "deform", "video", "train", "focus", "compile")
GPU_REFUSAL = "bench gpu needs a CUDA device; use --device cpu --quick for a smoke run"
# the goals, for an H100/H200 (checked only in full runs on CUDA)
GOAL_SWIN_L_BATCH_1_MS = 25.0
GOAL_SWIN_L_BATCH_8_MS = 15.0
GOAL_VIDEO_FPS = 30.0


@dataclass
class GpuSettings:
    """Sizes of one ``bench gpu`` run: the full one for a GPU, or ``--quick`` (a smoke run)."""

    device: torch.device
    quick: bool
    repeats: int
    warmups: int  # calls before ``measure``'s own warm-up (GPU clocks, autotuning, lazy loading)
    model_backbones: Tuple[str, ...]
    model_size: int
    model_dtypes: Tuple[torch.dtype, ...]
    model_batches: Tuple[int, ...]
    deform_sizes: Tuple[int, ...]
    deform_kernels: Tuple[int, ...]
    deform_dtypes: Tuple[torch.dtype, ...]
    video_backbone: str
    video_frame: Tuple[int, int]  # (H, W)
    video_resolution: int
    video_count: int
    video_batch: int
    video_dtype: torch.dtype
    video_repeats: int
    train_backbones: Tuple[str, ...]
    train_size: int
    train_batch: int
    train_steps: int
    focus_models: Tuple[object, ...]  # FOCUS preset names or FocusConfig (the smoke run's small model)
    focus_image: Tuple[int, int]  # (H, W) of the resized image; the network runs on it padded to /32
    focus_batches: Tuple[int, ...]
    focus_dtype: torch.dtype
    focus_repeats: int

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "GpuSettings":
        device = torch.device(args.device)
        half = (torch.bfloat16, torch.float16)
        if args.quick:
            # float16 on a CPU is emulated (seconds per 128^2 image): the CPU smoke run uses bfloat16,
            # and float32 for the deformable convolution (the dtype every backend has there)
            on_cuda = device.type == "cuda"
            from .models.focus.config import FocusConfig

            small_focus = FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4)
            settings = cls(device, True, repeats=2, warmups=0,
                           model_backbones=("swin_v1_t",), model_size=128,
                           model_dtypes=half if on_cuda else (torch.bfloat16,), model_batches=(1, 2),
                           deform_sizes=(16,), deform_kernels=(1, 3, 7),
                           deform_dtypes=half if on_cuda else (torch.float32, torch.bfloat16),
                           video_backbone="swin_v1_t", video_frame=(128, 160), video_resolution=128, video_count=4,
                           video_batch=2, video_dtype=torch.bfloat16, video_repeats=1,
                           train_backbones=("pvt_v2_b0", "swin_v1_t"), train_size=128, train_batch=2, train_steps=1,
                           focus_models=(small_focus,), focus_image=(96, 128), focus_batches=(1,),
                           focus_dtype=torch.bfloat16, focus_repeats=2)
        else:
            settings = cls(device, False, repeats=10, warmups=2,
                           model_backbones=("swin_v1_l", "swin_v1_t"), model_size=1024, model_dtypes=half,
                           model_batches=(1, 8),
                           deform_sizes=tuple(DECODER_BLOCKS_AT_1024), deform_kernels=tuple(DECODER_CALLS_PER_BLOCK),
                           deform_dtypes=half,
                           video_backbone="swin_v1_t", video_frame=(1080, 1920), video_resolution=1024,
                           video_count=48, video_batch=8, video_dtype=torch.bfloat16, video_repeats=2,
                           train_backbones=("pvt_v2_b0", "swin_v1_t"), train_size=1024, train_batch=4, train_steps=5,
                           # assumed on an H200 in bfloat16: FOCUS-L 30-60 ms per image, G about 3x that;
                           # 5 timed runs (+ 2 + 1 warm-ups and 1 memory run) of batches 1 and 8 of both
                           # are then 15-30 s, the models' building on the device a few seconds more
                           focus_models=("focus_dinov2_l", "focus_dinov2_g"), focus_image=(512, 683),
                           focus_batches=(1, 8), focus_dtype=torch.bfloat16, focus_repeats=5)
        if args.repeats:
            settings.repeats = settings.video_repeats = settings.train_steps = settings.focus_repeats = args.repeats
        return settings


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_mib(device: torch.device, measured: Optional[int]) -> Optional[float]:
    """CUDA: the allocator's peak of the last measured run (weights and inputs included, as
    ``measure`` resets the statistics before it); elsewhere the growth ``measure`` saw."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MiB
    return None if measured is None else measured / MiB


class GpuTable:
    """The one table of ``bench gpu``: each row printed when it is done and the JSON file
    rewritten (atomically), so a run stopped half-way keeps the rows it finished."""

    COLUMNS = f"{'part':<7} {'case':<52} {'dtype':<9} {'batch':>5} {'result':>18} {'peak MiB':>9}  goal"

    def __init__(self, json_path: Optional[Path], header: dict) -> None:
        self.json_path, self.header, self.rows = json_path, header, []

    @property
    def device(self) -> torch.device:
        return torch.device(self.header["device"])

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(self.format(row), flush=True)
        self.write()

    @contextlib.contextmanager
    def row(self, part: str, case: str, *, dtype: Optional[torch.dtype] = None, batch: Optional[int] = None,
            unit: str = "", goal: Optional[Tuple[str, float]] = None) -> Iterator[dict]:
        """Yields the row to fill in (``value``, ``peak_mib``, ``note``); whatever the block raises
        (out of memory included) becomes the row's error and the table goes on."""
        row = {"part": part, "case": case, "dtype": args_dtype(dtype) if dtype is not None else None,
               "batch": batch, "value": None, "unit": unit, "peak_mib": None, "goal": None, "goal_met": None,
               "note": None, "error": None}
        out_of_memory = False
        try:
            yield row
        except OUT_OF_MEMORY as exc:
            row["error"] = f"out of memory: {one_line(exc)}"
            out_of_memory = True
        except Exception as exc:  # noqa: BLE001 - one failing row must not stop the table
            row["error"] = f"{type(exc).__name__}: {one_line(exc)}"
        if out_of_memory:  # outside the except block: its traceback no longer holds the tensors
            _free_device_memory(self.device)
        if goal is not None and row["value"] is not None and row["error"] is None:
            sense, target = goal
            row["goal"] = f"{sense} {target:g} {unit}"
            row["goal_met"] = row["value"] <= target if sense == "<=" else row["value"] >= target
        self.add(row)

    def part_failed(self, part: str, exc: BaseException) -> None:
        self.add({"part": part, "case": "(the whole part)", "dtype": None, "batch": None, "value": None, "unit": "",
                  "peak_mib": None, "goal": None, "goal_met": None, "note": None,
                  "error": f"{type(exc).__name__}: {one_line(exc)}"})

    @staticmethod
    def format(row: dict) -> str:
        if row["error"] is not None:
            result = f"error: {row['error']}"
        elif row["value"] is None:
            result = f"n/a: {row['note']}" if row["note"] else "n/a"
        else:
            value = row["value"]
            result = f"{value:.0f} {row['unit']}" if value >= 100 else f"{value:.3g} {row['unit']}"
        peak = f"{row['peak_mib']:9.0f}" if row["peak_mib"] is not None else f"{'':>9}"
        line = (f"{row['part']:<7} {row['case']:<52} {row['dtype'] or '':<9} "
                f"{'' if row['batch'] is None else row['batch']:>5} ")
        if row["error"] is not None or row["value"] is None:
            return line + result
        goal = ""
        if row["goal"] is not None:
            goal = f"  {row['goal'].replace('<=', '≤').replace('>=', '≥')}: {'met' if row['goal_met'] else 'MISSED'}"
        note = f"  ({row['note']})" if row["note"] else ""
        return f"{line}{result:>18} {peak}{goal}{note}"

    def write(self) -> None:
        if self.json_path is None:
            return
        with atomic_output(self.json_path) as partial:
            partial.write_text(json.dumps({**self.header, "rows": self.rows}, indent=1) + "\n")

    @property
    def failures(self) -> int:
        return sum(row["error"] is not None for row in self.rows)


def _gpu_model(table: GpuTable, s: GpuSettings) -> None:
    """The whole network on random input, randomly initialised (speed does not depend on the
    values): median latency per image, peak memory."""
    from .models import build_model

    for backbone in s.model_backbones:
        for dtype in s.model_dtypes:
            model = None
            for batch in s.model_batches:
                goal = None
                if backbone == "swin_v1_l" and dtype == torch.bfloat16 and s.model_size == 1024:
                    goal = ("<=", GOAL_SWIN_L_BATCH_1_MS if batch == 1 else GOAL_SWIN_L_BATCH_8_MS)
                with table.row("model", f"{backbone} {s.model_size}x{s.model_size}", dtype=dtype, batch=batch,
                               unit="ms/image", goal=goal) as row:
                    if model is None:
                        model = build_model(backbone).eval().to(device=s.device, dtype=dtype)
                    x = torch.randn(batch, 3, s.model_size, s.model_size, device=s.device, dtype=dtype)
                    _time_forward(row, model, x, s, s.repeats)
            model = x = None  # freed before the next model is built
            _free_device_memory(s.device)


def _time_forward(row: dict, model: torch.nn.Module, x: torch.Tensor, s: GpuSettings, repeats: int) -> None:
    """``row``'s value (median ms per image of ``model(x)`` after the warm-ups) and peak memory."""

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    for _ in range(s.warmups):
        run()
    seconds, peak = measure(run, s.device, repeats)
    row["value"] = seconds * 1e3 / x.shape[0]
    row["peak_mib"] = _peak_mib(s.device, peak)


def _gpu_deform(table: GpuTable, s: GpuSettings) -> None:
    """Every deformable-convolution backend on the decoder's shapes (batch 1), and per backend
    and dtype the decoder's total at a 1024^2 input (its 20 calls)."""
    gen = torch.Generator().manual_seed(0)
    totals: dict = {}
    for dtype in s.deform_dtypes:
        for size in s.deform_sizes:
            for k in s.deform_kernels:
                case = DeformCase(1, size, k, dtype, s.device, gen)
                for name in BACKEND_NAMES:
                    with table.row("deform", f"{name} k={k} map {size}x{size} 64->256", dtype=dtype, batch=1,
                                   unit="ms") as row:
                        if not backend_runs(name, case):
                            row["note"] = f"not available on {s.device.type} {args_dtype(dtype)}"
                            continue
                        if name == "triton" and s.device.type != "cuda":
                            row["note"] = "Triton's interpreter (TRITON_INTERPRET=1): not timed"
                            continue
                        for _ in range(s.warmups):
                            case.run(name)
                        seconds, peak = measure(lambda: case.run(name), s.device, s.repeats)
                        row["value"] = seconds * 1e3
                        row["peak_mib"] = _peak_mib(s.device, peak)
                        calls = DECODER_BLOCKS_AT_1024.get(size, 0) * DECODER_CALLS_PER_BLOCK.get(k, 0)
                        totals.setdefault((name, dtype), []).append(calls * row["value"])
        for name in BACKEND_NAMES:
            measured = totals.get((name, dtype), [])
            if len(measured) == len(DECODER_BLOCKS_AT_1024) * len(DECODER_CALLS_PER_BLOCK):
                with table.row("deform", f"{name}: decoder total at 1024x1024 (20 calls)", dtype=dtype, batch=1,
                               unit="ms") as row:
                    row["value"] = sum(measured)


def _gpu_video(table: GpuTable, s: GpuSettings) -> None:
    """``matte_frames`` + ``Predictor`` on a clip of random frames, float32 [N, H, W, 3] on the
    CPU as ComfyUI passes them (outputs written back there), with and without smoothing and
    foreground estimation; on CUDA also with frames and outputs on the GPU."""
    from .inference import Predictor
    from .matting import MatteOptions
    from .models import build_model
    from .video import TemporalSmoother, VideoOutputs, matte_frames

    h, w = s.video_frame
    model = build_model(s.video_backbone).to(s.device)
    predictor = Predictor(model, resolution=s.video_resolution, batch_size=s.video_batch, dtype=s.video_dtype)
    clip = torch.rand(s.video_count, h, w, 3, generator=torch.Generator().manual_seed(0))
    full = not s.quick and (h, w) == (1080, 1920) and s.video_backbone == "swin_v1_t"
    goal = (">=", GOAL_VIDEO_FPS) if full else None
    # blur-fusion is the pack's own box filter: it needs no kornia (only the guided filter does)
    cases = [("no smoothing", None, None, False),
             ("smoothing light", "light", None, False),
             ("light + fg blur_fusion", "light", MatteOptions(foreground="blur_fusion"), False)]
    if s.device.type == "cuda":
        cases.append(("light, frames on the GPU", "light", None, True))
        cases.append(("light, copies not overlapped", "light", None, "plain"))
    for label, smoothing, matte, on_device in cases:
        # "plain": BIREFNET_STREAMING=0, what the upload-ahead / download-behind overlap gains
        saved = os.environ.get(STREAMING_ENV)
        if on_device == "plain":
            os.environ[STREAMING_ENV], on_device = "0", False
        with table.row("video", f"{s.video_backbone} {w}x{h} net {s.video_resolution}, {label}", dtype=s.video_dtype,
                       batch=s.video_batch, unit="frames/s", goal=goal) as row:
            frames = clip.to(s.device) if on_device else clip

            def run() -> object:
                outputs = VideoOutputs.allocate(s.video_count, h, w, device=s.device) if on_device else None
                return matte_frames(predictor, frames, outputs=outputs, matte=matte,
                                    smoother=TemporalSmoother(smoothing) if smoothing else None)

            seconds, peak = measure(run, s.device, s.video_repeats)
            row["value"] = s.video_count / seconds
            row["peak_mib"] = _peak_mib(s.device, peak)
            frames = None
        if saved is None:
            os.environ.pop(STREAMING_ENV, None)
        else:
            os.environ[STREAMING_ENV] = saved
    model = predictor = None
    _free_device_memory(s.device)


def _write_tiny_dataset(root: Path, count: int) -> None:
    """``count`` 64x64 image/mask pairs: the trainer needs a dataset to start; the timed steps
    run on random tensors of the benchmark's size."""
    from PIL import Image

    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        image = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        mask = ((torch.rand(64, 64, generator=gen) > 0.5) * 255).to(torch.uint8).numpy()
        Image.fromarray(image).save(root / "im" / f"{i}.png")
        Image.fromarray(mask).save(root / "gt" / f"{i}.png")


def _gpu_train(table: GpuTable, s: GpuSettings) -> None:
    """The real training step (``Trainer._train_step``: forward under bfloat16 autocast, the DIS
    recipe's losses, backward, AdamW) on random batches already on the device: images/s."""
    import tempfile

    from .train import distributed
    from .train.trainer import TrainConfig, Trainer

    gen = torch.Generator().manual_seed(0)
    size, batch = s.train_size, s.train_batch
    for backbone in s.train_backbones:
        with table.row("train", f"{backbone} {size}x{size}, bf16 autocast, AdamW", dtype=torch.bfloat16, batch=batch,
                       unit="images/s") as row, tempfile.TemporaryDirectory() as tmp:
            _write_tiny_dataset(Path(tmp) / "data", batch)
            cfg = TrainConfig(data=[str(Path(tmp) / "data")], out=str(Path(tmp) / "run"), backbone=backbone,
                              size=(size, size), batch_size=batch, precision="bf16", workers=0, progress=False,
                              tensorboard=False, augment=("none",))
            trainer = Trainer(cfg, distributed.Context(device=s.device))
            x = torch.rand(batch, 3, size, size, generator=gen).to(s.device)
            y = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(s.device)

            def step() -> None:
                trainer._train_step(x, y, trainer.base_weights)

            for _ in range(1 + s.warmups):
                step()
            _synchronize(s.device)
            with peak_memory(s.device) as peak:
                start = time.perf_counter()
                for _ in range(s.train_steps):
                    step()
                _synchronize(s.device)
                seconds = time.perf_counter() - start
            row["value"] = batch * s.train_steps / seconds
            row["peak_mib"] = _peak_mib(s.device, peak[0])
            trainer = x = y = None  # freed before the next backbone's trainer is built
        _free_device_memory(s.device)


def _gpu_focus(table: GpuTable, s: GpuSettings) -> None:
    """FOCUS (DINOv2-L and -G; the smoke run: a small FOCUS) randomly initialised, on the
    synthetic photo resized to the default test size (512x683, padded to 512x704): median latency
    per image of ``model(x)`` (the OpenCV edge input's CPU round trip included), peak memory.
    Each model is initialised on the device and then cast, so G's 5 GB of float32 weights never
    pass through host memory."""
    import torch.nn.functional as F

    from .inference import FOCUS_PIXEL_MEAN, FOCUS_PIXEL_STD, FOCUS_SIZE_DIVISIBILITY
    from .models import build_model
    from .ops.msda import select_backend

    h, w = s.focus_image
    photo = torch.from_numpy(_focus_photo(h, w, seed=0)).permute(2, 0, 1)[None].float()
    image = (photo - torch.tensor(FOCUS_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(FOCUS_PIXEL_STD).view(1, 3, 1, 1)
    image = F.pad(image, (0, -w % FOCUS_SIZE_DIVISIBILITY, 0, -h % FOCUS_SIZE_DIVISIBILITY))
    hp, wp = image.shape[-2:]
    size = f"{wp}x{hp}" + (f" (image {w}x{h})" if (hp, wp) != (h, w) else "")
    for model_name in s.focus_models:
        if isinstance(model_name, str):
            label = model_name
        else:  # a FocusConfig
            label = f"focus small (width {model_name.width}, depth {model_name.depth})"
        model = None
        for batch in s.focus_batches:
            with table.row("focus", f"{label} {size}", dtype=s.focus_dtype, batch=batch, unit="ms/image") as row:
                if model is None:
                    torch.manual_seed(0)
                    with torch.device(s.device):  # initialised where it runs, then cast
                        model = build_model(model_name)
                    model = model.eval().to(dtype=s.focus_dtype)
                    _free_device_memory(s.device)  # the float32 weights' blocks
                # float32 input: the network computes its edge input from it, then casts
                x = image.to(s.device).expand(batch, -1, -1, -1).contiguous()
                _time_forward(row, model, x, s, s.focus_repeats)
                row["note"] = f"attention: {select_backend(s.device, s.focus_dtype).name}"
        model = x = None  # freed before the next model is built
        _free_device_memory(s.device)


def _gpu_compile(table: GpuTable, s: GpuSettings) -> None:
    """The opt-in compiled forward (birefnet_core.compiled) against eager, Swin-T at the model
    size in bfloat16, batch 1: the first call's seconds (compiling) and the per-image latency
    after it, for "on" and "cudagraphs". CUDA only (Inductor on a CPU takes minutes)."""
    from .compiled import compiled_forward
    from .models import build_model

    if s.device.type != "cuda":
        with table.row("compile", "torch.compile vs eager") as row:
            row["note"] = "CUDA only (Inductor on a CPU takes minutes)"
        return
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = build_model("swin_v1_t").eval().to(device=s.device, dtype=dtype)
    x = torch.randn(1, 3, s.model_size, s.model_size, device=s.device, dtype=dtype)
    label = f"swin_v1_t {s.model_size}x{s.model_size}"
    with table.row("compile", f"{label} eager", dtype=dtype, batch=1, unit="ms/image") as row:
        _time_forward(row, model, x, s, s.repeats)
    for mode in ("on", "cudagraphs"):
        torch._dynamo.reset()
        model.__dict__.pop("_birefnet_compiled", None)
        forward = compiled_forward(model, mode)
        with table.row("compile", f"{label} compile={mode}: first call", dtype=dtype, batch=1, unit="s") as row:
            start = time.perf_counter()
            with torch.inference_mode():
                forward(x)
            _synchronize(s.device)
            row["value"] = time.perf_counter() - start
        with table.row("compile", f"{label} compile={mode}", dtype=dtype, batch=1, unit="ms/image") as row:
            _time_forward(row, forward, x, s, s.repeats)
            if forward.failed:
                raise RuntimeError(f"compiling failed, eager fallback measured: {forward.failed}")
    model = x = forward = None
    torch._dynamo.reset()
    _free_device_memory(s.device)


GPU_PART_FUNCTIONS = {"model": _gpu_model, "deform": _gpu_deform, "video": _gpu_video, "train": _gpu_train,
                      "focus": _gpu_focus, "compile": _gpu_compile}


def bench_gpu(args: argparse.Namespace) -> int:
    """Everything a GPU session measures, in one table: the network (Swin-L, Swin-T) at 1024^2
    in bfloat16 and float16, every deformable-convolution backend on the decoder's shapes, 1080p
    video throughput, training throughput, FOCUS-L and -G at 704x512 in bfloat16. Each row is
    independent: one that fails (out of memory included) says so in its place and the others
    still run."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(GPU_REFUSAL)
    if device.type != "cuda" and not args.quick:
        raise RuntimeError(GPU_REFUSAL)
    json_path = Path(args.json).resolve() if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise FileNotFoundError(f"folder {json_path.parent} for --json not found")
    if args.threads:
        torch.set_num_threads(args.threads)
    s = GpuSettings.for_args(args)
    parts = [p for p in GPU_PARTS if p in (args.parts or GPU_PARTS)]
    header = {"benchmark": "gpu", "device": str(device), "machine": machine_description(device),
              "torch": torch.__version__, "quick": s.quick, "parts": parts, "repeats": s.repeats}
    table = GpuTable(json_path, header)
    print(f"bench gpu on {device}: {machine_description(device)}{' (--quick: smoke-run sizes)' if s.quick else ''}")
    print(f"result: median of {s.repeats} timed run(s) after {1 + s.warmups} warm-up run(s) (video: "
          f"{s.video_repeats} run(s) of {s.video_count} frames; train: {s.train_steps} step(s) after "
          f"{1 + s.warmups}; focus: median of {s.focus_repeats}); random weights and data. "
          "peak MiB: CUDA max_memory_allocated during one more run (weights and inputs included); CPU: growth of "
          "resident memory")
    if not s.quick:
        print(f"goals (H100/H200): Swin-L 1024x1024 bfloat16 <= {GOAL_SWIN_L_BATCH_1_MS:g} ms at batch 1 and "
              f"<= {GOAL_SWIN_L_BATCH_8_MS:g} ms per image at batch 8; 1080p video >= {GOAL_VIDEO_FPS:g} frames/s "
              "with Swin-T")
    print(GpuTable.COLUMNS)
    for part in parts:
        try:
            GPU_PART_FUNCTIONS[part](table, s)
        except OUT_OF_MEMORY as exc:
            table.part_failed(part, exc)
            _free_device_memory(device)
        except Exception as exc:  # noqa: BLE001 - one failing part must not stop the others
            table.part_failed(part, exc)
        _free_device_memory(device)
    table.write()
    if json_path is not None:
        print(f"{len(table.rows)} rows written to {json_path}")
    if table.failures:
        raise RuntimeError(f"{table.failures} of {len(table.rows)} rows failed (see the table)")
    return 0


TRAIN_GOAL_SPEEDUP = 1.5  # issue 13: the hand-written deformable backward against autograd, on CPU


def bench_train(args: argparse.Namespace) -> int:
    """Training throughput with each deformable-convolution backward (``BIREFNET_DEFORM_BACKWARD``):
    the trainer's own step (``Trainer._train_step``: forward, the recipe's losses, backward, AdamW)
    on a fixed random batch, the backwards alternating round by round so that a busy machine
    slows them alike. Prints images/s per backward (median, min, max over the rounds) and the
    speed-up of the last backward over the first (median of the per-round ratios)."""
    import tempfile

    from .ops.portable import BACKWARD_ENV, backward_mode
    from .train import distributed
    from .train.trainer import TrainConfig, Trainer

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backwards = [backward_mode(name) for name in args.backwards]
    size, batch = args.size, args.batch
    gen = torch.Generator().manual_seed(0)
    previous = os.environ.get(BACKWARD_ENV)
    print(f"training step on {device}: {machine_description(device)}; load average {_load_average()} at the start")
    print(f"{args.backbone} {size}x{size}, batch {batch}, precision {args.precision}, recipe {args.recipe} "
          f"(Trainer._train_step: forward, losses, backward, AdamW), random weights and data; {args.steps} step(s) "
          f"per timed run, {args.rounds} rounds alternating {', '.join(backwards)} after one warm-up step each; "
          "peak MiB: growth of resident memory (CPU) or CUDA max_memory_allocated during one more step")
    with tempfile.TemporaryDirectory() as tmp:
        _write_tiny_dataset(Path(tmp) / "data", batch)
        cfg = TrainConfig(data=[str(Path(tmp) / "data")], out=str(Path(tmp) / "run"), backbone=args.backbone,
                          size=(size, size), batch_size=batch, precision=args.precision, recipe=args.recipe,
                          workers=0, progress=False, tensorboard=False, augment=("none",), device=str(device))
        trainer = Trainer(cfg, distributed.Context(device=device))
        trainer.net.train()
        x = torch.rand(batch, 3, size, size, generator=gen).to(device)
        y = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(device)

        def steps(backward: str) -> Tuple[float, float]:
            """(wall seconds, CPU seconds of this process) of ``args.steps`` training steps."""
            os.environ[BACKWARD_ENV] = backward
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                trainer._train_step(x, y, trainer.base_weights)
            _synchronize(device)
            return time.perf_counter() - start, time.process_time() - cpu_start

        try:
            for backward in backwards:
                steps(backward)  # warm-up: lazy loading, allocator, self-checks
            rates: dict = {b: [] for b in backwards}
            cpu_rates: dict = {b: [] for b in backwards}
            for _ in range(args.rounds):
                for backward in backwards:
                    wall, cpu = steps(backward)
                    rates[backward].append(batch * args.steps / wall)
                    cpu_rates[backward].append(batch * args.steps / cpu)
            peaks = {}
            for backward in backwards:
                with peak_memory(device) as peak:
                    steps(backward)
                peaks[backward] = peak[0]
        finally:
            if previous is None:
                os.environ.pop(BACKWARD_ENV, None)
            else:
                os.environ[BACKWARD_ENV] = previous
    # images per CPU-second: on a machine other processes keep busy, wall time swings with them,
    # the work one step costs less so (with --threads 1 there is no waiting for other threads)
    print(f"{'backward':<10} {'median img/s':>12} {'min':>7} {'max':>7} {'img/CPU-s':>10} {'peak MiB':>9}")
    for backward in backwards:
        r = rates[backward]
        peak_text = f"{peaks[backward] / MiB:9.0f}" if peaks[backward] is not None else f"{'?':>9}"
        print(f"{backward:<10} {statistics.median(r):12.2f} {min(r):7.2f} {max(r):7.2f} "
              f"{statistics.median(cpu_rates[backward]):10.2f} {peak_text}")
    if len(backwards) > 1:
        first, last = backwards[0], backwards[-1]
        for label, table in (("wall", rates), ("CPU", cpu_rates)):
            ratios = [b / a for a, b in zip(table[first], table[last])]
            print(f"{last} / {first} ({label} time): {statistics.median(ratios):.2f}x (median of {len(ratios)} "
                  f"per-round ratios, range {min(ratios):.2f}-{max(ratios):.2f})")
        print(f"goal {TRAIN_GOAL_SPEEDUP:g}x on CPU; load average {_load_average()} at the end")
    return 0


def _focus_photo(height: int, width: int, seed: int):
    """A synthetic photo (uint8 [H, W, 3]): a lit disc with a soft cast shadow on a textured floor."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    floor = torch.stack([0.55 + 0.2 * xx, 0.5 + 0.1 * yy, 0.4 + 0.1 * xx * yy], -1)
    shadow = torch.exp(-(((yy - 0.62) / 0.12) ** 2 + ((xx - 0.58) / 0.25) ** 2))[..., None]
    disc = ((((yy - 0.42) / 0.18) ** 2 + ((xx - 0.45) / 0.14) ** 2) < 1).float()[..., None]
    image = floor * (1 - 0.6 * shadow) * (1 - disc) + disc * torch.tensor([0.8, 0.25, 0.2])
    image = image + 0.06 * torch.rand(height, width, 3, generator=g)
    return np.ascontiguousarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def bench_focus_resize(args: argparse.Namespace) -> None:
    """How far the Predictor's on-device resize (torch bilinear, antialiased, rounded to levels)
    moves FOCUS's output from the official pipeline (PIL bilinear on the uint8 image), same
    network and post-processing otherwise; weights from ``--weights`` or seeded random ones."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from .checkpoint import load_model
    from .inference import FOCUS_PIXEL_MEAN, FOCUS_PIXEL_STD, FOCUS_SIZE_DIVISIBILITY, FOCUS_RESOLUTION, Predictor
    from .models import build_model
    from .models.focus import mask_of_interest

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights:
        model = load_model(Path(args.weights), device=device, dtype="float32")
        what = args.weights
    else:
        torch.manual_seed(0)
        model = build_model(args.model).to(device)
        what = f"{args.model}, seeded random weights"
    print(f"FOCUS {what} on {device}: {machine_description(device)}")
    rule = FOCUS_RESOLUTION
    for size in args.sizes:
        height, width = _frame_size(size)
        photo = _focus_photo(height, width, seed=args.seed)
        nh, nw = rule.size_for(height, width)
        resized = np.array(Image.fromarray(photo).resize((nw, nh), Image.BILINEAR))
        x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
        x = (x - torch.tensor(FOCUS_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(FOCUS_PIXEL_STD).view(1, 3, 1, 1)
        x = F.pad(x, (0, -nw % FOCUS_SIZE_DIVISIBILITY, 0, -nh % FOCUS_SIZE_DIVISIBILITY)).to(device)
        with torch.inference_mode():
            out = model(x)
        soft_ref, hard_ref = mask_of_interest(out.class_logits.float(), out.mask_logits.float(), tuple(x.shape[-2:]),
                                              (nh, nw), (height, width))
        batch = torch.from_numpy(photo)[None]
        soft = Predictor(model).predict(batch, layout="BHWC")[0].to(device)
        hard = Predictor(model, binary=True).predict(batch, layout="BHWC")[0].to(device)
        levels = Predictor(model).preprocess(batch.permute(0, 3, 1, 2).float().div(255).to(device))[0]
        levels = levels[0, :, :nh, :nw] * torch.tensor(FOCUS_PIXEL_STD, device=device).view(3, 1, 1) \
            + torch.tensor(FOCUS_PIXEL_MEAN, device=device).view(3, 1, 1)
        level_diff = (levels.round() - torch.from_numpy(resized).permute(2, 0, 1).to(device)).abs()
        d = (soft - soft_ref[0].clamp(0, 1)).abs()
        print(f"{width}x{height} -> {nw}x{nh}: input levels differ on {float((level_diff > 0).float().mean()):.3%} "
              f"of values (max {float(level_diff.max()):.0f}); soft map |d| max {float(d.max()):.4f} mean "
              f"{float(d.mean()):.5f}; binary mask differs on {float((hard != hard_ref[0]).float().mean()):.3%} of "
              "pixels")


BENCHMARKS = {"deform": bench_deform, "model": bench_model, "matting": bench_matting,
              "video": bench_video, "gpu": bench_gpu, "focus-resize": bench_focus_resize, "train": bench_train,
              "two-pass": lambda args: _two_pass().run(args)}


def _two_pass():
    from . import bench_two_pass

    return bench_two_pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")

    deform = benchmarks.add_parser("deform", help="deformable convolution backends on the decoder's shapes")
    deform.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="dtypes to time")
    deform.add_argument("--backends", nargs="+", choices=BACKEND_NAMES, help="backends (default: all)")
    deform.add_argument("--sizes", nargs="+", type=int, default=[256, 128, 64, 32], help="feature-map sides")
    deform.add_argument("--kernels", nargs="+", type=int, default=[1, 3, 7], help="kernel sizes")

    model = benchmarks.add_parser("model", help="the whole network at one resolution")
    model.add_argument("--model", "--backbone", dest="backbone", default="swin_v1_l",
                       help="architecture: a BiRefNet backbone (default swin_v1_l) or focus_dinov2_l / focus_dinov2_g")
    model.add_argument("--size", default=None,
                       help="N (square) or WxH, multiples of 32 (default 1024; FOCUS 704x512)")
    model.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")

    focus_resize = benchmarks.add_parser("focus-resize", help="FOCUS: how far the on-device resize moves the "
                                                               "output from the official PIL pipeline")
    focus_resize.add_argument("--model", default="focus_dinov2_l", help="FOCUS architecture (default focus_dinov2_l)")
    focus_resize.add_argument("--weights", default=None, help="a FOCUS checkpoint (default: seeded random weights)")
    focus_resize.add_argument("--sizes", nargs="+", default=["800x600", "4000x3000"],
                              help="synthetic photo sizes WxH (default 800x600 4000x3000)")
    focus_resize.add_argument("--seed", type=int, default=0, help="synthetic photo seed")
    focus_resize.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    focus_resize.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")

    matting = benchmarks.add_parser("matting", help="matte refinement: quality on a synthetic scene, speed, memory")
    matting.add_argument("--size", type=int, default=1024, help="synthetic scene side for the quality figures")
    matting.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    matting.add_argument("--speed-size", type=int, default=1024, help="image side for the timings (default 1024)")
    matting.add_argument("--memory-size", type=int, default=4096,
                         help="image side for the foreground estimators' memory figure (default 4096; 0 skips)")
    matting.add_argument("--reference", action="store_true",
                         help="also time the official avg_pool2d form once (about 36 s at 1024 on 2 CPU cores)")

    video = benchmarks.add_parser("video", help="video: temporal quality of the smoothing on a synthetic clip; "
                                                "matte_frames throughput and memory")
    video.add_argument("--parts", nargs="+", choices=["quality", "speed", "memory"], default=["quality", "speed"],
                       help="which parts to run (default quality speed; memory: peak memory per output set and dtype)")
    video.add_argument("--frames", type=int, default=60, help="synthetic clip length for the quality part")
    video.add_argument("--size", type=int, default=256, help="synthetic clip side for the quality part")
    video.add_argument("--seed", type=int, default=0, help="synthetic clip seed")
    video.add_argument("--strengths", nargs="+", default=["off", "light", "strong", "0.85"],
                       help="smoothing strengths to compare (presets or numbers in 0..1)")
    video.add_argument("--motion-full", type=float, default=0.05,
                       help="TemporalSmoother motion_full for the quality part (default 0.05)")
    video.add_argument("--motion-window", type=int, default=5,
                       help="TemporalSmoother motion_window for the quality part (default 5)")
    video.add_argument("--backbone", nargs="+", default=["swin_v1_t"], help="backbone(s) to time (default swin_v1_t)")
    video.add_argument("--resolution", default="512", help="network input size, N or WxH (default 512)")
    video.add_argument("--count", type=int, default=8, help="frames per timed run (default 8)")
    video.add_argument("--frame-sizes", nargs="+", default=["512", "1920x1080"],
                       help="frame sizes to time, N or WxH (default 512 1920x1080)")
    video.add_argument("--smoothing", default="light", help="smoothing during the timed runs (default light)")
    video.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    video.add_argument("--batch", type=int, default=4, help="frames per network chunk (default 4)")
    video.add_argument("--repeats", type=int, default=1, help="timed runs (the median is printed; default 1)")
    video.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    video.add_argument("--memory-frames", type=int, default=24,
                       help="frames for the memory part (default 24; 300 measures the issue's case directly)")
    video.add_argument("--memory-size", default="1920x1080", help="frame size for the memory part (default 1920x1080)")
    video.add_argument("--memory-input", choices=["float32", "uint8"], default="float32",
                       help="dtype of the memory part's input frames (uint8 takes a quarter of the RAM; default "
                            "float32, as ComfyUI passes them)")
    video.add_argument("--memory-backbone", default="pvt_v2_b0",
                       help="backbone for the memory part (default pvt_v2_b0: the outputs, not the network, are "
                            "measured)")
    video.add_argument("--memory-resolution", default="64", help="network input size for the memory part (default 64)")
    video.add_argument("--memory-outputs", nargs="+", choices=["mask", "rgba", "composite", "all"],
                       default=["mask", "rgba", "composite", "all"],
                       help="output sets for the memory part (default all four)")
    video.add_argument("--memory-dtypes", nargs="+", choices=["float32", "float16"], default=["float32", "float16"],
                       help="output dtypes for the memory part (default both)")

    two_pass = benchmarks.add_parser("two-pass", help="two-pass segmentation vs one pass on synthetic 2K-4K scenes: "
                                                      "S, boundary F, HCE, MAE and seconds per image")
    _two_pass().add_arguments(two_pass)

    gpu = benchmarks.add_parser("gpu", help="everything a GPU session measures, in one table: the network, the "
                                            "deformable convolution, video, training and FOCUS (--quick: a smoke "
                                            "run on CPU)")
    gpu.add_argument("--parts", nargs="+", choices=GPU_PARTS, help=f"parts to run (default all: {' '.join(GPU_PARTS)})")
    gpu.add_argument("--quick", action="store_true",
                     help="tiny sizes (128 px, Swin-T only, 2 repeats): a smoke run, also on CPU")
    gpu.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    gpu.add_argument("--repeats", type=int, default=0,
                     help="timed runs per row, video runs, training steps, FOCUS runs (default 10, 2, 5 and 5; "
                          "--quick 2, 1, 1 and 2)")
    gpu.add_argument("--json", default="bench_gpu.json",
                     help="the table as JSON, rewritten after every row (default bench_gpu.json; '' for none)")
    gpu.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")

    train = benchmarks.add_parser("train", help="training steps per second with the deformable convolution's "
                                                "autograd backward and its hand-written one")
    train.add_argument("--backbone", default="pvt_v2_b0", help="BiRefNet backbone (default pvt_v2_b0)")
    train.add_argument("--size", type=int, default=128, help="training image side, a multiple of 32 (default 128)")
    train.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    train.add_argument("--precision", default="fp32", help="fp32, bf16 or auto, as the trainer (default fp32)")
    train.add_argument("--recipe", default="dis", help="loss recipe (default dis)")
    train.add_argument("--backwards", nargs="+", default=["autograd", "manual"],
                       help="BIREFNET_DEFORM_BACKWARD values to compare, baseline first (default autograd manual)")
    train.add_argument("--rounds", type=int, default=5, help="timed runs per backward, alternating (default 5)")
    train.add_argument("--steps", type=int, default=1, help="training steps per timed run (default 1)")
    train.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")

    for sub, repeats in ((deform, 5), (model, 3), (matting, 5)):
        sub.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
        sub.add_argument("--batch", type=int, default=1, help="batch size")
        sub.add_argument("--repeats", type=int, default=repeats, help="timed runs (the median is printed)")
        sub.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    status = BENCHMARKS[args.benchmark](args)
    return status if isinstance(status, int) else 0
