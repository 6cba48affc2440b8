"""The one set of versions: constraints.txt pins every package the project installs.

The Dockerfile, the README's install lines and .ci/run all install with
``-c constraints.txt``, so the image ships the versions the tests ran with. The pins are
the installed versions of the project's dependency closure (its dependencies plus the
``server`` and ``test`` extras, followed through every installed package's own
requirements for this platform, linux x86_64 like the image), and the ``gpu`` extra the
image adds: installed where there are GPUs, so its pins are kept as they are where it is
not installed (a CPU machine). After changing pyproject.toml, install into a venv and
rewrite the file from it:

    .venv/bin/pip install -e '.[server,test]' -c constraints.txt   # or without -c to move pins
    .venv/bin/python -m tests.pins > constraints.txt
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
EXTRAS = ("server", "test")
KEPT_EXTRAS = ("gpu",)  # pinned for the image, installed only on GPU machines
HEADER = """\
# One set of versions for the image, CI and a developer's venv (see tests/pins.py).
# Install with: pip install -c constraints.txt -e '.[test]'   (the Dockerfile: '.[server,gpu]')
# Regenerate from a venv that has the project installed: python -m tests.pins > constraints.txt
"""


def project_requirements(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    rows = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    return [Requirement(r) for r in rows]


def installed_closure(extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """{canonical name: installed version} for every package the project needs here.

    Raises PackageNotFoundError naming a requirement that is not installed."""
    versions: dict[str, str] = {}
    done: set[tuple[str, frozenset]] = set()
    todo = project_requirements(extras)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(req.name)
        versions[canonicalize_name(req.name)] = dist.version
        for row in dist.requires or []:
            sub = Requirement(row)
            if sub.marker and not any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                continue
            todo.append(sub)
    return versions


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{canonical name: pinned version}; every line must be an exact ``name==version`` pin."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.marker or req.url:
            raise ValueError(f"{path}:{n}: {line!r} is not an exact pin (name==version)")
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def kept_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """The ``gpu`` extra's packages: their installed versions, else the pins they have now."""
    pins = read_constraints(path) if path.exists() else {}
    kept = {}
    for req in project_requirements(KEPT_EXTRAS):
        name = canonicalize_name(req.name)
        try:
            kept[name] = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if name in pins:
                kept[name] = pins[name]
    return kept


def render(versions: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={versions[name]}\n" for name in sorted(versions))


if __name__ == "__main__":
    print(render(installed_closure() | kept_pins()), end="")
