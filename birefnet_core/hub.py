"""Getting checkpoint files from the Hugging Face Hub into a plain folder.

Layout: a model is stored as ``<folder>/<name>.safetensors`` directly in the folder the caller
gives (``<name>`` is the registry name, e.g. ``BiRefNet_lite.safetensors``, or ``<owner>--<repo>``
for a repository that is not in the registry), so a loader that lists ``*.safetensors`` in that
folder finds it again without network. While downloading, huggingface_hub works in
``<folder>/.download/<name>/``; the finished file is moved into place and that folder removed,
and so is everything in it when the download fails or is interrupted (on any exit: ComfyUI's
interrupt is a BaseException). Downloads are not resumed: hidden partial files of hundreds of MB
in a model folder that no UI shows would cost more than downloading again.

Order of attempts in :func:`download`: the file already in the folder (no network at all) unless
it is an incomplete download (:func:`safetensors_problem`); the same file in the Hugging Face cache
(``HF_HUB_CACHE``; hard-linked, else copied, into the folder); a download. The folder is checked
for writing before either. Any failure raises one :class:`ModelNotAvailableError` whose
single-line message names the repository, the file, its URL and where to put it by hand.

Before a download the Hub is asked once whether it is there at all (:func:`hub_unreachable`: one
HEAD request to the server of the URL huggingface_hub is about to fetch, through huggingface_hub's
own HTTP session, so its proxies and certificates apply, bounded by :data:`REACH_TIMEOUT` seconds
in all). Without it an unreachable Hub cost, measured with huggingface_hub 2.4, 24 s (DNS failure,
refused connection), 45 s (no route) or minutes (an address that accepts and never answers): it
sends the metadata request, then again with 5 retries 1, 2, 4, 8 and 8 s apart and a 60 s timeout
each, and none of that can be set for one call without changing it for the whole process. With it,
a DNS failure or a refused connection fails at once and silence after :data:`REACH_TIMEOUT`; any
HTTP answer (even an error status) counts as reachable, and the download then runs exactly as
huggingface_hub does it, so a slow connection only has to answer one small request within that
time (``HF_HUB_ETAG_TIMEOUT``, huggingface_hub's own "wait this long for the Hub's answer",
replaces it when set). Offline mode (``HF_HUB_OFFLINE``) skips the question and fails at once.
Nothing process-wide is changed. The cache lookup reads the cache folder only
(``try_to_load_from_cache``: ``hf_hub_download(local_files_only=True)`` builds request headers,
which in huggingface_hub 2.x may first fetch ``{HF_ENDPOINT}/api/agent-harnesses``).

FOCUS releases are detectron2 ``.pth`` checkpoints of 5 GB (DINOv2-L) or 15 GB (DINOv2-G), most of
it optimiser state and training-only tensors. For those the downloaded (or cached) file is read
memory-mapped and only its inference weights are stored, as ``<folder>/<name>.safetensors``
(1.5 GB / 4.9 GB; :func:`birefnet_core.convert.convert_file`, written atomically); the downloaded
``.pth`` is then removed with the staging folder (a copy in the Hugging Face cache is left alone).

Files other tools already downloaded (:func:`find_copy`): a registry entry's ``copies``
(:attr:`birefnet_core.registry.Variant.copies`: ComfyUI's ``models/background_removal``, 1038lab's
``models/RMBG/BiRefNet``, lldacing's ``models/BiRefNet``...) are looked up under ComfyUI's models
folder, and a complete one whose tensors have the entry's architecture is used where it is: never
moved, linked or modified. One that is incomplete or holds another model is skipped with a one-line
warning naming it. :func:`comfy_models_root` tells ComfyUI's models folder from our own models
folder (``<ComfyUI>/models/birefnet``), so the command line finds them too when
``BIREFNET_MODELS_DIR`` points there.

huggingface_hub is imported inside the functions only, so importing the core stays fast. No code
from the Hub is ever executed: only the weights file is fetched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import threading
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

from .files import OutputError, atomic_output, prepare_folder
from .registry import Variant, find_variant

logger = logging.getLogger(__name__)

#: sub-folder of the models folder where downloads in progress live
STAGING = ".download"

#: seconds the Hub has, in all, to answer one HEAD request before a download is given up as
#: "Hub unreachable" (``HF_HUB_ETAG_TIMEOUT`` replaces it when set); see :func:`hub_unreachable`
REACH_TIMEOUT = 2.0

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class ModelNotAvailableError(RuntimeError):
    """The weights are neither in the models folder nor obtainable from the Hub right now."""


class ModelAccessError(ModelNotAvailableError):
    """The Hub refused access (gated or private repository, HTTP 401/403): a token is needed."""


class HubFile(NamedTuple):
    """One weights file on the Hub and the name it is stored under locally."""

    repo_id: str
    filename: str
    name: str  # local file stem: ``<folder>/<name>.safetensors``
    gated: bool = False
    family: str = "birefnet"

    @property
    def slimmed(self) -> bool:
        """True when the Hub file is not the file stored (a checkpoint whose inference weights are
        kept as ``<name>.safetensors``: FOCUS's detectron2 ``.pth`` files)."""
        return not self.filename.lower().endswith(".safetensors")

    @property
    def title(self) -> str:
        return "FOCUS" if self.family == "focus" else "BiRefNet"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


def is_repo_id(text: str) -> bool:
    """True for a syntactically valid ``owner/name`` Hub repository id (never a path with '..')."""
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


def hub_file(source: Union[Variant, str]) -> HubFile:
    """The Hub file for a registry variant, a registry name, or a repo id outside the registry
    (whose ``model.safetensors`` is stored as ``<owner>--<name>.safetensors``)."""
    variant = source if isinstance(source, Variant) else find_variant(source)
    if variant is not None:
        return HubFile(variant.repo_id, variant.filename, variant.name, variant.gated, variant.family)
    if not is_repo_id(source):
        raise ValueError(f"{source!r} is neither a known BiRefNet model name nor a Hugging Face repo id 'owner/name'")
    return HubFile(source, "model.safetensors", source.replace("/", "--"))


def local_path(source: Union[Variant, str], folder: Union[str, Path]) -> Path:
    """Where :func:`download` stores ``source`` in ``folder``."""
    return Path(folder).expanduser() / f"{hub_file(source).name}.safetensors"


# ------------------------------------------------------------------- files other tools downloaded

def comfy_models_root(folder: Union[str, Path]) -> Optional[Path]:
    """ComfyUI's models folder when ``folder`` is the ``birefnet`` folder in it
    (``<ComfyUI>/models/birefnet``, any case): where ComfyUI's own nodes and other packs keep their
    files (see :func:`find_copy`). None for any other folder (the default ``~/.cache/birefnet``)."""
    folder = Path(folder).expanduser()
    if folder.name.lower() == "birefnet" and folder.parent.name.lower() == "models":
        return folder.parent
    return None


def copy_candidates(source: Union[Variant, str], roots: Iterable[Union[str, Path]] = (),
                    key_folders: Optional[Mapping[str, Sequence[Union[str, Path]]]] = None) -> List[Path]:
    """Where copies of registry entry ``source`` may lie: each of its ``copies`` under each of
    ``roots`` (ComfyUI models folders), and under the folders ``key_folders`` gives for the copy's
    first part (ComfyUI's folder keys, lower case: ``{"background_removal": [...], "rmbg": [...]}``,
    which ``extra_model_paths.yaml`` may extend). No duplicates; nothing is checked on disk. The
    relative paths are the registry's own constants, never a user's text."""
    variant = source if isinstance(source, Variant) else find_variant(source)
    if variant is None:
        return []
    folders = {str(k).lower(): list(v) for k, v in (key_folders or {}).items()}
    roots = [Path(r).expanduser() for r in roots]
    out: List[Path] = []
    seen = set()
    for relative in variant.copies:
        head, _, rest = relative.partition("/")
        for path in [root / relative for root in roots] + [Path(f).expanduser() / rest
                                                           for f in folders.get(head.lower(), [])]:
            key = os.path.normcase(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def weights_file_problem(path: Union[str, Path]) -> Optional[str]:
    """Why the weights file ``path`` is incomplete or damaged, told without reading its tensors
    (a ``.safetensors`` header and size, a torch zip file's directory), else None."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return safetensors_problem(path)
    from .checkpoint import _zip_problem  # (imported here: checkpoint imports this module)

    if path.stat().st_size == 0:
        return "it is empty"
    problem = _zip_problem(path)  # a zip-format torch file's directory; None for a legacy pickle
    return None if problem is None else problem.replace(f"{path} is ", "it is ", 1).split("; ")[0]


def _copy_problem(path: Path, variant: Variant) -> Optional[str]:
    """None when ``path`` is a complete file holding ``variant``'s architecture (for safetensors,
    read from the header; a pickle's tensors are only checked when it is loaded), else why not."""
    problem = weights_file_problem(path)
    if problem is not None:
        return problem
    if path.suffix.lower() != ".safetensors":
        return None
    from .checkpoint import peek_architecture

    found = peek_architecture(path)
    if found is None:
        return "its tensors are not a checkpoint of a known family (or an architecture this pack does not run)"
    family, architecture = found
    if family.name != variant.family or family.describe(architecture) != variant.backbone:
        return (f"it holds a {family.describe(architecture)} {family.title}, not {variant.name}'s "
                f"{variant.backbone}")
    return None


def find_copy(source: Union[Variant, str], roots: Iterable[Union[str, Path]] = (),
              key_folders: Optional[Mapping[str, Sequence[Union[str, Path]]]] = None, *,
              quiet: bool = False) -> Optional[Path]:
    """The first complete copy of registry entry ``source`` that other tools keep under ComfyUI's
    models folders ``roots`` (and ``key_folders``, see :func:`copy_candidates`), to be used where it
    is, else None. Also looked for: the Hugging Face cache layout that ComfyUI_BiRefNet_Universal
    keeps in ``<root>/BiRefNet/<repo name>`` (read from the folder only, no request).

    A copy that is incomplete, damaged or holds another architecture is skipped with a one-line
    warning naming the file (no warning with ``quiet``: a listing that runs often)."""
    variant = source if isinstance(source, Variant) else find_variant(source)
    if variant is None:
        return None
    roots = [Path(r).expanduser() for r in roots]

    def usable(path: Path) -> bool:
        """A complete copy of the variant's checkpoint (else warned about, unless quiet)."""
        try:
            problem = _copy_problem(path, variant) if path.is_file() else "it is not a file"
        except (OSError, ValueError) as err:
            problem = " ".join(str(err).split())[:160]
        if problem is not None and not quiet:
            logger.warning("not using %s for %s: %s", path, variant.name, problem)
        return problem is None

    for path in copy_candidates(variant, roots, key_folders):
        if path.is_file() and usable(path):
            return path
    target = hub_file(variant)
    for root in roots:
        cache = root / "BiRefNet" / variant.repo_id.split("/")[1]
        if not cache.is_dir():
            continue
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(target.repo_id, target.filename, cache_dir=cache)
        except Exception:
            found = None
        if isinstance(found, str) and not target.slimmed and usable(Path(found)):
            return Path(found)
    return None


Progress = Union[bool, Callable[[int, int], None]]


def download(source: Union[Variant, str], folder: Union[str, Path], *, token: Optional[str] = None,
             progress: Progress = True, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Make sure the weights of ``source`` (a :class:`Variant`, registry name or repo id) are in
    ``folder`` and return their path, ``<folder>/<name>.safetensors``.

    A file already there is returned without touching the network. ``token`` (default: the
    ``HF_TOKEN`` environment variable / saved login) is needed for gated repositories such as
    RMBG-2.0. ``cache_dir`` is the Hugging Face cache searched before downloading (default: the
    standard one). ``progress``: True for huggingface_hub's console bar, False for none, or a
    callback ``progress(bytes_done, bytes_total)``. Raises :class:`ModelNotAvailableError` (:class:`ModelAccessError` for 401/403).

    A FOCUS entry's ``.pth`` is fetched into the staging folder, its inference weights are stored
    as ``<folder>/<name>.safetensors`` and the ``.pth`` is removed (an INFO log line says where
    the weights went and what was left out); a ``.pth`` found in the Hugging Face cache is
    reduced the same way and left in the cache.
    """
    target = hub_file(source)
    folder = Path(folder).expanduser()
    final = folder / f"{target.name}.safetensors"
    present = is_weights_file(final)
    broken = safetensors_problem(final) if present else None
    if present and broken is None:
        return final
    if broken is not None:
        logger.info("%s is an incomplete download (%s): fetching it again", final, broken)
    _check_writable(folder)

    from huggingface_hub import constants, hf_hub_download, hf_hub_url, try_to_load_from_cache

    try:  # already in the Hugging Face cache? (the cache folder only, no request: see the module docstring)
        found = try_to_load_from_cache(target.repo_id, target.filename, cache_dir=cache_dir)
    except Exception:
        found = None
    cached = Path(found) if isinstance(found, str) else None
    if cached is not None and cached.is_file() and not target.slimmed and safetensors_problem(cached) is None:
        _place_copy(cached.resolve(), final)  # (a broken one is skipped)
        return final
    if cached is not None and cached.is_file() and target.slimmed:
        try:
            _keep_inference_weights(cached.resolve(), final, target, "found in the Hugging Face cache")
            return final
        except ModelNotAvailableError as err:
            logger.warning("%s; downloading it again", err)

    unreachable = None if constants.HF_HUB_OFFLINE else hub_unreachable(hf_hub_url(target.repo_id, target.filename))
    if unreachable is not None:
        raise _explain(HubUnreachableError(unreachable), target, folder, broken) from None

    staging = folder / STAGING / target.name
    try:  # an interrupt (a BaseException) passes unchanged; the staging folder goes on any exit
        try:
            got = Path(hf_hub_download(target.repo_id, target.filename, local_dir=staging, token=token,
                                       tqdm_class=_tqdm_class(progress)))
            if not target.slimmed:
                os.replace(got, final)
        except Exception as err:
            raise _explain(err, target, folder, broken) from err
        if target.slimmed:
            _keep_inference_weights(got, final, target, "downloaded")
            got.unlink(missing_ok=True)
    finally:
        _clean_staging(staging)
    return final


class HubUnreachableError(ConnectionError):
    """What :func:`hub_unreachable` found (turned into a :class:`ModelNotAvailableError`)."""


def reach_timeout() -> float:
    """:data:`REACH_TIMEOUT`, or ``HF_HUB_ETAG_TIMEOUT`` when that is set to a positive number."""
    try:
        seconds = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip() or "nan")
    except ValueError:
        seconds = float("nan")
    return seconds if seconds > 0 else REACH_TIMEOUT  # (nan > 0 is False)


def hub_unreachable(url: Optional[str] = None, seconds: Optional[float] = None) -> Optional[str]:
    """None when the server of ``url`` (default: the Hub, ``HF_ENDPOINT``) answers one HEAD request
    to its root, with any HTTP status, within ``seconds`` (default :func:`reach_timeout`) in all;
    else one line saying what happened. :func:`download` passes the URL huggingface_hub is about
    to fetch, so the server asked is the one it would use.

    The request goes through huggingface_hub's HTTP session (requests or httpx, whichever the
    installed version uses), so the proxies, certificates and client factory the download would
    use apply to it too. It runs in a daemon thread so that the bound holds in all (the session's
    own timeouts apply to each phase: connect, then read); a request still hanging when the time
    is up ends on its own a second later and changes nothing. No offline-mode check here:
    in offline mode huggingface_hub's session refuses every request."""
    from inspect import signature
    from urllib.parse import urlsplit

    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    seconds = reach_timeout() if seconds is None else seconds
    parts = urlsplit(url or constants.ENDPOINT)
    server = f"{parts.scheme}://{parts.netloc}"
    outcome: list = []

    def ask() -> None:
        try:
            session = get_session()  # a redirect is an answer: not followed (requests: never for HEAD)
            kwargs = {"follow_redirects": False} if "follow_redirects" in signature(session.head).parameters else {}
            session.head(server + "/", timeout=seconds + 1, **kwargs)  # (the join below decides)
        except Exception as err:  # any failure of the request itself: the server gave no answer
            outcome.append(err)
        else:
            outcome.append(None)

    worker = threading.Thread(target=ask, name="birefnet-hub-reachable", daemon=True)
    worker.start()
    worker.join(seconds)
    err = outcome[0] if outcome else TimeoutError()
    if err is not None and any("Timeout" in cls.__name__ for cls in type(err).__mro__):
        return (f"the Hub at {server} gave no answer within {seconds:g} s (a slow connection may need more: set "
                f"HF_HUB_ETAG_TIMEOUT to the seconds to wait)")
    if err is None:
        return None
    detail = " ".join(str(err).split())[:160]
    return f"the Hub at {server} cannot be reached ({type(err).__name__}{': ' + detail if detail else ''})"


def _keep_inference_weights(source: Path, final: Path, target: HubFile, how: str) -> None:
    """Store the inference weights of the checkpoint ``source`` as ``final`` (atomically), or
    raise :class:`ModelNotAvailableError` in one line when ``source`` is not a sound checkpoint
    of ``target``'s family."""
    from .convert import convert_file

    size = source.stat().st_size
    problem = None
    try:
        done = convert_file(source, final, overwrite=True, check_outputs=False)
    except ValueError as err:
        problem = " ".join(str(err).split())
    else:
        if done.family != target.family:
            final.unlink(missing_ok=True)
            problem = f"it holds a {done.family} checkpoint, not {target.title}"
    if problem is not None:
        raise ModelNotAvailableError(
            f"{target.title} model '{target.name}': the file '{target.filename}' {how} from Hugging Face repo "
            f"'{target.repo_id}' is not usable ({problem}); download it again, or fetch {target.url} by hand and "
            f"convert it with: python -m birefnet_core convert {target.filename} {final}")
    logger.info("%s model %s: stored the %d inference tensors of the %s %s (%.2f GB) as %s (%.2f GB); %d "
                "training-only tensors and the optimiser state left out", target.title, target.name, done.tensors, how,
                target.filename, size / 1e9, final, done.nbytes / 1e9, done.dropped)


def is_weights_file(path: Union[str, Path]) -> bool:
    """True when ``path`` is a file, False when nothing is there. A folder (or another non-file)
    there, a folder that cannot be searched or a name no file can have raise one line naming it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError as err:
        raise PermissionError(f"cannot look into the folder {path.parent} ({err.strerror}): check its "
                              "permissions, or choose another models folder") from None
    except (OSError, ValueError) as err:  # a NUL byte, a name too long, a loop of links
        reason = getattr(err, "strerror", None) or err
        raise ValueError(f"cannot use {str(path)!r} as a weights file: {reason}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a special file"
        raise ValueError(f"{path} is {kind}, not a weights file; remove or rename it")
    return True


def safetensors_problem(path: Union[str, Path]) -> Optional[str]:
    """What makes ``path`` an incomplete or corrupt ``.safetensors`` file, told from its header and
    size alone (no tensor is read), or None when the file is exactly as long as its header says:
    8 bytes of header length, the JSON header, then the data up to the last tensor's end."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it is incomplete: {size} bytes, less than a safetensors header"
        length = int.from_bytes(head, "little")
        if length > min(size - 8, 100_000_000):
            return f"it is incomplete or corrupt: its header claims {length:,} bytes, the file holds {size:,}"
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "it is corrupt: its header is not a safetensors header"
    expected = 8 + length + end
    if size < expected:
        return f"it is incomplete: {size:,} of the {expected:,} bytes its header announces"
    if size > expected:
        return f"it is corrupt: {size:,} bytes where its header announces {expected:,}"
    return None


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a file there (os.access cannot tell: it says yes to
    root on read-only file systems)."""
    try:
        prepare_folder(folder, "models folder", "choose another with --models-dir or BIREFNET_MODELS_DIR")
    except OutputError as err:
        raise ModelNotAvailableError(str(err)) from None


def _place_copy(source: Path, final: Path) -> None:
    """Hard-link (or copy) ``source`` to ``final`` atomically; a copy that fails leaves nothing."""
    with atomic_output(final) as part:
        try:
            os.link(source, part)
        except OSError:
            shutil.copyfile(source, part)


def _clean_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.rmdir()  # only if empty
    except OSError:
        pass


def _tqdm_class(progress: Progress) -> Optional[type]:
    """huggingface_hub's ``tqdm_class`` for a ``progress`` argument (None: its default bar)."""
    if progress is True:
        return None
    from tqdm.auto import tqdm

    callback = progress if callable(progress) else None

    class Reporting(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = callback is None
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            if callback is not None:
                callback(int(self.n), int(self.total or 0))
            return shown

    return Reporting


def _explain(err: BaseException, target: HubFile, folder: Path,
             broken: Optional[str] = None) -> ModelNotAvailableError:
    """One single-line error for any failure to fetch ``target`` (``broken``: what is wrong with
    the incomplete copy in the folder, if there is one)."""
    from huggingface_hub import constants

    kinds = {cls.__name__ for cls in type(err).__mro__}
    status = getattr(getattr(err, "response", None), "status_code", None)
    error_cls = ModelNotAvailableError
    if "GatedRepoError" in kinds or status in (401, 403):
        error_cls = ModelAccessError
        reason = (f"the Hub refused access (HTTP {status or 401}): the repository is gated or private; log in on "
                  f"https://huggingface.co/{target.repo_id}, accept its licence, create a read token and set the "
                  f"HF_TOKEN environment variable (or pass token=)")
    elif "RepositoryNotFoundError" in kinds:
        reason = "the repository does not exist on the Hub (or is private: set HF_TOKEN)"
    elif "EntryNotFoundError" in kinds and "LocalEntryNotFoundError" not in kinds:
        reason = f"the repository has no file '{target.filename}'"
    elif constants.HF_HUB_OFFLINE or "OfflineModeIsEnabled" in kinds:
        reason = "Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)"
    elif isinstance(err, HubUnreachableError):
        reason = f"no connection to the Hub: {err}"
    else:
        detail = " ".join(str(err).split())[:200]
        reason = f"it could not be downloaded (no connection to the Hub? {type(err).__name__}: {detail})"
    if target.gated and error_cls is not ModelAccessError:
        reason += "; note this repository is gated: accept its licence on the Hub and set HF_TOKEN"
    final = folder / f"{target.name}.safetensors"
    if broken is not None:
        reason = f"{final} is a broken download ({broken}) and fetching it again failed: {reason}; delete that file"
    if target.slimmed:
        by_hand = (f"download {target.url} and keep its inference weights with: python -m birefnet_core convert "
                   f"{target.filename} {final}")
    else:
        by_hand = f"download {target.url} and save it as '{final.name}' in the folder {folder} (i.e. {final})"
    return error_cls(
        f"{target.title} model '{target.name}' (file '{target.filename}' of Hugging Face repo '{target.repo_id}') is "
        f"not available: {reason}. To install it by hand, {by_hand}."
    )
