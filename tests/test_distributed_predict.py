"""``torchrun --nproc_per_node=2 -m birefnet_core predict|video ...``: two CPU processes (gloo)
share the files; every input once, outputs equal to one process's, the whole job checked alike
by every process, failed files named at the end, a process that dies does not hang the other."""

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from birefnet_core.distributed import share

REPO = Path(__file__).resolve().parents[1]
COMMON = ("--resolution", "64", "--device", "cpu", "--dtype", "float32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


def torchrun(logs, command, *args):
    """(exit status, {rank: (stdout, stderr)}) of a 2-process torchrun, each process's output apart."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", "--log-dir", str(logs), "--redirects", "3",
                             "-m", "birefnet_core", command, *map(str, args)],
                            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=240)
    ranks = {int(d.name): ((d / "stdout.log").read_text(), (d / "stderr.log").read_text())
             for d in Path(logs).glob("*/attempt_0/*")}
    assert sorted(ranks) == [0, 1], result.stderr[-3000:]
    return result.returncode, ranks


def one_process(command, *args):
    """The command in this process, one thread like torchrun's workers: (status, stdout, stderr)."""
    from birefnet_core.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([command, *map(str, args)])
    finally:
        torch.set_num_threads(threads)
    return status, out.getvalue(), err.getvalue()


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def noise_pngs(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):  # sizes differ: no batching across images
        path = folder / f"{chr(ord('a') + i)}.png"
        Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 28 + i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_share_gives_every_item_to_exactly_one_process():
    for count in (0, 1, 5, 6):
        for world in (1, 2, 3):
            shares = [share(count, r, world) for r in range(world)]
            assert sorted(i for s in shares for i in s) == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    sizes = [100, 1, 1, 1, 60, 40, 2]
    shares = [share(len(sizes), r, 2, sizes) for r in range(2)]
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
    assert shares == [[0, 3, 6], [1, 2, 4, 5]]  # largest first to the least loaded: 103 and 102
    assert all(s == sorted(s) for s in shares)  # each share in input order


def test_two_processes_share_the_images_and_name_the_broken_one(tmp_path, tiny_checkpoint):
    folder = tmp_path / "in"
    good = noise_pngs(folder, 5)
    broken = folder / "0broken.png"  # first in the sorted folder
    broken.write_bytes(b"this is not an image")
    status, _, err = one_process("predict", *good, "--out", tmp_path / "one", "--model", tiny_checkpoint, *COMMON)
    assert status == 0, err

    status, ranks = torchrun(tmp_path / "logs", "predict", folder, "--out", tmp_path / "two",
                             "--model", tiny_checkpoint, *COMMON)
    assert status != 0
    # every good image exactly once, equal to one process's outputs, nothing else (no partial file)
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    assert len(snapshot(tmp_path / "two")) == 10
    out0, err0 = ranks[0]
    counts = re.search(r"wrote 10 files to .* \(5 of 6 images; 2 processes: (\d+) \+ (\d+)\)", out0)
    assert counts, out0
    # 5 images written, and every one present: none was done by both processes
    assert int(counts[1]) + int(counts[2]) == 5 and min(int(counts[1]), int(counts[2])) >= 1
    assert f"failed: {broken}: cannot read image" in err0, err0
    assert "error: 1 of 6 image(s) failed" in err0
    assert ranks[1][0] == ""  # the job's report is process 0's


def test_the_whole_job_is_checked_alike_before_any_work(tmp_path, tiny_checkpoint):
    """An existing output of an image that process 1 would do: both processes refuse, with the
    one-process message, and nothing is written or replaced."""
    folder = tmp_path / "in"
    noise_pngs(folder, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_mask.png").write_bytes(b"the user's own file")
    status, _, err = one_process("predict", folder, "--out", out, "--model", tiny_checkpoint, *COMMON)
    assert status == 1 and "exist already" in err
    status, ranks = torchrun(tmp_path / "logs", "predict", folder, "--out", out, "--model", tiny_checkpoint, *COMMON)
    assert status != 0
    for rank in (0, 1):
        assert ranks[rank][1].strip() == err.strip(), ranks[rank]
    assert snapshot(out) == {"b_mask.png": b"the user's own file"}


DIES = textwrap.dedent("""
    import os, sys
    from birefnet_core import predict
    if os.environ["RANK"] == "1":
        real, calls = predict.write_outputs, []
        def write_outputs(*args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                os._exit(3)  # dies on its second image: no exception, no clean-up, no result
            return real(*args, **kwargs)
        predict.write_outputs = write_outputs
    from birefnet_core.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_process_that_dies_does_not_hang_the_other(tmp_path, tiny_checkpoint):
    """Launched without torchrun (which would stop the survivor at once): process 0 finishes its
    share, gives process 1 up after BIREFNET_DIST_TIMEOUT seconds without a sign of life, names
    the image it left undone and ends with 1."""
    folder = tmp_path / "in"
    images = noise_pngs(folder, 5)  # process 0: a, c, e; process 1: b, then dies on d
    driver = tmp_path / "driver.py"
    driver.write_text(DIES)
    port = str(free_port())
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(driver), "predict", str(folder), "--out", str(tmp_path / "out"),
                               "--model", str(tiny_checkpoint), *COMMON], cwd=REPO,
                              env=environment(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port, BIREFNET_DIST_TIMEOUT="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert time.monotonic() - start < 100
    assert procs[1].returncode == 3
    assert procs[0].returncode == 1, outputs[0]
    out0, err0 = outputs[0]
    assert "(4 of 5 images; 2 processes: 3 + 1)" in out0, out0
    assert f"failed: {images[3]}: not done: process 1 stopped" in err0, err0
    assert "error: 1 of 5 image(s) failed" in err0
    assert sorted(snapshot(tmp_path / "out")) == sorted(f"{s}_{k}.png" for s in "abce" for k in ("mask", "rgba"))


def test_two_processes_share_the_videos(tmp_path, tiny_checkpoint):
    pytest.importorskip("av")
    from birefnet_core.video_io import write_test_video

    rng = np.random.default_rng(1)
    videos = [write_test_video(tmp_path / f"{name}.mp4", rng.integers(0, 255, (n, 32, 48, 3), dtype=np.uint8), fps=12)
              for name, n in (("long", 7), ("short", 3))]
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video\n" * 20)
    status, _, err = one_process("video", *videos, "--out", tmp_path / "x.mov", "--model", tiny_checkpoint, *COMMON)
    assert status == 1 and "need {stem} in --out" in err, err
    status, out, err = one_process("video", *videos, "--out", str(tmp_path / "one" / "{stem}") + "/",
                                   "--model", tiny_checkpoint, "--batch-size", "2", *COMMON)
    assert status == 0, err
    assert "wrote 7 frames" in out and "wrote 3 frames" in out

    status, ranks = torchrun(tmp_path / "logs", "video", *videos, broken, "--out",
                             str(tmp_path / "two" / "{stem}") + "/", "--model", tiny_checkpoint, "--batch-size", "2",
                             *COMMON)
    assert status != 0
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    assert sorted(snapshot(tmp_path / "two")) == sorted([f"long/frame_{i:06d}.png" for i in range(1, 8)]
                                                        + [f"short/frame_{i:06d}.png" for i in range(1, 4)])
    done = {rank: re.findall(r"wrote \d+ frames to .*/two/(\w+)/", ranks[rank][0]) for rank in (0, 1)}
    assert sorted(done[0] + done[1]) == ["long", "short"], done  # each video by one process only
    assert "wrote 2 of 3 videos" in ranks[0][0]
    assert f"failed: {broken}: cannot decode video" in ranks[0][1], ranks[0][1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def two_jobs(timeout_s):
    """Process 0's and process 1's SharedJob over one in-memory store (what torchrun's store is to them)."""
    from datetime import timedelta

    from birefnet_core.distributed import Context, SharedJob

    store = torch.distributed.HashStore()
    jobs = [SharedJob(Context(rank=r, world_size=2, store=store), timedelta(seconds=timeout_s)) for r in range(2)]
    for job in jobs:
        job.assign(["a", "b", "c", "d", "e"])  # process 0: a, c, e; process 1: b, d
    return jobs


def test_process_0_shows_the_whole_job_and_reports_every_failure():
    import threading

    zero, one = two_jobs(timeout_s=30)
    terminal = Terminal()
    zero.progress("predict", stream=terminal)
    one.succeeded("b")
    one.failed("d", OSError(5, "Input/output error", "d"))
    zero.succeeded("a")
    assert "3/5" in terminal.getvalue().split("\r")[-1]  # both processes' files
    ended = {}
    waiting = threading.Thread(target=lambda: ended.update(one=one.finish(lambda outcome: None)))
    waiting.start()
    zero.succeeded("c")
    zero.failed("e", ValueError("cannot read image e: truncated"))
    reports = []
    assert zero.finish(reports.append) == 1
    waiting.join(30)
    assert ended == {"one": 1}  # the failure anywhere ends every process with 1
    (outcome,) = reports
    assert outcome.written == {0: 2, 1: 1} and outcome.lost == []
    assert outcome.failures == [("d", "Input/output error: d"), ("e", "cannot read image e: truncated")]


def test_a_silent_process_is_given_up_and_its_files_named():
    zero, one = two_jobs(timeout_s=1)
    one.succeeded("b")  # then nothing more: no result, no sign of life
    for name in "ace":
        zero.succeeded(name)
    reports = []
    start = time.monotonic()
    assert zero.finish(reports.append) == 1
    assert time.monotonic() - start < 10
    (outcome,) = reports
    assert outcome.lost == [1] and outcome.written == {0: 3, 1: 1}
    assert [name for name, _ in outcome.failures] == ["d"]
    assert outcome.failures[0][1].startswith("not done: process 1 stopped")
