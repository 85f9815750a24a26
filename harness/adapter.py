"""The one interface every build implements, and the registry that finds them.

Modelled on AlgoPerf's Workload: the harness only ever talks to this class, so a
timing loop, a memory probe or a parity check is written once and means the
same thing for every framework. A user's own VAE plugs in by subclassing
``VAEAdapter`` and passing ``--impl path/to/file.py:ClassName``; ``harness.plugin_check``
judges such a file in the parent, before any worker starts. The built-in impls' records
live in ``harness.impls_registry`` (``docs/adding-a-framework.md`` adds one).

Contract, in the order the harness calls it:

1. ``__init__(spec)`` builds the model and optimizer from the spec, initialised
   with the spec's pinned initialisers and ``spec.settings.seed``. Where the harness
   loads given weights at once (the shared initial weights, parity, curves), it builds
   through ``with_weights(spec, weights)`` instead, which a build may override to skip
   initialising what the weights replace.
2. ``set_weights(canonical)`` / ``get_weights()`` move weights in the canonical
   layout (``harness.spec.schema.param_table``): numpy float32 arrays keyed by
   names like ``encoder.1.kernel``. Optimizer state is reset by ``set_weights``.
3. ``train_step(x)`` runs one optimizer step on a numpy batch and returns the
   loss *without* waiting for the device (a framework array or a float).
   ``train_step(x, eps=...)`` fixes the reparameterisation noise instead of
   drawing it; it must run the same update as the unfixed step. A spec with a
   ``masking`` layer draws its block per step too; ``mask_block=j`` fixes it
   (the harness passes it only for such specs).
4. ``synchronize()`` blocks until all queued device work is done; timers call
   it, nothing else does.
5. ``loss_value(handle)`` turns the returned handle into a float (this syncs).
6. ``eval_forward(x, eps)`` returns reconstruction probabilities, mean and
   log-variance in inference mode (running BatchNorm statistics); the masking
   layer, if any, masks block ``mask_block``.
7. ``loss_and_grads(x, eps)`` (and ``mask_block``) returns the training-mode loss and the gradient of
   every trainable canonical tensor, without updating anything.
8. ``device_memory()`` returns what the framework's allocator reports, in bytes.
9. ``counters()`` returns monotone counters that explain memory growth (for
   example ``compiles``); the leak attribution reads their deltas.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from harness.files import not_regular
from harness.impls_registry import BUILTIN, BuiltinImpl, impl_env, is_installed, not_installed_message
from harness.spec.params import ParamCounts
from harness.spec.schema import VAESpec


class FrameworkMissing(ImportError):
    """The framework a build needs is not installed; the message says how to get it."""


class PluginError(ValueError):
    """An ``--impl`` that names no usable adapter class; the message is one line and names the fix."""


class PrecisionUnsupported(ValueError):
    """The build does not compute in the precision its spec asks for (``VAEAdapter.precisions``): the cell is
    skipped with this line, never trained in another precision and stored as if it were this one."""


class VAEAdapter(ABC):
    #: row name in every table, e.g. "torch", "flax", "keras-jax"
    name: ClassVar[str] = "custom"
    #: the framework whose versions go into the fingerprint
    framework: ClassVar[str] = "custom"
    #: True where ``train_step`` cannot help waiting for the device every step (Keras'
    #: ``train_on_batch`` returns host floats); recorded in every row so the report can say so
    syncs_every_step: ClassVar[bool] = False
    #: True where ``to_device`` really stages a batch on the device, so that the harness can time
    #: the framework's compute alone (``device_step``); a plug-in that leaves it False is timed
    #: on host batches only, and its row says so
    stages_input: ClassVar[bool] = False
    #: the training loops this build offers, the first being the one its users write
    #: (Keras: ``fit``, then ``train_on_batch``); the row records the one that ran
    loops: ClassVar[tuple[str, ...]] = ("step",)
    #: the precisions (``harness.spec.schema.PRECISIONS``) this build computes in as its spec asks: fp32 unless a
    #: build says more. A plug-in that reads ``spec.settings.precision`` lists what it honours; one that does not
    #: gets a skipped row for the others, never a float32 row labelled bf16
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    @classmethod
    def check_precision(cls, spec: VAESpec) -> None:
        """Raise ``PrecisionUnsupported`` where ``spec`` asks for a precision this build does not list."""
        wanted = spec.settings.precision
        if wanted not in cls.precisions:
            raise PrecisionUnsupported(
                f"{cls.__name__} does not compute in {wanted} (it lists {', '.join(cls.precisions)} in its "
                f"'precisions'); add {wanted!r} there once it reads spec.settings.precision")

    def __init__(self, spec: VAESpec) -> None:
        self.spec = spec
        self.loop = self.loops[0]

    def loop_details(self) -> dict[str, Any]:
        """How the timed loop runs, for the row (Keras adds its ``fit`` pipeline settings)."""
        return {"loop": self.loop}

    def use_loop(self, loop: str) -> None:
        """Train through ``loop`` (one of ``loops``) from now on."""
        if loop not in self.loops:
            raise ValueError(f"{type(self).__name__} has no training loop {loop!r}; it offers {', '.join(self.loops)}")
        self.loop = loop

    @classmethod
    def with_weights(cls, spec: VAESpec, weights: dict[str, np.ndarray]) -> VAEAdapter:
        """The model built from ``spec`` and loaded with ``weights`` (the canonical layout), optimizer fresh:
        the same model as ``cls(spec)`` followed by ``set_weights(weights)``, which is what this default does.

        The JAX builds override it: there every random initialiser is XLA-compiled (Flax's whole init is
        one program, Keras compiles one per new shape), for values ``set_weights`` overwrites at once. A
        Flax build of ``residual-small`` took 3.3 s built then set and 1.05 s through its override."""
        model = cls(spec)
        model.set_weights(weights)
        return model

    # -- model facts -------------------------------------------------------------------
    @abstractmethod
    def param_counts(self) -> ParamCounts: ...

    @classmethod
    def count_params(cls, spec: VAESpec) -> ParamCounts:
        """Counts from the framework's own model without training state.

        Builds override this to count without allocating (a meta device, an abstract
        evaluation), so that a 1.6-billion-parameter design can be counted anywhere.
        """
        return cls(spec).param_counts()

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def set_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    # -- compute -----------------------------------------------------------------------
    @abstractmethod
    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None) -> Any: ...

    @abstractmethod
    def eval_forward(self, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
        """Keys ``recon`` (probabilities, shape (B, L)), ``z_mean`` and ``z_log_var``."""

    @abstractmethod
    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, dict[str, np.ndarray]]: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    # -- feeding: how a batch gets from host memory into a step ---------------------------
    def host_batch(self, x: np.ndarray) -> Any:
        """A batch in host memory as this framework's data loader hands it over.

        The harness calls it before a timing window starts, as a loader's worker would
        prepare batches off the critical path (PyTorch on CUDA: a pinned tensor, as
        ``DataLoader(pin_memory=True)`` gives). The default keeps the numpy array.
        """
        return x

    def to_device(self, batch: Any) -> Any:
        """Start moving a host batch to the device without waiting for it; ``train_step`` accepts
        what this returns (PyTorch: ``.to(device, non_blocking=True)``; JAX: ``jax.device_put``).
        The default returns the batch unchanged, and ``train_step`` copies it itself."""
        return batch

    def train_steps(self, feed: Callable[[], Any], steps: int, on_step: Callable[[int, Any], None]) -> None:
        """The timed loop: ``steps`` steps on host batches from ``feed()``, as this framework's users train.

        Each batch is staged one step ahead, so that its transfer overlaps the step before
        it, as the PyTorch and JAX docs show; ``on_step(i, loss_handle)`` runs after step
        ``i`` is dispatched (the harness samples memory there and closes timing windows).
        Builds whose users train another way override it (Keras: ``fit``).
        """
        staged_loop(self.train_step, self.to_device, feed, steps, on_step)

    def loss_value(self, handle: Any) -> float:
        return float(np.asarray(handle))

    # -- probes ------------------------------------------------------------------------
    def device_memory(self) -> dict[str, int | None]:
        """Allocator figures in bytes; on CPU builds an empty dict (the harness then
        falls back to peak RSS and labels it so)."""
        return {}

    def reset_peak_memory(self) -> None:  # noqa: B027 - optional hook, a no-op where unsupported
        """Start a fresh peak window, where the allocator supports it."""

    def counters(self) -> dict[str, int]:
        return {}

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Framework versions for the fingerprint."""
        return {}

    @classmethod
    def device_kind(cls) -> str:
        return "cpu"


def staged_loop(step: Callable[[Any], Any], to_device: Callable[[Any], Any], feed: Callable[[], Any], steps: int,
                on_step: Callable[[int, Any], None]) -> None:
    """``steps`` steps, each batch moved to the device while the step before it runs (the
    loop the PyTorch and JAX docs show: the next batch is staged before the current one is
    waited on); ``on_step(i, loss_handle)`` after each step's dispatch."""
    nxt = to_device(feed())
    for i in range(steps):
        handle = step(nxt)
        if i + 1 < steps:
            nxt = to_device(feed())
        on_step(i, handle)


# ------------------------------------------------------------------------- registry
#
# The built-in impls' records (``BUILTIN``) live in harness.impls_registry, below this module, so that
# every layer and the textbook baselines can read them; they are re-exported here, where workers and
# the command line have always found them.

__all__ = ["BUILTIN", "REPO_ROOT", "BuiltinImpl", "FrameworkMissing", "PluginError", "VAEAdapter", "impl_env",
           "impl_label", "import_file", "is_installed", "load_adapter_class", "module_bindings",
           "not_installed_message", "parse_file", "plugin_label", "row_label", "staged_loop"]


def import_file(path: Path, prefix: str) -> Any:
    """Import a Python file as module ``prefix + stem`` (registered in ``sys.modules``, so pickling and
    dataclasses inside it work): how plug-in adapters and planted probe ops are loaded.

    The file's own folder goes first on ``sys.path``, as ``python plugin.py`` puts it, so a plug-in
    that imports the module beside it (``from mymodel import VAE``) loads here as it runs there; it
    stays there, as it would in that script, for imports the plug-in makes later (issue 25)."""
    folder = str(Path(path).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"{prefix}{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def impl_file_problem(path: Path) -> str | None:
    """The one line for an ``--impl`` file that is not a regular file (None when it is): missing, or a
    directory, a FIFO (whose read would block the import without a word), a socket or a device."""
    what = not_regular(path)
    if what is None:
        return None
    return f"impl file {path} {'does not exist' if what == 'missing' else 'is ' + what}; --impl takes path/to/file.py:Class"


def load_adapter_class(impl: str) -> type[VAEAdapter]:
    """Import a built-in row (``torch``), ``path/to/file.py:Class`` or ``module:attr``.

    Call only in a worker process, after ``impl_env`` has been applied: this is
    the point at which a framework is imported.
    """
    if impl in BUILTIN:
        builtin = BUILTIN[impl]
        if builtin.missing():
            raise FrameworkMissing(not_installed_message(impl))
        return getattr(importlib.import_module(builtin.module), builtin.cls)
    if ":" not in impl:
        known = ", ".join(BUILTIN)
        raise PluginError(f"unknown impl {impl!r}; built-in impls are {known}, or pass path/to/file.py:Class or module:attr")
    target, attr = impl.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        problem = impl_file_problem(path)
        if problem:
            raise PluginError(problem)
        module = import_file(path, "vaebench_user_")
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise PluginError(f"impl module {target!r} cannot be imported ({exc}); check --impl module:attr") from None
    if not hasattr(module, attr):
        raise PluginError(f"impl {impl!r}: {target} has no attribute {attr!r}")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, VAEAdapter)):
        raise PluginError(f"impl {impl!r} is not a subclass of harness.adapter.VAEAdapter; --impl must name a "
                          "class derived from it (from harness.adapter import VAEAdapter)")
    return cls


# ------------------------------------------------------------------------- reading a plug-in's source
#
# The parent process imports no framework, so what it needs to know about a plug-in file before any
# worker starts (its row label here, its class and base classes in harness.plugin_check) is read off
# the file's syntax tree.

REPO_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=32)
def parse_file(path: str, mtime_ns: int) -> ast.Module:
    """The file's syntax tree, parsed once per path and modification time (checked, then labelled)."""
    with open(path, "rb") as f:
        return ast.parse(f.read(), filename=path)


def module_bindings(tree: ast.Module) -> dict[str, tuple[ast.AST, bool]]:
    """Module-level name -> (the statement that binds it last, whether it sits under if/try/with/for)."""
    out: dict[str, tuple[ast.AST, bool]] = {}

    def visit(stmts: list[ast.stmt], conditional: bool) -> None:
        for node in stmts:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                out[node.name] = (node, conditional)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if isinstance(node, ast.AnnAssign) and node.value is None:
                    continue  # an annotation alone binds nothing
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            out[n.id] = (node, conditional or not isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    out[alias.asname or alias.name.split(".")[0]] = (node, conditional)
            else:
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []) or [], True)
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body, True)
    visit(tree.body, False)
    return out


# ------------------------------------------------------------------------- row labels


def plugin_label(class_name: str, own_name: object) -> str:
    """A plug-in's row label: the ``name`` its class sets in its own body, else its class name;
    never a built-in's label (``name = "torch"`` gives ``torch (plug-in MyVAE)``)."""
    if not isinstance(own_name, str) or not own_name.strip():
        return class_name
    own_name = own_name.strip()
    return f"{own_name} (plug-in {class_name})" if own_name in BUILTIN else own_name


def row_label(cls: type, impl: str) -> str:
    """The row label a worker writes, from the loaded class (``plugin_label``); a built-in row keeps its name."""
    return impl if impl in BUILTIN else plugin_label(cls.__name__, cls.__dict__.get("name"))


def impl_label(impl: str) -> str:
    """The same label, in the parent, without importing: read off the class's syntax where the file
    defines it (``my_vae.py:MyVAE`` -> ``MyVAE``, or the ``name`` its body sets)."""
    if impl in BUILTIN:
        return impl
    target, _, attr = impl.rpartition(":")
    path = Path(target) if target.endswith(".py") else _module_file(target)
    if path is not None:
        try:
            node = module_bindings(parse_file(str(path.resolve()), path.stat().st_mtime_ns)).get(attr, (None,))[0]
        except (OSError, SyntaxError, ValueError):
            node = None
        if isinstance(node, ast.ClassDef):
            own = [n.value.value for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                   and isinstance(n.value, ast.Constant) and any(
                       isinstance(t, ast.Name) and t.id == "name"
                       for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
            return plugin_label(node.name, own[-1] if own else None)
    return plugin_label(attr, None)


def _module_file(module: str) -> Path | None:
    """The source file of ``package.module`` as a worker (repo root first on its path) would find it,
    found without importing anything."""
    if not module or not all(part.isidentifier() for part in module.split(".")):
        return None
    rel = Path(*module.split("."))
    for root in (REPO_ROOT, *(Path(p) for p in sys.path if p)):
        for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None
