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
    (randomly initialised) network at two frame sizes."""
    from .video import TemporalSmoother, matte_frames, parse_strength

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


BENCHMARKS = {"deform": bench_deform, "model": bench_model, "matting": bench_matting,
              "video": bench_video}


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
    video.add_argument("--parts", nargs="+", choices=["quality", "speed"], default=["quality", "speed"],
                       help="which parts to run (default both)")
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

    for sub, repeats in ((deform, 5), (model, 3), (matting, 5)):
        sub.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
        sub.add_argument("--batch", type=int, default=1, help="batch size")
        sub.add_argument("--repeats", type=int, default=repeats, help="timed runs (the median is printed)")
        sub.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    BENCHMARKS[args.benchmark](args)
    return 0
