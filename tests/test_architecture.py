"""ARCHITECTURE.md's rules, checked on the source of every module in ``avfusion/``,
``shards/`` and ``jobs/``.

Each module is parsed, never imported, so the checks start no Ray and no process. An
import anywhere in a module counts, at its top or inside a function. Each check lists
its offences as ``path:line: what``; the ``*_can_fail`` tests feed the checkers a small
offending source each, so a checker that stopped seeing anything would fail too.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avfusion", "shards", "jobs")
LIBRARY = ("avfusion", "shards")
STORAGE = "avfusion.storage"
RAY_HOME = "avfusion.executor"  # the one package that may import Ray

# Modules that may touch local files themselves, each with the reason (ARCHITECTURE.md,
# Conventions: a process's own temp files, the media generators, the demo's folder, the
# benchmarks' scratch folders). Every other module goes through ``avfusion.storage``.
FILE_ACCESS_ALLOWED = {
    "avfusion.cpus": "the kernel's cgroup and /proc/self files (the CPU quota): not data, and no URL",
    "avfusion.synth": "a media generator: writes the clips it makes into a local folder",
    "avfusion.train": "TensorBoard writes to a local folder: a temp one, mirrored by storage.upload_tree",
    "jobs.demo": "the demo's own local folder of shards, runs and labels, which it reads back to print",
    "jobs.bench.*": "benchmarks' scratch folders, /proc and cgroup files",
}

# Calls that open, write, move or delete files (qualified names after import aliases).
OPENING = {
    "builtins.open",
    "io.open",
    "os.open",
    "os.fdopen",
    "codecs.open",
    "os.replace",
    "os.rename",
    "os.renames",
    "os.remove",
    "os.unlink",
    "os.rmdir",
    "os.removedirs",
    "os.mkdir",
    "os.makedirs",
    "os.truncate",
    "shutil.copy",
    "shutil.copy2",
    "shutil.copyfile",
    "shutil.copyfileobj",
    "shutil.copytree",
    "shutil.move",
    "shutil.rmtree",
    "shutil.make_archive",
    "shutil.unpack_archive",
    "torch.save",
    "torch.load",
}
OPENING_MODULES = ("tempfile", "fsspec")  # every call into these makes or opens files
# Calls that open a file only when handed a path, by (position, keyword) of that
# argument: fine with a buffer, or with the local path ``avfusion.storage`` handed out
# (``with storage.atomic_file(url) as tmp:``).
PATH_TAKING = {
    "pyarrow.parquet.write_table": (1, "where"),
    "pyarrow.parquet.read_table": (0, "source"),
    "pyarrow.parquet.ParquetFile": (0, "source"),
    "pyarrow.parquet.ParquetWriter": (0, "where"),
    "tarfile.open": (0, "name"),
    "tarfile.TarFile": (0, "name"),
    "zipfile.ZipFile": (0, "file"),
    "matplotlib.pyplot.savefig": (0, "fname"),
}
# Methods that open, write or delete a file when called on an object that is not an
# imported module (a ``Path``, a figure): always, or, for these, when given a path.
PATH_METHODS = {
    "open",
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "unlink",
    "touch",
    "mkdir",
    "rmdir",
}
PATH_TAKING_METHODS = {"savefig": (0, "fname")}
BUFFERS = {"io.BytesIO", "io.StringIO", "pyarrow.BufferReader", "pyarrow.py_buffer"}
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


@dataclass(frozen=True)
class Module:
    name: str  # dotted: avfusion.preprocess.run
    path: str  # for messages: avfusion/preprocess/run.py
    tree: ast.Module
    is_package: bool = False


def parse(name: str, source: str, is_package: bool = False) -> Module:
    """A module from source text (what the ``*_can_fail`` tests feed the checkers)."""
    path = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    return Module(name, path, ast.parse(source, path), is_package)


def repo_modules(packages: tuple[str, ...] = PACKAGES) -> list[Module]:
    """Every ``.py`` under the packages' folders, whatever the modules are called today."""
    found = []
    for package in packages:
        for file in sorted((REPO / package).rglob("*.py")):
            rel = file.relative_to(REPO)
            parts = rel.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            tree = ast.parse(file.read_text(encoding="utf-8"), str(rel))
            found.append(Module(name, str(rel), tree, is_package))
    return found


def _base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def imports(module: Module) -> Iterator[tuple[int, str]]:
    """(line, imported name) for every import in the module: ``import a.b`` gives
    ``a.b``, ``from a import b`` gives ``a.b`` (a module or a name in ``a``)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_of(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (None: outside our packages)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def import_graph(modules: list[Module]) -> dict[str, dict[str, int]]:
    """module → {module it imports: line of the first such import}, within ``modules``."""
    known = {m.name for m in modules}
    graph: dict[str, dict[str, int]] = {m.name: {} for m in modules}
    for m in modules:
        for line, name in imports(m):
            target = _module_of(name, known)
            if target is not None and target != m.name:
                graph[m.name].setdefault(target, line)
    return graph


def import_cycles(modules: list[Module]) -> list[str]:
    """Each import cycle once, as ``a.py:3 → b.py:7 → a``."""
    graph = import_graph(modules)
    paths = {m.name: m.path for m in modules}
    cycles, seen = [], set()
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _cycle_through(graph, sorted(component)[0], component)
        key = frozenset(cycle)
        if key not in seen:
            seen.add(key)
            hops = [f"{paths[a]}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)]
            cycles.append(" → ".join(hops) + f" → {cycle[0]}")
    return cycles


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit at any module count)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _cycle_through(graph: dict[str, dict[str, int]], start: str, component: set[str]) -> list[str]:
    """A shortest cycle from ``start`` back to it, inside its component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if nxt in component and nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")


def forbidden_imports(
    modules: list[Module], importer: str, imported: str, allowed: str | None = None
) -> list[str]:
    """Imports of ``imported`` (and its submodules) by modules under ``importer``,
    except by modules under ``allowed``."""
    return [
        f"{m.path}:{line}: imports {name}"
        for m in modules
        if _within(m.name, importer) and not (allowed and _within(m.name, allowed))
        for line, name in imports(m)
        if _within(name, imported)
    ]


def _aliases(module: Module) -> dict[str, str]:
    """Local name → what it stands for, from every import in the module."""
    names = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def _qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``os.path.join`` for ``os.path.join`` (after aliases), ``builtins.open`` for a
    bare builtin; None when the expression is not rooted in an import or a builtin."""
    if isinstance(node, ast.Name):
        if node.id in aliases:
            return aliases[node.id]
        return f"builtins.{node.id}" if hasattr(builtins, node.id) else None
    if isinstance(node, ast.Attribute):
        base = _qualified(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def environment_reads(modules: list[Module]) -> list[str]:
    """Reads and writes of the process environment (``os.environ``, ``os.getenv``, …)."""
    found = []
    for m in modules:
        aliases = _aliases(m)
        for node in ast.walk(m.tree):
            name = _qualified(node, aliases) if isinstance(node, (ast.Attribute, ast.Name)) else None
            if name and name.split(".")[0] == "os" and name.split(".")[-1] in ENVIRONMENT:
                found.append(f"{m.path}:{node.lineno}: {name}")
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


class _FileAccess(ast.NodeVisitor):
    """File-opening calls; ``with storage.X(...) as name`` makes ``name`` a local path
    that storage handed out, which path-taking calls may then be given."""

    def __init__(self, module: Module):
        self.module, self.aliases = module, _aliases(module)
        self.given: list[set[str]] = [set()]
        self.found: list[str] = []

    def visit_With(self, node: ast.With) -> None:
        names = set()
        for item in node.items:
            call = item.context_expr
            maker = _qualified(call.func, self.aliases) if isinstance(call, ast.Call) else None
            if maker and _within(maker, STORAGE) and isinstance(item.optional_vars, ast.Name):
                names.add(item.optional_vars.id)
            self.visit(item.context_expr)
        self.given.append(names)
        for stmt in node.body:
            self.visit(stmt)
        self.given.pop()

    def _from_storage(self, arg: ast.AST) -> bool:
        if isinstance(arg, ast.Name):
            return any(arg.id in names for names in self.given)
        return isinstance(arg, ast.Call) and (_qualified(arg.func, self.aliases) or "") in BUFFERS

    def visit_Call(self, node: ast.Call) -> None:
        what = self._opening(node)
        if what:
            self.found.append(f"{self.module.path}:{node.lineno}: {what}")
        self.generic_visit(node)

    def _given_a_path(self, node: ast.Call, position: int, keyword: str) -> bool:
        files = node.args[position : position + 1] + [k.value for k in node.keywords if k.arg == keyword]
        return any(not self._from_storage(f) for f in files)

    def _opening(self, node: ast.Call) -> str | None:
        name = _qualified(node.func, self.aliases)
        if name is None:
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if attr in PATH_METHODS:
                return f".{attr}()"
            if attr in PATH_TAKING_METHODS and self._given_a_path(node, *PATH_TAKING_METHODS[attr]):
                return f".{attr}() with a path"
            return None
        if _within(name, STORAGE):
            return None
        if name in OPENING or name.split(".")[0] in OPENING_MODULES:
            return name
        if name in PATH_TAKING and self._given_a_path(node, *PATH_TAKING[name]):
            return f"{name} with a path"
        return None


def file_access(modules: list[Module], allowed: dict[str, str] = FILE_ACCESS_ALLOWED) -> list[str]:
    """Calls that open, write or delete files outside ``avfusion.storage`` and the
    modules ``allowed`` (module name or pattern → reason)."""
    found = []
    for m in modules:
        if m.name == STORAGE or any(fnmatch(m.name, pattern) for pattern in allowed):
            continue
        visitor = _FileAccess(m)
        visitor.visit(m.tree)
        found += visitor.found
    return found


def _report(what: str, offences: list[str]) -> str:
    return f"{what} ({len(offences)}):\n  " + "\n  ".join(offences)


# ----------------------------------------------------------------------------- the rules


MODULES = repo_modules()
LIBRARY_MODULES = [m for m in MODULES if m.name.split(".")[0] in LIBRARY]


def test_the_checkers_see_the_packages():
    names = {m.name for m in MODULES}
    assert {"avfusion.storage", "avfusion.executor.ray_tasks", "shards.writer", "jobs.cli"} <= names
    assert len(import_graph(MODULES)["avfusion.preprocess.run"]) >= 5


def test_no_import_cycle():
    cycles = import_cycles(MODULES)
    assert not cycles, _report("import cycles (function-level imports count)", cycles)


def test_shards_imports_nothing_of_avfusion_or_jobs():
    offences = forbidden_imports(MODULES, "shards", "avfusion") + forbidden_imports(MODULES, "shards", "jobs")
    assert not offences, _report("shards/ is the lowest layer", offences)


def test_ray_is_imported_only_in_the_executor():
    offences = (
        forbidden_imports(MODULES, "avfusion", "ray", allowed=RAY_HOME)
        + forbidden_imports(MODULES, "shards", "ray")
        + forbidden_imports(MODULES, "jobs", "ray")
    )
    assert not offences, _report(f"Ray outside {RAY_HOME} (jobs reach it through the executor)", offences)


def test_the_library_never_imports_jobs():
    offences = forbidden_imports(MODULES, "avfusion", "jobs")
    assert not offences, _report("the library imports an entry point", offences)


def test_the_library_reads_no_environment():
    offences = environment_reads(LIBRARY_MODULES)
    assert not offences, _report(
        "environment reads in the library (the jobs read it and pass values in)", offences
    )


def test_files_are_opened_only_through_storage():
    offences = file_access(MODULES)
    assert not offences, _report(f"file access outside {STORAGE} and FILE_ACCESS_ALLOWED", offences)


def test_every_allowed_module_still_needs_it():
    """An entry whose modules were renamed, or no longer touch files, is removed."""
    stale = [
        pattern
        for pattern in FILE_ACCESS_ALLOWED
        if not file_access([m for m in MODULES if fnmatch(m.name, pattern)], allowed={})
    ]
    assert not stale, f"remove these from FILE_ACCESS_ALLOWED (no module of theirs touches files): {stale}"


# ----------------------------------------------------------------------------- each checker can fail


def test_cycle_checker_can_fail():
    modules = [
        parse("pkg.a", "from pkg import b\n"),
        parse("pkg.b", "def f():\n    import pkg.c\n"),
        parse("pkg.c", "from pkg.a import thing\n"),
        parse("pkg.d", "import pkg.a\n"),
        parse("pkg", "", is_package=True),
    ]
    assert import_cycles(modules) == ["pkg/a.py:1 → pkg/b.py:2 → pkg/c.py:1 → pkg.a"]
    relative = [parse("pkg.x", "from . import y\n"), parse("pkg.y", "from .x import z\n")]
    assert import_cycles(relative) == ["pkg/x.py:1 → pkg/y.py:1 → pkg.x"]


def test_import_checkers_can_fail():
    modules = [
        parse("shards.w", "def f():\n    from avfusion import storage\n"),
        parse("avfusion.doctor", "def f():\n    import ray.util\n"),
        parse("avfusion.executor.ray_tasks", "import ray\n"),
        parse("avfusion.x", "from jobs.cli import main\n"),
        parse("jobs.train", "from ray import train\n"),
    ]
    assert forbidden_imports(modules, "shards", "avfusion") == ["shards/w.py:2: imports avfusion.storage"]
    assert forbidden_imports(modules, "avfusion", "ray", allowed=RAY_HOME) == [
        "avfusion/doctor.py:2: imports ray.util"
    ]
    assert forbidden_imports(modules, "avfusion", "jobs") == ["avfusion/x.py:1: imports jobs.cli.main"]
    assert forbidden_imports(modules, "jobs", "ray") == ["jobs/train.py:1: imports ray.train"]


def test_environment_checker_can_fail():
    source = (
        "import os\nfrom os import getenv as ge\nimport os as system\n"
        "a = os.environ.get('X')\nb = ge('Y')\nc = system.environ['Z']\nos.putenv('A', '1')\n"
        "environ = {}\nd = environ.get('not os')\n"
    )
    assert environment_reads([parse("avfusion.m", source)]) == [
        "avfusion/m.py:4: os.environ",
        "avfusion/m.py:5: os.getenv",
        "avfusion/m.py:6: os.environ",
        "avfusion/m.py:7: os.putenv",
    ]


def test_file_checker_can_fail():
    source = """\
import io, os, shutil, tempfile
from pathlib import Path
import pyarrow.parquet as pq
from avfusion import storage

def bad(p, table):
    open(p)
    Path(p).write_text("x")
    os.replace(p, p + "~")
    shutil.rmtree(p)
    tempfile.mkdtemp()
    pq.write_table(table, p)
    with open(p) as f:
        f.read()
    fig.savefig(p)

def good(url, table, data, fig):
    storage.write_text(url, "x")
    with storage.open(url) as f:
        f.read()
    with storage.atomic_file(url) as tmp:
        pq.write_table(table, tmp)
        fig.savefig(tmp, dpi=100)
    pq.read_table(io.BytesIO(data), columns=["key"])
    shutil.which("ffmpeg")
    os.path.join(url, "x")
"""
    found = file_access([parse("avfusion.m", source)], allowed={})
    assert found == [
        "avfusion/m.py:7: builtins.open",
        "avfusion/m.py:8: .write_text()",
        "avfusion/m.py:9: os.replace",
        "avfusion/m.py:10: shutil.rmtree",
        "avfusion/m.py:11: tempfile.mkdtemp",
        "avfusion/m.py:12: pyarrow.parquet.write_table with a path",
        "avfusion/m.py:13: builtins.open",
        "avfusion/m.py:15: .savefig() with a path",
    ], found
    assert (
        file_access(
            [parse("avfusion.storage", source), parse("jobs.bench.x", source)],
            allowed={"jobs.bench.*": "scratch"},
        )
        == []
    )
    # the path storage hands out is a local path only inside its ``with``
    outside = (
        "import pyarrow.parquet as pq\nfrom avfusion import storage\n"
        "with storage.atomic_file(u) as tmp:\n    pass\npq.write_table(t, tmp)\n"
    )
    assert file_access([parse("avfusion.m", outside)], allowed={}) == [
        "avfusion/m.py:5: pyarrow.parquet.write_table with a path"
    ]
