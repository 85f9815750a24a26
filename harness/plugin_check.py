"""The plug-in check: a bad ``--impl path/to/file.py:Class`` fails in the parent, as one line.

The parent process imports no framework, yet a bad --impl must fail there, before any worker
starts. A .py file is read and parsed: its syntax tree says whether the name exists and whether a
class defined there derives from ``VAEAdapter`` and implements its abstract methods. Only what the
tree cannot decide (a class imported from elsewhere, a base class from another module, the
module:attr form) is imported, in a throwaway interpreter, as a worker would import it.

Its own module because it is a syntax checker, not part of the interface it checks
(``harness.adapter``).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from harness.adapter import REPO_ROOT, VAEAdapter, impl_file_problem, module_bindings, parse_file
from harness.impls_registry import BUILTIN

#: seconds the throwaway import check may take (a plug-in that imports a framework needs a few);
#: past it the check gives up and leaves the verdict to the workers
PLUGIN_CHECK_TIMEOUT_S = 120.0
_ABSTRACT = frozenset(VAEAdapter.__abstractmethods__)

_IMPORT_CHECK = r"""
import sys
def say(kind, text=""):
    sys.stdout.write("\nvaebench-check " + kind + " " + " ".join(str(text).split())[:400] + "\n")
try:
    from harness.adapter import PluginError, load_adapter_class
    cls = load_adapter_class(sys.argv[1])
except PluginError as exc:
    say("plugin", exc)
except BaseException as exc:
    first = (str(exc).strip().splitlines() or [""])[0]
    say("import", type(exc).__name__ + (": " + first if first else ""))
else:
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    say("abstract", f"class {cls.__name__} does not implement {', '.join(missing)}") if missing else say("ok")
"""


def check_plugin(impl: str, timeout_s: float = PLUGIN_CHECK_TIMEOUT_S) -> str | None:
    """None when ``impl`` is a built-in row or names a usable ``VAEAdapter`` subclass, else the
    one-line error that says what is wrong and how to fix it. Imports no framework."""
    if impl in BUILTIN:
        return None
    if ":" not in impl:
        return (f"unknown impl {impl!r}; built-in impls are {', '.join(BUILTIN)}, "
                "or pass path/to/file.py:Class or module:attr")
    target, attr = impl.rsplit(":", 1)
    if not target or not attr.isidentifier():
        return f"--impl {impl!r} is not of the form path/to/file.py:Class or module:attr (Class a Python name)"
    if target.endswith(".py"):
        path = Path(target)
        verdict = _check_file(path, attr, impl)
        if verdict != "unsure":
            return verdict
        return _import_check(f"{path.resolve()}:{attr}", impl, timeout_s)
    if not all(part.isidentifier() for part in target.split(".")):
        return (f"--impl {impl!r}: {target!r} is neither a .py file nor a module name such as package.module; "
                "pass path/to/file.py:Class or module:attr")
    return _import_check(impl, impl, timeout_s)


def _check_file(path: Path, attr: str, impl: str) -> str | None:
    """The syntax tree's verdict on ``path:attr``: an error line, None (fine) or "unsure"."""
    problem = impl_file_problem(path)
    if problem:
        return problem
    try:
        tree = parse_file(str(path.resolve()), path.stat().st_mtime_ns)
    except SyntaxError as exc:
        return f"impl file {path} does not parse: {exc.msg} at line {exc.lineno}; fix the file"
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, null bytes
        return f"impl file {path} cannot be read as Python source ({exc}); pass a .py file"
    names = module_bindings(tree)
    if attr not in names:
        if "*" in names or "__getattr__" in names:
            return "unsure"  # bound in a way the tree cannot follow
        classes = [n for n, (node, _) in names.items() if isinstance(node, ast.ClassDef)]
        listing = f"; it defines {', '.join(classes[:8])}" if classes else "; it defines no class"
        return f"impl {impl!r}: {path} has no {attr!r} at module level{listing}"
    node, conditional = names[attr]
    if conditional or not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign,
                                            ast.AnnAssign)):
        return "unsure"  # an import, or a definition under if/try: import it to see
    if not isinstance(node, ast.ClassDef):
        value = getattr(node, "value", None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or isinstance(
                value, (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.Lambda, ast.JoinedStr)):
            return (f"impl {impl!r}: {attr} in {path} is not a class; it must be a subclass of "
                    "harness.adapter.VAEAdapter")
        return "unsure"  # an alias or a factory call
    derives, methods = _derives(node, names, set())
    if derives == "no":
        return (f"impl {impl!r}: class {attr} does not derive from harness.adapter.VAEAdapter; "
                f"write class {attr}(VAEAdapter) with from harness.adapter import VAEAdapter")
    if derives == "unsure" or not _imports_found(tree, path.resolve().parent):
        return "unsure"
    missing = sorted(_ABSTRACT - methods)
    if missing:
        return (f"impl {impl!r}: class {attr} does not implement {', '.join(missing)}; "
                "see the adapter contract in docs/design.md")
    return None


def _derives(node: ast.ClassDef, names: dict, seen: set[str]) -> tuple[str, set[str]]:
    """Whether a class defined in the file derives from VAEAdapter ("yes", "no" or "unsure"), and
    the names its own body and its in-file base classes define (the methods it implements)."""
    methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    methods |= {t.id for n in node.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if node.decorator_list or node.name in seen:
        return "unsure", methods
    seen = seen | {node.name}
    verdicts = []
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id == "object" and "object" not in names:
            verdicts.append("no")
        elif _names_adapter(base, names):
            verdicts.append("yes")
        elif isinstance(base, ast.Name) and isinstance(names.get(base.id, (None,))[0], ast.ClassDef) \
                and not names[base.id][1]:
            verdict, inherited = _derives(names[base.id][0], names, seen)
            verdicts.append(verdict)
            methods |= inherited
        else:
            verdicts.append("unsure")
    if "yes" in verdicts and "unsure" not in verdicts:
        return "yes", methods
    if all(v == "no" for v in verdicts):  # also a class with no base at all
        return "no", methods
    return "unsure", methods


def _names_adapter(base: ast.expr, names: dict) -> bool:
    """``VAEAdapter`` imported from harness.adapter, or ``harness.adapter.VAEAdapter`` / ``adapter.VAEAdapter``."""
    if isinstance(base, ast.Name):
        node = names.get(base.id, (None,))[0]
        return isinstance(node, ast.ImportFrom) and node.module == "harness.adapter" and node.level == 0 and any(
            a.name == "VAEAdapter" and (a.asname or a.name) == base.id for a in node.names)
    if isinstance(base, ast.Attribute) and base.attr == "VAEAdapter":
        return ast.unparse(base.value) in ("harness.adapter", "adapter")
    return False


def _imports_found(tree: ast.Module, folder: Path) -> bool:
    """Every module-level absolute import can be found (without importing it), on the path or beside the
    file in ``folder`` (``harness.adapter.import_file`` puts it first on the path, as ``python file.py``
    does); a relative import cannot work in a file loaded by path, so the import check must judge it."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            return False
        roots = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for root in roots:
            top = root.split(".")[0]
            if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
                continue
            try:
                if top not in sys.builtin_module_names and importlib.util.find_spec(top) is None:
                    return False
            except (ImportError, ValueError):
                return False
    return True


def _import_check(impl: str, shown: str, timeout_s: float) -> str | None:
    """Import ``impl`` in a throwaway interpreter started as a worker is (repo root on the path)."""
    import os
    import signal
    import subprocess

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
               TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, impl], cwd=REPO_ROOT, env=env, text=True,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, errors="replace")
    except subprocess.TimeoutExpired:
        return None  # slow, not wrong: the workers will say
    verdicts = [line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("vaebench-check ")]
    kind, text = (verdicts[-1] + [""])[:2] if verdicts else ("", "")
    if kind == "ok":
        return None
    if kind == "plugin":  # load_adapter_class's own verdict, about the absolute path handed to it
        return text.replace(repr(impl), repr(shown)).replace(impl.rsplit(":", 1)[0], shown.rsplit(":", 1)[0])
    if kind == "import":
        return f"impl {shown!r} cannot be imported: {text}; fix the module or install what it imports"
    if kind == "abstract":
        return f"impl {shown!r}: {text}; see the adapter contract in docs/design.md"
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"impl {shown!r} crashed while being imported ({name}); import it in python to see why"
    return None  # no verdict and no crash (the module exited the interpreter): leave it to the workers
