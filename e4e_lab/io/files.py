"""Reading the files a user names (boxes and pairs JSON), with limits that keep a hostile
file from hanging or exhausting the process.

A path must be a regular file: a FIFO would block the reader forever and a device such
as ``/dev/zero`` never ends. JSON documents are capped in size (:data:`MAX_JSON_BYTES`)
and in nesting depth (:data:`MAX_JSON_DEPTH`): a boxes or pairs file needs four levels.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import BoxError

#: Largest boxes / pairs JSON file read, in bytes.
MAX_JSON_BYTES = 4 * 1024 * 1024
#: Deepest nesting of lists and objects accepted in a JSON input.
MAX_JSON_DEPTH = 16


def require_regular_file(path: Path, what: str, error: type[Exception]) -> os.stat_result:
    """``path``'s stat if it is a regular file (symbolic links followed); else ``error``
    naming ``what`` and the path. Checked without opening: opening a FIFO blocks."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist: check the path") from None
    except OSError as exc:
        raise error(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} '{path}' is a folder, not a file: give a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise error(f"{what} '{path}' is {kind}: give a regular file (save the data to a "
                    "file first)")
    return st


def _depth(data) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, level + 1) for c in children if isinstance(c, (list, dict)))
    return deepest


def read_json(path: Path, what: str):
    """A small JSON file parsed as data, with a :class:`BoxError` naming ``what``."""
    st = require_regular_file(path, what, BoxError)
    if st.st_size > MAX_JSON_BYTES:
        raise BoxError(f"{what} '{path}' is {st.st_size / 2**20:.1f} MiB, over the "
                       f"{MAX_JSON_BYTES // 2**20} MiB limit for a {what}: give the right file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)  # a file that grows while read is still capped
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BoxError(f"{what} '{path}' is not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start}): give a JSON file") from None
    except OSError as exc:
        raise BoxError(f"{what} '{path}' cannot be read: {exc}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise BoxError(f"{what} '{path}' is over the {MAX_JSON_BYTES // 2**20} MiB limit "
                       f"for a {what}: give the right file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BoxError(f"{what} '{path}' is not valid JSON ({exc})") from None
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BoxError(f"{what} '{path}' is nested too deeply to be a {what} (over "
                       f"{MAX_JSON_DEPTH} levels of lists and objects)")
    return data


def write_json(path: Path, data) -> None:
    from .cache import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))
