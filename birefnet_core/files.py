"""Writing outputs so that nothing a user owns is lost.

Every file the core writes (masks, cut-outs, videos, PNG sequences, checkpoints, CSV reports)
goes through :func:`atomic_output`: it is written under a temporary name in the same folder and
moved into place (one ``os.replace``) only once complete. An interrupted or failed write (Ctrl-C,
a decode error half-way, a full disk, ComfyUI's Cancel) removes the temporary file and leaves an
earlier file of the same name untouched.

The command line's policy on existing files is checked before any work starts, with
:func:`check_outputs`: an output that is one of the inputs (by any path, link or hard link) is
always refused; an output that already exists is refused unless the user asked to overwrite.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Iterator, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]
PARTIAL = ".partial-"  # in every temporary name, so leftovers of a killed process are recognisable


class OutputError(ValueError):
    """An output that would overwrite an input or an existing file, or cannot be written."""


def temporary_name(path: Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (encoders choose the format by
    the suffix): ``dir/.name.partial-1a2b3c4d.png`` for ``dir/name.png``."""
    return path.with_name(f".{path.stem}{PARTIAL}{secrets.token_hex(4)}{path.suffix}")


def remove(path: Path) -> None:
    """Remove a file or folder if it exists; never fails (clean-up on a path that is already failing)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """``with atomic_output("out/a.png") as tmp: save(tmp)``: ``tmp`` becomes ``out/a.png`` when
    the block completes, and is removed when it raises (any exception, KeyboardInterrupt and
    other BaseExceptions included). The parent folder must exist."""
    final = Path(path)
    partial = temporary_name(final)
    try:
        yield partial
        os.replace(partial, final)
    except BaseException:
        remove(partial)
        raise


def file_key(path: PathLike) -> Tuple[int, int]:
    """(device, inode): equal for two paths to the same file (links, hard links, other spellings)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths exist and are the same file."""
    try:
        return file_key(a) == file_key(b)
    except (OSError, ValueError):
        return False


def refuse_inputs(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Raise :class:`OutputError` when an output is one of the inputs (by any path or link)."""
    keys: Dict[Tuple[int, int], Path] = {}
    for item in inputs:
        try:
            keys[file_key(item)] = item
        except OSError:
            pass
    for out in outputs:
        try:
            key = file_key(out)
        except OSError:
            continue
        if key in keys:
            raise OutputError(f"output {out} is the input {keys[key]}: refusing to overwrite an input; choose another "
                              "output name or folder")


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path], *, overwrite: bool,
                  option: str = "--overwrite") -> None:
    """Refuse outputs that are inputs (always), folders, or files that exist already (unless
    ``overwrite``), before any work. Raises :class:`OutputError` naming the first files concerned."""
    refuse_inputs(outputs, inputs)
    existing = [out for out in outputs if os.path.lexists(out)]
    folder = next((out for out in existing if out.is_dir()), None)
    if folder is not None:
        raise OutputError(f"output {folder} exists and is a folder: remove it or choose another output name")
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputError(f"{len(existing)} output file(s) exist already ({shown}): pass {option} to replace them, "
                          "or choose another output folder")


def prepare_folder(path: PathLike, what: str = "output folder", hint: str = "choose another one") -> bool:
    """Make sure ``path`` is a folder this process can write to (created with its parents if
    needed; a test file is written, since os.access says yes to root on read-only file systems);
    returns True when it was created here. Raises :class:`OutputError` in one line, ending in
    ``hint``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder: {hint}")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-test")
        probe.touch()
        probe.unlink()
    except OSError as exc:
        if created:
            remove_if_empty(folder)
        raise OutputError(f"cannot write to the {what} {folder}: {exc.strerror or exc}; {hint}") from None
    return created


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
