"""A TorchServe archive's ``requirements.txt``, checked before anything is installed.

With ``install_py_dep_per_model`` TorchServe pip-installs an archive's requirements file (the
archiver's ``--requirements-file``) for that model. raytorch installs them into a folder of
their own that only the model's replicas have on their path, never in the server's environment
(deployments/management/py_deps.py). Registering reads the file here first: each line must be
a plain requirement (``name[extras] <specifiers> ; marker``) or a relative path to a file or
folder inside the archive (a wheel shipped with ``--extra-files``); pip options (``-r``, ``-e``,
``--index-url``, ...), URLs and other paths are refused, so a registration can neither point
pip at another index nor install code from a place ``allowed_urls`` would refuse. No Ray here.
"""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from handlers.errors import BadInputError

MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_REQUIREMENTS = 200


# How pip tells a local file or folder from a requirement name.
PATH_PREFIXES = ("./", "../", "/", "~")
ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")


def _inside_archive(line: str, where: str, base: Path | None) -> str:
    """A path line, kept as written, when it names an existing file or folder inside ``base``."""
    if base is None or line.startswith(("/", "~")):
        raise BadInputError(f"{where}: only paths inside the archive are accepted")
    target = (base / line).resolve()
    if not target.is_relative_to(base.resolve()):
        raise BadInputError(f"{where}: only paths inside the archive are accepted")
    if not target.exists():
        raise BadInputError(f"{where}: the archive has no such file")
    return line


def parse_requirements(text: str, source: str = "requirements.txt", base: Path | None = None) -> list[str]:
    """The requirements of ``text``, one normalised string each (a path as written);
    BadInputError naming the first line that is neither a plain requirement nor a path inside
    ``base`` (the requirements file's folder in the archive; None: no path is accepted)."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number} ({line!r})"
        if line.startswith("-"):
            raise BadInputError(f"{where}: pip options are not accepted, only package requirements")
        named_file = line.lower().endswith(ARCHIVE_SUFFIXES) and not any(c in line for c in "@:")
        if line.startswith(PATH_PREFIXES) or named_file:
            found.append(_inside_archive(line, where, base))
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise BadInputError(f"{where} is not a valid requirement: {exc}") from None
        if requirement.url:
            raise BadInputError(f"{where}: requirements from URLs or paths are not accepted")
        found.append(str(requirement))
    if len(found) > MAX_REQUIREMENTS:
        raise BadInputError(f"{source} lists {len(found)} requirements, over the limit of {MAX_REQUIREMENTS}")
    return found


def read_requirements(path: Path) -> list[str]:
    """:func:`parse_requirements` of a file of the archive."""
    if path.stat().st_size > MAX_REQUIREMENTS_BYTES:
        raise BadInputError(f"{path.name} is over {MAX_REQUIREMENTS_BYTES} bytes: refused")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path.name} is not UTF-8 text") from None
    return parse_requirements(text, path.name, path.parent)
