"""The one interface every build implements, and the registry that finds them.

Modelled on AlgoPerf's Workload: the harness only ever talks to this class, so a
timing loop, a memory probe or a parity check is written once and means the
same thing for every framework. A user's own VAE plugs in by subclassing
``VAEAdapter`` and passing ``--impl path/to/file.py:ClassName``.

Contract, in the order the harness calls it:

1. ``__init__(spec)`` builds the model and optimizer from the spec, initialised
   with the spec's pinned initialisers and ``spec.settings.seed``.
2. ``set_weights(canonical)`` / ``get_weights()`` move weights in the canonical
   layout (``harness.spec.schema.param_table``): numpy float32 arrays keyed by
   names like ``encoder.1.kernel``. Optimizer state is reset by ``set_weights``.
3. ``train_step(x)`` runs one optimizer step on a numpy batch and returns the
   loss *without* waiting for the device (a framework array or a float).
   ``train_step(x, eps=...)`` fixes the reparameterisation noise instead of
   drawing it; it must run the same update as the unfixed step.
4. ``synchronize()`` blocks until all queued device work is done; timers call
   it, nothing else does.
5. ``loss_value(handle)`` turns the returned handle into a float (this syncs).
6. ``eval_forward(x, eps)`` returns reconstruction probabilities, mean and
   log-variance in inference mode (running BatchNorm statistics).
7. ``loss_and_grads(x, eps)`` returns the training-mode loss and the gradient of
   every trainable canonical tensor, without updating anything.
8. ``device_memory()`` returns what the framework's allocator reports, in bytes.
9. ``counters()`` returns monotone counters that explain memory growth (for
   example ``compiles``); the leak attribution reads their deltas.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.spec.schema import ParamCounts, VAESpec


class FrameworkMissing(ImportError):
    """The framework a build needs is not installed; the message says how to get it."""


class VAEAdapter(ABC):
    #: row name in every table, e.g. "torch", "flax", "keras-jax"
    name: ClassVar[str] = "custom"
    #: the framework whose versions go into the fingerprint
    framework: ClassVar[str] = "custom"
    #: True where ``train_step`` cannot help waiting for the device every step (Keras'
    #: ``train_on_batch`` returns host floats); recorded in every row so the report can say so
    syncs_every_step: ClassVar[bool] = False

    def __init__(self, spec: VAESpec) -> None:
        self.spec = spec

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


# ------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class BuiltinImpl:
    """One built-in row: where its class lives and what it needs before and at import."""

    name: str
    module: str
    cls: str
    #: the modules it imports; tells "not installed" from other errors without importing them
    frameworks: tuple[str, ...]
    #: what to pip install, for the "not installed" message
    requirement: str
    #: environment the worker must set before importing anything
    env: dict[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """Framework modules that cannot be found (checked without importing them)."""
        return [m for m in self.frameworks if importlib.util.find_spec(m) is None]


BUILTIN: dict[str, BuiltinImpl] = {b.name: b for b in (
    BuiltinImpl("torch", "impls.torch_vae", "TorchVAE", ("torch",), "torch==2.13.0"),
    BuiltinImpl("flax", "impls.flax_vae", "FlaxVAE", ("jax", "flax", "optax"), "jax flax optax"),
    BuiltinImpl("keras-jax", "impls.keras_vae", "KerasVAE", ("keras", "jax"), "keras jax", {"KERAS_BACKEND": "jax"}),
    BuiltinImpl("keras-torch", "impls.keras_vae", "KerasVAE", ("keras", "torch"), "keras torch==2.13.0",
                {"KERAS_BACKEND": "torch"}),
    BuiltinImpl("keras-tensorflow", "impls.keras_vae", "KerasVAE", ("keras", "tensorflow"),
                "keras tensorflow-cpu (or tensorflow on a GPU machine)", {"KERAS_BACKEND": "tensorflow"}),
)}


def impl_env(impl: str) -> dict[str, str]:
    """Environment a worker must set before importing anything for this impl."""
    return dict(BUILTIN[impl].env) if impl in BUILTIN else {}


def is_installed(impl: str) -> bool:
    """True when every framework module of a built-in row can be found, without importing it."""
    return impl not in BUILTIN or not BUILTIN[impl].missing()


def not_installed_message(impl: str) -> str:
    builtin = BUILTIN[impl]
    missing = builtin.missing() or list(builtin.frameworks)
    return (f"impl {impl!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install {builtin.requirement}")


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
        raise ValueError(f"unknown impl {impl!r}; built-in impls are {known}, or pass path/to/file.py:Class or module:attr")
    target, attr = impl.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise ValueError(f"impl file {path} does not exist; --impl takes path/to/file.py:Class")
        mod_name = f"vaebench_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ValueError(f"impl module {target!r} cannot be imported ({exc}); check --impl module:attr") from None
    if not hasattr(module, attr):
        raise ValueError(f"impl {impl!r}: {target} has no attribute {attr!r}")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, VAEAdapter)):
        raise ValueError(f"impl {impl!r} is not a subclass of harness.adapter.VAEAdapter")
    return cls


def impl_label(impl: str) -> str:
    """Short row name for a user impl (``my_vae.py:MyVAE`` -> ``MyVAE``)."""
    return impl if impl in BUILTIN else impl.rsplit(":", 1)[-1]
