"""Predictor and video matting on CUDA: batches equal single images, a real out-of-memory halves
the chunk, video chunks equal one call."""

import logging

import pytest
import torch

from birefnet_core import Predictor
from birefnet_core.matting import MatteOptions
from birefnet_core.video import TemporalSmoother, matte_frames

from test_video import clip


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-4), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
def test_a_batch_of_8_equals_8_batches_of_1(dtype, atol, tiny_model, device, dry_run, no_tf32):
    model = tiny_model()
    resolution = 64 if dry_run else 256
    images = torch.rand(8, 3, 150, 210, generator=torch.Generator().manual_seed(0))
    one = Predictor(model, resolution=resolution, batch_size=1, dtype=dtype).predict(images, layout="BCHW")
    eight = Predictor(model, resolution=resolution, batch_size=8, dtype=dtype).predict(images, layout="BCHW")
    assert eight.shape == (8, 150, 210) and eight.device.type == "cpu"
    difference = (eight - one).abs().max().item()
    print(f"\nbatch 8 vs batch 1 on {device} {dtype}: max |dprob| {difference:.2e}")
    torch.testing.assert_close(eight, one, atol=atol, rtol=0)


def test_a_real_out_of_memory_halves_the_chunk_once_and_gives_the_batch_1_masks(tiny_model, device, cuda_only,
                                                                                 no_tf32, caplog):
    """Fill the GPU so that one image fits but eight do not; the predictor must get through."""
    model = tiny_model()
    images = torch.rand(8, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))

    def reserved_peak(batch_size):
        """(masks, peak bytes the caching allocator reserved above the start) of one run."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_reserved(device)
        masks = Predictor(model, resolution=1024, batch_size=batch_size).predict(images, layout="BCHW")
        return masks, torch.cuda.max_memory_reserved(device) - start

    want, one = reserved_peak(1)
    _, eight = reserved_peak(8)  # also loads every kernel and library a batch of 8 needs
    print(f"\nreserved at 1024^2: batch 1 {one / 2**20:.0f} MiB, batch 8 {eight / 2**20:.0f} MiB")
    assert eight > 1.5 * one, "a batch of 8 should need clearly more memory than one image"
    headroom = (one + eight) // 2  # one image fits with margin, eight do not
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    filler = torch.empty(free - headroom, dtype=torch.uint8, device=device)
    chunks = []
    try:
        from birefnet_core import inference

        with caplog.at_level(logging.WARNING, logger=inference.__name__):
            predictor = Predictor(model, resolution=1024, batch_size=8)
            got = predictor.predict(images, layout="BCHW", progress=lambda done, total: chunks.append(done))
    finally:
        del filler
        torch.cuda.empty_cache()
    print(f"chunks ended at {chunks}; headroom {headroom / 2**20:.0f} MiB")
    assert chunks[0] < 8, "the filler should have left too little memory for 8 images"
    assert caplog.text.count("out of memory") == 1
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("smoothing,matte", [(None, None), ("strong", None), ("light", MatteOptions())],
                         ids=["plain", "smoothing", "smoothing+foreground"])
def test_video_in_chunks_equals_one_call(smoothing, matte, tiny_model, device, no_tf32):
    predictor_model = tiny_model()
    frames = clip()  # [60, 40, 56, 3] on the CPU, as ComfyUI passes them

    def run(batch_size):
        smoother = TemporalSmoother(smoothing) if smoothing else None
        return matte_frames(Predictor(predictor_model, resolution=64, batch_size=batch_size), frames,
                            smoother=smoother, matte=matte)

    one, sevens = run(60), run(7)
    for a, b in ((one.mask, sevens.mask), (one.rgba, sevens.rgba), (one.composite, sevens.composite)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert one.mask.shape == (60, 40, 56) and one.mask.device.type == "cpu"


def test_overlapped_streaming_gives_the_plain_copies_results(tiny_model, device, no_tf32, monkeypatch):
    """Uploads one chunk ahead and downloads one behind (birefnet_core.streaming) change no value:
    Predictor and matte_frames with the overlap on equal BIREFNET_STREAMING=0, and on CUDA every
    chunk but the first is served from a prefetch."""
    from birefnet_core.streaming import Uploader

    model = tiny_model()
    images = torch.rand(7, 3, 120, 160, generator=torch.Generator().manual_seed(4))
    frames = images.movedim(1, -1).contiguous()
    taken = []
    original = Uploader.take

    def counting(self, start, stop):
        chunk = original(self, start, stop)
        taken.append(self.prefetched)
        return chunk

    monkeypatch.setattr(Uploader, "take", counting)
    streamed = Predictor(model, resolution=64, batch_size=2).predict(images, layout="BCHW")
    video_streamed = matte_frames(Predictor(model, resolution=64, batch_size=3), frames,
                                  smoother=TemporalSmoother("light"), matte=MatteOptions(foreground="blur_fusion"))
    if device.type == "cuda":
        assert taken[3] == 3  # chunks 2..4 of the predictor's 4 came from prefetches
    monkeypatch.setenv("BIREFNET_STREAMING", "0")
    plain = Predictor(model, resolution=64, batch_size=2).predict(images, layout="BCHW")
    video_plain = matte_frames(Predictor(model, resolution=64, batch_size=3), frames,
                               smoother=TemporalSmoother("light"), matte=MatteOptions(foreground="blur_fusion"))
    torch.testing.assert_close(streamed, plain, atol=0, rtol=0)
    for name in ("mask", "rgba", "composite"):
        torch.testing.assert_close(getattr(video_streamed, name), getattr(video_plain, name), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["on", "cudagraphs"])
def test_the_compiled_forward_gives_the_eager_masks(mode, tiny_model, device, cuda_only, no_tf32):
    """Inductor (and CUDA graphs) on CUDA: the opt-in compiled path (birefnet_core.compiled)
    compiles for real and changes the masks by no more than float32 rounding."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model()
    images = torch.rand(4, 3, 150, 210, generator=torch.Generator().manual_seed(5))
    eager = Predictor(model, resolution=256, batch_size=2, dtype=torch.float32).predict(images, layout="BCHW")
    compiled = Predictor(model, resolution=256, batch_size=2, compile=mode)
    got = compiled.predict(images, layout="BCHW")
    assert compiled.forward.failed is None, compiled.forward.failed
    difference = (got - eager).abs().max().item()
    print(f"\ncompile={mode} vs eager on {device}: max |dprob| {difference:.2e}")
    torch.testing.assert_close(got, eager, atol=1e-3, rtol=0)
