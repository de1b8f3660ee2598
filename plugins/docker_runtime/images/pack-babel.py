"""Copy a Python that runs babel into an image's root file system.

    .venv/bin/python pack-babel.py ROOT

Run with the project's own interpreter: it copies that interpreter (its
binary, ``libpython`` and standard library, without tests and tools), and
every distribution ``nodevisor-babel`` needs, from the project's
environment, so the image holds exactly the locked versions and nothing is
downloaded. The layout is the usual one under ``ROOT/usr``: the binary at
``usr/bin/python3``, the library at ``usr/lib/python3.11`` with its
``site-packages``. It prints the interpreter and the shared objects it copied,
one a line, for
the caller to ``ldd``.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

TOP = "nodevisor-babel"
# Parts of the standard library babel never imports.
SKIPPED = [
    "site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
    "lib2to3", "distutils", "pydoc_data", "config-*", "__phello__", "_tkinter*",
]  # fmt: skip


def closure(top: str) -> list[metadata.Distribution]:
    """``top`` and every distribution it requires, without extras."""
    found: dict[str, metadata.Distribution] = {}
    todo = [top]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist = metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(found.values(), key=lambda dist: dist.metadata["Name"])


def copy_distribution(dist: metadata.Distribution, site: Path) -> None:
    editable = _editable_source(dist)
    for file in dist.files or []:
        source = Path(dist.locate_file(file))
        if editable and file.suffix == ".pth":
            continue
        if "__pycache__" in file.parts or file.parts[0].startswith(".."):
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    if editable is not None:
        # A workspace member: its dist-info is here, its code in src/.
        for package in editable.iterdir():
            if (package / "__init__.py").exists():
                shutil.copytree(
                    package,
                    site / package.name,
                    ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True,
                )


def _editable_source(dist: metadata.Distribution) -> Path | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    url = json.loads(text)
    if not url.get("dir_info", {}).get("editable"):
        return None
    return Path(url["url"].removeprefix("file://")) / "src"


def copy_python(root: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    prefix = Path(sys.base_prefix)
    usr = root / "usr"
    (usr / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(prefix / "bin" / version, usr / "bin" / version)
    (usr / "bin" / "python3").symlink_to(version)
    library = sysconfig.get_config_var("INSTSONAME")
    if library and (prefix / "lib" / library).exists():
        # Where the loader looks without an ld.so.cache.
        multiarch = usr / "lib" / "x86_64-linux-gnu"
        multiarch.mkdir(parents=True, exist_ok=True)
        shutil.copy2(prefix / "lib" / library, multiarch / library)
    stdlib = usr / "lib" / version
    shutil.copytree(
        Path(sysconfig.get_paths()["stdlib"]),
        stdlib,
        ignore=shutil.ignore_patterns(*SKIPPED),
        symlinks=True,
    )
    return stdlib / "site-packages"


def main() -> None:
    root = Path(sys.argv[1])
    site = copy_python(root)
    for dist in closure(TOP):
        copy_distribution(dist, site)
    # The interpreter links libraries too (Debian's links libz and libexpat).
    binaries = sorted((root / "usr" / "bin").glob("python3.*"))
    for shared in [*binaries, *sorted(root.rglob("*.so*"))]:
        if shared.is_file() and not shared.is_symlink():
            print(shared)


if __name__ == "__main__":
    main()
