"""Every built-in impl, one record each: the one place an impl is known by.

An impl's identity (the framework whose kernels it runs, its colour in every plot, its place in
every table, its int32 probe module, its textbook baseline, the leak scenarios it can run, what its
framework writes when memory runs out, what to pip install and the environment its worker needs)
used to be spread over a dozen tables, so adding a framework meant editing all of them. Each of
those tables now reads :data:`BUILTIN`; ``docs/adding-a-framework.md`` is the recipe.

The tables read the records when asked (:class:`RecordField` is a live view), never a copy made at
import, so a record added or replaced at run time shows in every one of them.

This module imports nothing of the harness and no framework: every layer may read it, the textbook
baselines included (they take their own module names from here and nothing else).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BuiltinImpl:
    """One built-in row: where its class lives, what it needs, and how every table shows it."""

    name: str
    #: the module and class of its adapter (``harness.adapter.VAEAdapter``), imported in a worker only
    module: str
    cls: str
    #: the modules it imports; tells "not installed" from other errors without importing them
    frameworks: tuple[str, ...]
    #: what to pip install, for the "not installed" message
    requirement: str
    #: the framework whose kernels run its model (``torch``, ``jax``, ``tensorflow``): the int32 facts
    #: and probes are per family, and a Keras row runs its backend's
    family: str
    #: its colour in every plot and swatch of every report, forever
    colour: str
    #: the module whose ``Ops`` class ``bench probe-int32`` runs for it (None: no probes)
    int32_probe: str | None = None
    #: the module of the textbook loop ``bench baseline`` checks its step time against (None: none)
    baseline: str | None = None
    #: the leak scenarios (``harness.diagnose.scenarios``) it can run; each one's clean twin comes with it
    scenarios: tuple[str, ...] = ()
    #: regular expressions for what its framework writes when device memory runs out
    device_oom: tuple[str, ...] = ()
    #: ... and when host memory runs out (beyond Python's and the C library's own messages)
    host_oom: tuple[str, ...] = ()
    #: an extra row: the default run leaves it out, saying so, where its framework is not installed
    optional: bool = False
    #: environment the worker must set before importing anything
    env: dict[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """Framework modules that cannot be found (checked without importing them)."""
        return [m for m in self.frameworks if importlib.util.find_spec(m) is None]


#: what each framework writes when device memory runs out (PyTorch's CUDA caching allocator; XLA, under
#: JAX; TensorFlow's BFC allocator); CUDA's own error names, which any of them may pass on, are in
#: ``harness.diagnose.failures``
TORCH_OOM = (r"CUDA out of memory", r"OutOfMemoryError")
XLA_OOM = (r"RESOURCE_EXHAUSTED", r"out of memory while trying", r"Out of memory allocating")
TF_OOM = (r"RESOURCE_EXHAUSTED", r"OOM when allocating")
#: PyTorch's CPU allocator, the one framework that words host exhaustion its own way
TORCH_HOST_OOM = (r"DefaultCPUAllocator: can't allocate memory",)

#: every built-in impl, in the order of every table, legend and default run
BUILTIN: dict[str, BuiltinImpl] = {b.name: b for b in (
    BuiltinImpl("torch", "impls.torch_vae", "TorchVAE", ("torch",), "torch==2.13.0", family="torch",
                colour="#d62728", int32_probe="impls.int32_probe_torch", baseline="bench.baselines.torch_loop",
                scenarios=("torch-loss-total",), device_oom=TORCH_OOM, host_oom=TORCH_HOST_OOM),
    BuiltinImpl("flax", "impls.flax_vae", "FlaxVAE", ("jax", "flax", "optax"), "jax flax optax", family="jax",
                colour="#1f77b4", int32_probe="impls.int32_probe_jax", baseline="bench.baselines.jax_loop",
                scenarios=("jax-jit-per-step", "partial-last-batch"), device_oom=XLA_OOM),
    BuiltinImpl("keras-jax", "impls.keras_vae", "KerasVAE", ("keras", "jax"), "keras jax", family="jax",
                colour="#2ca02c", int32_probe="impls.int32_probe_jax", baseline="bench.baselines.keras_fit",
                scenarios=("jax-jit-per-step", "partial-last-batch"), device_oom=XLA_OOM,
                env={"KERAS_BACKEND": "jax"}),
    BuiltinImpl("keras-torch", "impls.keras_vae", "KerasVAE", ("keras", "torch"), "keras torch==2.13.0",
                family="torch", colour="#9467bd", int32_probe="impls.int32_probe_torch",
                baseline="bench.baselines.keras_fit", device_oom=TORCH_OOM, host_oom=TORCH_HOST_OOM,
                env={"KERAS_BACKEND": "torch"}),
    BuiltinImpl("keras-tensorflow", "impls.keras_vae", "KerasVAE", ("keras", "tensorflow"),
                "keras tensorflow-cpu (or tensorflow on a GPU machine)", family="tensorflow", colour="#ff7f0e",
                int32_probe="impls.int32_probe_tf", baseline="bench.baselines.keras_fit",
                scenarios=("partial-last-batch", "keras-tf-varying-batch"), device_oom=TF_OOM, optional=True,
                env={"KERAS_BACKEND": "tensorflow"}),
)}


class RecordField(Mapping[str, Any]):
    """``{impl: record.<attr>}`` for every built-in impl that sets ``attr``, read from :data:`BUILTIN`
    at each access (so a table built on it can never disagree with the records)."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def _current(self) -> dict[str, Any]:
        return {n: getattr(b, self.attr) for n, b in BUILTIN.items() if getattr(b, self.attr) not in (None, "", ())}

    def __getitem__(self, impl: str) -> Any:
        return self._current()[impl]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        return f"RecordField({self.attr!r}: {self._current()!r})"


def impl_rank(label: str) -> int:
    """A label's place in every table: a built-in impl's position in :data:`BUILTIN`, after them the rest."""
    names = list(BUILTIN)
    return names.index(label) if label in BUILTIN else len(names)


def framework_modules() -> tuple[str, ...]:
    """Every top-level module a built-in impl imports (``torch``, ``jax``, ``flax``, ...), each once."""
    return tuple(dict.fromkeys(m for b in BUILTIN.values() for m in b.frameworks))


def oom_patterns(kind: str) -> tuple[str, ...]:
    """The built-in frameworks' own out-of-memory messages, ``kind`` "device" or "host", each once."""
    return tuple(dict.fromkeys(p for b in BUILTIN.values() for p in getattr(b, f"{kind}_oom")))


def impls_for_scenario(scenario: str) -> tuple[str, ...]:
    """The built-in impls that can run a leak scenario, in table order."""
    return tuple(n for n, b in BUILTIN.items() if scenario in b.scenarios)


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
