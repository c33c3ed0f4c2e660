"""Your own code behind a run, fingerprinted: env.json's ``code_sha256``.

    python launch.py model=custom model._target_=my_pkg.nets.Net         # my_pkg/nets.py
    python launch.py dataset=custom dataset._target_=my_pkg.data.load    # my_pkg/data.py
    python my_train.py -m source=init                                   # the script (nondet.api)

A run's directory is named by its configuration, which says which class builds the model but not
what that class does. The file that defines each ``_target_`` (and a ``nondet.api`` script) is
therefore hashed into env.json as ``code_sha256`` = {role: {"file", "sha256"}}, and a run is
refused when it would carry on across an edit: resumed from a checkpoint, skipped as finished,
added to a group (a table row) whose runs were trained under other code, or forked from a shared
onset prefix (``.prefix/<hash>/code.json``) trained under other code. The
hash is left out of the directory name on purpose: an edited comment would otherwise move every
finished run of a sweep. Runs recorded before ``code_sha256`` existed are taken as they are.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from pathlib import Path
from typing import Mapping

from nondet import onset, records
from nondet.config import ConfigError

log = logging.getLogger("nondet")

CODE_KEY = "code_sha256"
PREFIX_CODE_FILE = "code.json"  # beside a shared onset prefix's checkpoints


def code_files(config: Mapping) -> dict[str, str]:
    """{role: file} of the user code a run is built with: the module file that defines
    ``model._target_`` (``model=custom``) and ``dataset._target_`` (``dataset=custom``), and
    ``script`` (a training script of yours); then, as ``import NAME``, the modules of yours these
    import, and they in turn (``_imported_files``). A target that cannot be imported has none here
    (building it refuses it), nor one that an installed library defines (``_installed_roots``)."""
    files, found = {}, []
    for role, node in (("model._target_", config["model"]), ("dataset._target_", config["dataset"])):
        if node.get("name") == "custom" and node.get("_target_"):
            defined = _defining_module(role, node["_target_"])
            if defined is not None:
                files[role] = defined[0]
                found.append(defined)
    if config.get("script") and os.path.isfile(config["script"]):
        files["script"] = os.path.realpath(config["script"])
        found.append((files["script"], None))
    for path, module in found:
        for name, imported in _imported_files(path, module).items():
            files.setdefault(f"import {name}", imported)
    return files


def _defining_module(role: str, target: str) -> tuple[str, str] | None:
    """(file, module name) of the module that defines ``target``; None for a library's."""
    from nondet.usermodel import locate_target

    try:
        obj = locate_target(role, target)
    except ConfigError:
        return None
    # the module that defines it: a class re-exported by a package's __init__ lives elsewhere
    name = getattr(obj, "__module__", None) or ""
    if name not in sys.modules:
        name = target.rsplit(".", 1)[0]
    path = getattr(sys.modules.get(name), "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    path = os.path.realpath(path)
    return None if _installed(path) else (path, name)


def _installed(path: str) -> bool:
    return any(path.startswith(root) for root in _installed_roots())


def _imported_files(path: str, module: str | None) -> dict[str, str]:
    """{module name: file} of the modules of yours that ``path`` (the module ``module``, or a
    script: None) imports, and those import in turn: the ones loaded in this process from the
    directory tree it lives in (the ``sys.path`` entry of its package, or the script's
    directory) and not installed (``_installed``). A module imported only inside a function that
    has not run yet is not loaded, and so not found: nothing is imported to find it."""
    top = Path(path).parents[module.count(".") + (Path(path).name == "__init__.py")] if module else Path(path).parent
    tree = os.path.join(os.path.realpath(top), "")
    found: dict[str, str] = {}
    todo = [(path, module)]
    while todo:
        file, name = todo.pop()
        package = None if name is None else name if file.endswith("__init__.py") else name.rpartition(".")[0]
        for imported in _import_names(file, package):
            loaded = getattr(sys.modules.get(imported), "__file__", None)
            if imported in found or not loaded or not loaded.endswith(".py"):
                continue
            loaded = os.path.realpath(loaded)
            if loaded.startswith(tree) and not _installed(loaded) and loaded != os.path.realpath(path):
                found[imported] = loaded
                todo.append((loaded, imported))
    return found


_IMPORTS: dict[tuple, list[str]] = {}


def _import_names(path: str, package: str | None) -> list[str]:
    """The module names an ``import`` of ``path`` names (``from a import b``: ``a`` and ``a.b``;
    relative ones resolved in ``package``), remembered per (file, size, mtime)."""
    import ast

    stat = os.stat(path)
    key = (path, package, stat.st_size, stat.st_mtime_ns)
    if key not in _IMPORTS:
        names = []
        try:
            nodes = ast.walk(ast.parse(Path(path).read_bytes()))
        except (SyntaxError, ValueError):  # not Python we can read: its own file's hash covers it
            nodes = iter(())
        for node in nodes:
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    if not package:
                        continue
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names += [base] + [f"{base}.{alias.name}" for alias in node.names]
        _IMPORTS[key] = names
    return _IMPORTS[key]


def _installed_roots() -> list[str]:
    """Where installed code lives (the standard library, site-packages, nondet itself): a
    ``_target_`` there (``torchvision.models.resnet18``) is a library's, whose version env.json
    records already; an upgrade must not make a finished sweep refuse."""
    paths = sysconfig.get_paths()
    roots = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    roots.append(str(Path(__file__).resolve().parent))
    return [os.path.join(os.path.realpath(r), "") for r in roots]


def code_identity(config: Mapping) -> dict:
    """``{"code_sha256": {role: {"file": path, "sha256": digest}}}`` for env.json, or {} when the
    run uses none of your code."""
    from nondet.data import file_sha256

    files = code_files(config)
    if not files:
        return {}
    return {CODE_KEY: {role: {"file": path, "sha256": file_sha256(path)} for role, path in files.items()}}


def changed(recorded: Mapping | None, now: Mapping) -> list[tuple[str, str]]:
    """(role, file) of each piece of code whose SHA-256 differs from ``recorded`` (an env.json or
    a prefix's code.json). A record without ``code_sha256`` (older nondet) or without that role
    says nothing, and is taken as it is."""
    before = (recorded or {}).get(CODE_KEY) if isinstance(recorded, Mapping) else None
    if not isinstance(before, Mapping):
        return []
    return [(role, entry["file"]) for role, entry in now.get(CODE_KEY, {}).items()
            if isinstance(before.get(role), Mapping) and before[role].get("sha256") != entry["sha256"]]


def _read(path: Path) -> dict | None:
    try:
        record = records.read_json(path)
    except records.CorruptRunError:  # none, or unreadable: nothing recorded to compare
        return None
    return record if isinstance(record, dict) else None


def check_code_unchanged(config: Mapping) -> None:
    """Refuse, in one line, a run of a group (the configuration, ``replicate`` aside) any of whose
    finished or resumable runs names other code than the files hold now: extending a sweep
    (``replicates=3`` after 2) or training one replicate alone would otherwise add runs of the
    new code to a row of the old. Called by a job before it trains (``nondet.job.run_job``,
    ``nondet.api.Run``) and for every job when a sweep starts (``nondet.job.check_job``)."""
    now = code_identity(config)
    if not now:
        return
    group = records.run_dir(config, 0).parent
    for env in sorted(group.glob(f"r*/{records.ENV_FILE}")):
        directory = env.parent
        done = records.is_done(directory)
        if done or (directory / records.CHECKPOINT_FILE).exists():
            refuse(changed(_read(env), now), f"the {'finished' if done else 'resumable'} run {directory}")
    if 0 < config["onset_epoch"] < config["epochs"]:
        prefix = onset.prefix_dir(config)
        if any(prefix.glob("epoch_*.pt")):
            refuse(changed(_read(prefix / PREFIX_CODE_FILE), now), f"the shared onset prefix {prefix}")


def refuse(changes: list[tuple[str, str]], what: str) -> None:
    if changes:
        role, path = changes[0]
        raise ConfigError(
            f"{path} ({role}) has changed since {what} was trained with it: give the new code its own "
            f"sweep (a new sweep_name or output_root), or revert {os.path.basename(path)} to carry on "
            "with this one"
        )


def record_prefix_code(config: Mapping) -> None:
    """Write the code a shared onset prefix is trained with beside it (``check_code_unchanged``)."""
    identity = code_identity(config)
    if identity:
        records.write_json(onset.prefix_dir(config) / PREFIX_CODE_FILE, identity)
