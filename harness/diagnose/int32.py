"""Per framework: what a tensor of 2^31 elements or more does to each op.

A count past 2^31 does not break every kernel: on an H200, torch's conv1d,
ReLU and max-pool ran such tensors correctly while its nearest upsample raised,
JAX ran them all, and TensorFlow's Conv1D aborted the process. So preflight
asks, for each impl, what *its* framework does with the op that writes or
reads each overflowing tensor. Facts come from, in order:

1. probe results (``python -m bench probe-int32``) cached under the results
   directory for the installed framework version and this device;
2. the shipped table of measured facts (``int32_facts.json``);
3. otherwise ``unknown``: a warning naming the tensor and the probe command,
   never a reason to skip.

Framework versions are read from package metadata, never by importing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from harness.impls_registry import RecordField
from harness.measure.int32_check import OPS as PROBED_OPS
from harness.store import PROBE_CACHE_FILE

#: the framework whose kernels each built-in impl runs (its record's ``family``)
IMPL_FRAMEWORK = RecordField("family")
#: distributions whose metadata holds a framework's version, where not the framework's own name (the
#: first installed wins)
DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu")}
BEHAVIOURS = ("ok", "raises", "aborts", "wrong", "unknown")
FAILING = ("aborts", "wrong", "raises")  # worst first
FACTS_PATH = Path(__file__).with_name("int32_facts.json")
#: probe rows, one JSON object a line, under the results directory
PROBE_CACHE = PROBE_CACHE_FILE  # named by the store, which keeps it out of the run files
INT32_LIMIT = 2**31


@dataclass(frozen=True)
class Fact:
    framework: str
    versions: str
    device: str
    op: str
    pass_: str  # "forward" or "forward+backward"
    impls: tuple[str, ...]
    behaviour: str
    detail: str
    source: str

    def covers(self, impl: str, op: str, pass_: str, device: str, version: str | None) -> bool:
        return (impl in self.impls and op == self.op and device == self.device
                and _pass_covers(self.pass_, self.behaviour, pass_) and version_in(version, self.versions))


def _pass_covers(measured: str, behaviour: str, wanted: str) -> bool:
    """A forward+backward result covers a forward one; a forward that fails fails training too."""
    return measured == "forward+backward" or wanted == "forward" or behaviour in FAILING


@lru_cache(maxsize=1)
def shipped_facts() -> tuple[Fact, ...]:
    raw = json.loads(FACTS_PATH.read_text())["facts"]
    return tuple(Fact(f["framework"], f["versions"], f["device"], f["op"], f["pass"], tuple(f["impls"]),
                      f["behaviour"], f["detail"], f["source"]) for f in raw)


def installed_version(framework: str | None) -> str | None:
    if not framework:
        return None
    for dist in DISTRIBUTIONS.get(framework, (framework,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def wrap_int32(n: int) -> int:
    """The value a count of ``n`` takes as a signed 32-bit integer."""
    n &= 0xFFFFFFFF
    return n - 2**32 if n >= 2**31 else n


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def version_in(version: str | None, spec: str) -> bool:
    """``spec`` is "any" or comma-separated ``>=X`` / ``<X``; an unknown version (the framework is
    not installed here: planning for another machine) matches every range."""
    if spec == "any" or version is None:
        return True
    v = _version_tuple(version)
    for part in spec.split(","):
        part = part.strip()
        if part.startswith(">=") and not v >= _version_tuple(part[2:]):
            return False
        if part.startswith("<") and not v < _version_tuple(part[1:]):
            return False
    return True


def load_probe_rows(results_dir: str | Path | None) -> list[dict[str, Any]]:
    path = Path(results_dir or "results") / PROBE_CACHE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


@dataclass
class OpFact:
    behaviour: str
    source: str
    detail: str = ""


def op_fact(impl: str, op: str, pass_: str, device: str, version: str | None,
            probes: Iterable[dict[str, Any]] = ()) -> OpFact:
    """What ``op`` does past 2^31 in ``impl`` on ``device``: newest matching probe, else the table, else unknown."""
    if version is not None:
        hits = [r for r in probes if r.get("impl") == impl and r.get("op") == op and r.get("device") == device
                and r.get("framework_version") == version and r.get("size") == "past"
                and r.get("boundary") == INT32_LIMIT and r.get("behaviour") in BEHAVIOURS
                and (r["behaviour"] == "ok" or r.get("below") == "ok")  # else the op fails at any size
                and _pass_covers(r.get("pass", ""), r["behaviour"], pass_)]
        if hits:
            # both passes were probed: the worse one decides (fwd+bwd can fail where forward runs)
            hit = max(hits, key=lambda r: (_rank(r["behaviour"]), r.get("at", "")))
            where = f"probe {hit.get('at', '')} on {hit.get('device_name') or device}".strip()
            return OpFact(hit["behaviour"], f"bench probe-int32 ({where}, {IMPL_FRAMEWORK.get(impl, impl)} {version})",
                          hit.get("detail", ""))
    for fact in shipped_facts():
        if fact.covers(impl, op, pass_, device, version):
            return OpFact(fact.behaviour, f"table: {fact.source}", fact.detail)
    if op not in PROBED_OPS:
        return OpFact("unknown", f"none: probe-int32 has no {op} probe yet")
    return OpFact("unknown", "none: run " + probe_hint(impl))


def probe_hint(impl: str | None) -> str:
    """The command that would measure what is unknown (a plug-in: the built-in row of its framework)."""
    if impl in IMPL_FRAMEWORK:
        return f"python -m bench probe-int32 --impl {impl}"
    return "python -m bench probe-int32 --impl <the built-in impl whose framework it uses>"


def _rank(behaviour: str) -> int:
    return {"aborts": 4, "wrong": 3, "raises": 2, "unknown": 1, "ok": 0}.get(behaviour, 1)


@dataclass
class Int32Entry:
    """One overflowing tensor as one impl sees it."""

    impl: str
    pass_: str
    layer: str
    tensor: str
    op: str  # the op that decides: the failing (or unknown) one of writer and reader
    shape: tuple[int, ...]
    elements: int
    wraps_to: int
    behaviour: str
    safe_batch: int | None
    source: str
    detail: str = ""
    ops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"impl": self.impl, "pass": self.pass_, "layer": self.layer, "tensor": self.tensor, "op": self.op,
                "shape": list(self.shape), "elements": self.elements, "wraps_to": self.wraps_to,
                "behaviour": self.behaviour, "safe_batch": self.safe_batch, "source": self.source,
                "detail": self.detail, "ops": self.ops}

    def line(self) -> str:
        return (f"{self.layer} {self.tensor} {self.shape} has {self.elements:,} elements "
                f"(wraps to {self.wraps_to}); largest safe batch {self.safe_batch}")


def judge(impl: str, flagged: list, batch_of, device: str, results_dir: str | Path | None = None,
          version: str | None = None, probes: list[dict[str, Any]] | None = None) -> list[Int32Entry]:
    """Entries for each overflowing tensor (``preflight.Tensor``) in ``impl``.

    A tensor is at risk in the op that writes it and in the op that reads it (a max-pool
    indexes its whole input); the worse of the two decides. ``batch_of(tensor)`` is the
    batch the tensor was sized for. Training tensors need forward and backward.
    """
    framework = IMPL_FRAMEWORK.get(impl)
    version = version if version is not None else installed_version(framework)
    probes = load_probe_rows(results_dir) if probes is None else probes
    out = []
    for t in flagged:
        pass_ = "forward+backward" if t.pass_ == "train" else "forward"
        ops = [o for o in (t.op, t.reader) if o]
        facts = {o: op_fact(impl, o, pass_, device, version, probes) for o in ops}
        if facts:
            op = max(ops, key=lambda o: _rank(facts[o].behaviour))
            fact = facts[op]
        else:
            op, fact = t.kind, OpFact("unknown", "none: run " + probe_hint(impl))
        out.append(Int32Entry(impl, t.pass_, t.layer, t.kind, op, t.shape, t.elements, wrap_int32(t.elements),
                              fact.behaviour, t.safe_batch(batch_of(t)), fact.source, fact.detail, ops))
    return out


def verdict(impl: str | None, entries: list[Int32Entry]) -> str:
    """One line: the op that fails in this impl (the worst tensor), or that none does, with the unknowns."""
    who = impl or "every impl"
    failing = [e for e in entries if e.behaviour in FAILING]
    if failing:
        worst = max(failing, key=lambda e: (_rank(e.behaviour), e.elements))
        return f"int32 overflow in {who}: {worst.op} {worst.behaviour} at {worst.line()}" + \
            (f": {worst.detail}" if worst.detail else "")
    if not entries:
        return f"no tensor reaches 2^31 elements ({who})"
    unknown = [e for e in entries if e.behaviour == "unknown"]
    if unknown:
        names = ", ".join(f"{e.layer} {e.tensor} ({e.op})" for e in unknown)
        unprobed = sorted({e.op for e in unknown if e.op not in PROBED_OPS})
        how = (f"measure with {probe_hint(impl)}" if not unprobed
               else f"probe-int32 has no probe yet for {', '.join(unprobed)}")
        return f"no int32 failure known in {who}; unknown past 2^31: {names}; {how}"
    return f"no int32 failure in {who}: every tensor past 2^31 runs correctly"
