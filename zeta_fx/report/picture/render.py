"""Rendering DOT text with Graphviz's ``dot`` program, and what to do without it.

The format comes from the file's suffix. Graphviz is not a Python dependency: when ``dot``
is not installed the DOT text is written instead, and :class:`DrawResult` gives the command
that renders it.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> result = draw_dot("digraph { a -> b }", folder / "g.gv")
>>> result.format, result.rendered, result.path.read_text()
('dot', False, 'digraph { a -> b }')
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from zeta_fx.errors import RenderError

__all__ = ["DrawResult", "draw_dot", "check_folder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrawResult:
    """What :func:`draw_dot` wrote: ``path``; ``rendered`` is false when only the DOT text
    was written (Graphviz missing), and ``command`` then renders it."""

    path: Path
    format: str
    rendered: bool
    command: str = ""

    def __str__(self) -> str:
        if self.rendered:
            return f"wrote {self.path} ({self.format}, rendered with Graphviz dot)"
        if self.command:
            return (f"wrote {self.path} (Graphviz `dot` is not installed; render it with: "
                    f"{self.command})")
        return f"wrote {self.path} (DOT text)"


def check_folder(path: str | Path, doing: str = "draw to") -> None:
    """Refuse a picture path whose folder does not exist, naming the folder (Graphviz
    would report it as a bad format, and writing the DOT text as a missing file).

    >>> check_folder("/no/such/folder/g.svg")
    Traceback (most recent call last):
    ...
    zeta_fx.errors.RenderError: cannot draw to '/no/such/folder/g.svg': the folder '/no/such/folder' does not exist; create it first (mkdir -p /no/such/folder) or give a path in an existing folder
    """
    folder = Path(path).parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise RenderError(f"cannot {doing} {str(path)!r}: the folder {str(folder)!r} {what}; "
                          f"create it first (mkdir -p {folder}) or give a path in an existing "
                          "folder")


def draw_dot(dot: str, path: str | Path, *, format: str | None = None,
             dot_program: str = "dot") -> DrawResult:
    """Render DOT text to ``path`` with Graphviz; the format comes from the suffix.

    ``.dot``/``.gv`` writes the text itself. When the ``dot`` program is not installed,
    the text goes to ``path`` with a ``.dot`` suffix and the result says how to render it.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "g.dot"
    >>> draw_dot("digraph { a -> b }", target).rendered
    False
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if not fmt:
        raise ValueError(f"cannot tell the picture format of {str(path)!r}: give it a suffix "
                         "(.svg, .png, .pdf, .dot) or pass format=...")
    check_folder(path)
    if fmt in ("dot", "gv"):
        path.write_text(dot)
        return DrawResult(path, "dot", False)
    program = shutil.which(dot_program)
    if program is None:
        dot_path = path.with_suffix(".dot")
        dot_path.write_text(dot)
        command = f"dot -T{fmt} {dot_path} -o {path}"
        logger.warning("zeta_fx: Graphviz `dot` is not installed; wrote %s; render it with: %s "
                       "(install Graphviz: apt-get install graphviz, brew install graphviz)",
                       dot_path, command)
        return DrawResult(dot_path, "dot", False, command)
    proc = subprocess.run([program, f"-T{fmt}", "-o", str(path)], input=dot.encode(),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RenderError(f"Graphviz dot could not render {str(path)!r} as {fmt!r}: "
                          f"{err[0] if err else 'exit code ' + str(proc.returncode)}; use a "
                          "format dot knows (svg, png, pdf) or a .dot suffix")
    logger.info("zeta_fx: drew %s", path)
    return DrawResult(path, fmt, True)
