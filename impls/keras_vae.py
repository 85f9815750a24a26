"""The VAE in Keras 3, written the way the keras.io VAE example writes it, on any backend.

One build serves three rows: ``keras-jax``, ``keras-torch`` and ``keras-tensorflow``.
Keras picks its backend once per process from ``KERAS_BACKEND`` (the harness sets it
before the worker imports anything), so the row name is read back from
``keras.backend.backend()``.

What a Keras user would write, and this build does, in the files a Keras project would have:

* ``impls/keras_layers.py``: stock ``keras.layers`` for each spec layer (``GroupNormalization``,
  ``Activation("silu")``, ``Conv1D`` latent heads, ``"zeros"`` initializers for ``init: zeros``),
  with small ``Layer`` subclasses where Keras has no stock layer (``ResidualBlock``,
  ``AttentionBlock``), a ``Sampling`` layer drawing the reparameterisation noise with
  ``keras.random.normal`` from a ``keras.random.SeedGenerator``, which a ``RandomBlockMasking``
  layer shares to draw the masked block with ``keras.random.randint`` inside the step;
* ``impls/keras_model.py``: functional ``keras.Model`` encoder and decoder stacks, and the ``VAE``
  model, which overrides ``compute_loss`` only, so the step itself is Keras' own per-backend
  trainer (``jax.jit`` / ``tf.function`` / eager torch);
* the timed steps run as the user trains, one ``model.fit`` over a ``keras.utils.PyDataset``
  (``impls/keras_fit.py``); ``use_loop("train_on_batch")`` times ``train_on_batch`` instead,
  which is also what ``train_step`` runs.

Two places depart from Keras' defaults because the spec pins them (see
``harness.spec.schema.Settings``): the Adam update (``TextbookAdam``, ``impls/keras_adam.py``) and the BatchNorm
momentum, epsilon, GroupNorm epsilon, leaky-ReLU slope and GELU form, passed explicitly to each layer.

Mixed precision (``settings.precision: bf16``) is the Keras mixed-precision guide's: the ``mixed_bfloat16``
dtype policy, passed to each layer of the model (``impls.keras_layers.dtype_policy``; Keras' global policy is
never set, so a float32 model built after a bf16 one in the same process stays float32). The layers compute in
bfloat16 over float32 variables, so the master weights, their gradients and ``TextbookAdam``'s moments are
float32, and no ``LossScaleOptimizer`` is needed (bfloat16 has float32's exponent range). What the spec keeps in
float32 (``harness.spec.schema.BF16_FLOAT32_OPS``) is listed in ``impls/keras_layers.py``: Keras' own norm layers
keep their statistics in float32; the attention softmax, the sampling and the loss are forced. Every entry point
(``fit``, ``train_on_batch``, ``loss_and_grads``, ``eval_forward``) runs the same model, so all honour it.

The canonical weight layout *is* Keras' layout (Dense ``(in, out)``, Conv1D
``(k, in, out)``, Conv1DTranspose ``(k, out, in)``, channels-last flatten), so moving
weights is a name lookup with no transposes.

Backend-specific code is confined to the backend corner, ``impls/keras_backend.py``: gradients for
``loss_and_grads`` (Keras has no backend-agnostic ``grad``), placing a batch on the device, device
synchronisation, allocator figures, compile counters (on JAX, ``impls.jax_probes``, shared with the
Flax build) and precision flags; besides it, only the torch form of ``TextbookAdam``'s update (Keras'
own fused Adam, which a subclass loses). Everything else a training step runs is ``keras.ops``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from harness.adapter import VAEAdapter
from harness.spec.params import ParamCounts, param_table
from harness.spec.schema import PRECISIONS, VAESpec
from impls import keras_backend
from impls.keras_adam import TextbookAdam
from impls.keras_backend import BACKEND, on_gpu, pin_device_settings, seed_everything, value_and_grad
from impls.keras_fit import async_callbacks, fit_details, fit_steps
from impls.keras_layers import loading_weights
from impls.keras_model import build_encoder_decoder, build_vae


def _counts(model: keras.Model) -> ParamCounts:
    # ``*_weights`` leave out the Sampling layer's seed state, which is a variable but no parameter
    return ParamCounts(
        trainable=sum(math.prod(v.shape) for v in model.trainable_weights),
        non_trainable=sum(math.prod(v.shape) for v in model.non_trainable_weights),
    )


def _count_abstractly(spec: VAESpec) -> ParamCounts:
    with keras.StatelessScope(initialize_variables=False):
        encoder, decoder, _ = build_encoder_decoder(spec)
        parts = [_counts(encoder), _counts(decoder)]
    return ParamCounts(sum(p.trainable for p in parts), sum(p.non_trainable for p in parts))


class KerasVAE(VAEAdapter):
    """Keras 3 on the backend named by ``KERAS_BACKEND``.

    The timed loop (``train_steps``) is ``model.fit`` over a ``PyDataset``, as the user
    trains (``impls/keras_fit.py``). ``train_step`` is ``model.train_on_batch``, Keras'
    public single-step API; it returns the loss as a host float, so every step ends with
    a device sync, the price a Keras user pays for ``train_on_batch``. ``fit`` waits for
    the device only where Keras' TensorFlow backend converts each batch's logs on the
    loop's thread (see ``impls.keras_fit``).
    """

    name: ClassVar[str] = f"keras-{BACKEND}"
    framework: ClassVar[str] = "keras"
    loops: ClassVar[tuple[str, ...]] = ("fit", "train_on_batch")
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    #: for the default loop, fit; ``use_loop`` sets it on the instance
    syncs_every_step: ClassVar[bool] = not async_callbacks()
    #: JAX and torch train on what ``to_device`` returns; TensorFlow's ``fit`` feeds a
    #: ``PyDataset`` through ``tf.data.Dataset.from_generator``, which hands the step host
    #: copies of whatever the dataset returns, so staging would time nothing different
    stages_input: ClassVar[bool] = BACKEND != "tensorflow"

    def __init__(self, spec: VAESpec) -> None:
        super().__init__(spec)
        s = spec.settings
        pin_device_settings(s.tf32, s.tf_memory_growth)
        seed_everything(s.seed)  # keras.utils.set_random_seed, less its import of TensorFlow off that backend
        self.model, layer_of = build_vae(spec)
        o = spec.optimizer
        self.optimizer = TextbookAdam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps,
                                      global_clipnorm=o.clip_global_norm)
        self.model.compile(optimizer=self.optimizer)
        # canonical name -> Keras variable; Keras' attribute names are the canonical leaves
        self.variables = {p.name: getattr(layer_of[p.name.rsplit(".", 1)[0]], p.name.rsplit(".", 1)[1])
                          for p in param_table(spec)}
        self.trainable_names = [p.name for p in param_table(spec) if p.trainable]
        self._value_and_grad = value_and_grad(self._training_loss)
        # fit reads the loss tracker eagerly after its last step; on JAX those few eager ops
        # compile on first use, which would count as compiles during the timed loop
        self.model.get_metrics_result()
        self.use_loop(self.loop)

    @classmethod
    def with_weights(cls, spec: VAESpec, weights: dict[str, np.ndarray]) -> KerasVAE:
        """Built at ``zeros`` (``impls.keras_layers.loading_weights``), then loaded with ``weights``; a subclass's
        own ``__init__`` and ``set_weights`` run as they would after ``cls(spec)``."""
        with loading_weights():
            model = cls(spec)
        model.set_weights(weights)
        return model

    # -- training loops ----------------------------------------------------------------
    def use_loop(self, loop: str) -> None:
        super().use_loop(loop)
        self.syncs_every_step = loop == "train_on_batch" or not async_callbacks()

    def train_steps(self, feed, steps: int, on_step) -> None:
        """``fit`` over a ``PyDataset`` of ``steps`` batches from ``feed`` (``impls.keras_fit``),
        or, under ``train_on_batch``, the staged step loop over ``train_step``."""
        if self.loop == "fit":
            fit_steps(self.model, feed, steps, on_step)
        else:
            super().train_steps(feed, steps, on_step)

    def loop_details(self) -> dict[str, Any]:
        """How the timed loop runs, for the result row: ``steps_per_execution`` and, under
        ``fit``, the ``PyDataset`` pipeline settings (``workers``, ``use_multiprocessing``,
        ``max_queue_size``) and whether Keras converts each batch's logs off the loop's thread."""
        if self.loop == "fit":
            return {"loop": self.loop, **fit_details(self.model)}
        return {"loop": self.loop, "steps_per_execution": 1, "py_dataset": None}

    def to_device(self, batch: Any) -> Any:
        """The batch as the backend's array on its device, as ``fit``'s iterator would hand it
        over (``impls.keras_backend.to_device``)."""
        if not isinstance(batch, np.ndarray):
            return batch
        return keras_backend.to_device(np.asarray(batch, np.float32))

    # -- model facts -------------------------------------------------------------------
    def param_counts(self) -> ParamCounts:
        return _counts(self.model)

    @classmethod
    def count_params(cls, spec: VAESpec) -> ParamCounts:
        """Counted on an abstract build: in a ``StatelessScope(initialize_variables=False)`` Keras defers
        every variable's initialiser, so the model has all its shapes and no storage. (A scope left with
        its default initialises them all on exit: keras-jax then compiled and filled every initialiser,
        17.7 s for ``bench params`` over the presets at k=5.) Keras registers the deferred variables in its
        global state, which is per thread, so the build runs in a thread of its own and they end with it;
        left in this thread, the next stateless call at top level (a training step) would initialise them."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(_count_abstractly, spec).result()

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: ops.convert_to_numpy(v).astype(np.float32) for name, v in self.variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        missing, extra = set(self.variables) - set(weights), set(weights) - set(self.variables)
        if missing or extra:
            raise KeyError(f"set_weights: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, v in self.variables.items():
            value = np.asarray(weights[name], np.float32)
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(f"set_weights: {name} has shape {value.shape}, the model wants {tuple(v.shape)}")
            v.assign(value)
        self.optimizer.reset()

    # -- compute -----------------------------------------------------------------------
    @staticmethod
    def _inputs(x: Any, eps: np.ndarray | None, mask_block: int | None = None):
        """The model's input: the batch alone (Keras draws noise and block), or a dict fixing either."""
        if not ops.is_tensor(x):  # a staged batch stays where to_device put it
            x = np.asarray(x, np.float32)
        fixed = {} if eps is None else {"eps": np.asarray(eps, np.float32)}
        if mask_block is not None:
            fixed["mask_block"] = np.asarray(mask_block, np.int32)
        return {"x": x, **fixed} if fixed else x

    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None, mask_block: int | None = None) -> float:
        """One ``train_on_batch``; returns this step's loss (Keras resets its loss
        tracker at the start of every ``train_on_batch``). With a masking layer and no
        ``mask_block``, the step draws its block as ``fit``'s steps do."""
        return self.model.train_on_batch(self._inputs(x, eps, mask_block))

    def eval_forward(self, x: np.ndarray, eps: np.ndarray, mask_block: int | None = None) -> dict[str, np.ndarray]:
        """Float32 arrays in every precision: under ``mixed_bfloat16`` the model's outputs are bfloat16 and are
        cast up exactly, so ``z_mean`` and ``z_log_var`` lie on the bfloat16 grid (parity reads that)."""
        out = self.model.predict_on_batch(self._inputs(x, eps, mask_block))
        logits = np.asarray(out["logits"], np.float64)
        return {  # the model ends in logits (the loss wants them); sigmoid(l) = (1 + tanh(l / 2)) / 2 never overflows
            "recon": (0.5 + 0.5 * np.tanh(0.5 * logits)).astype(np.float32),
            "z_mean": np.asarray(out["z_mean"], np.float32),
            "z_log_var": np.asarray(out["z_log_var"], np.float32),
        }

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray,
                       mask_block: int | None = None) -> tuple[float, dict[str, np.ndarray]]:
        model = self.model
        inputs = {"x": ops.convert_to_tensor(np.asarray(x, np.float32)),
                  "eps": ops.convert_to_tensor(np.asarray(eps, np.float32))}
        if mask_block is not None:
            inputs["mask_block"] = ops.convert_to_tensor(np.asarray(mask_block, np.int32))
        loss, grads = self._value_and_grad(
            [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], inputs)
        by_variable = {id(v): g for v, g in zip(model.trainable_variables, grads, strict=True)}
        return float(ops.convert_to_numpy(loss)), {
            name: ops.convert_to_numpy(by_variable[id(self.variables[name])]) for name in self.trainable_names
        }

    def _training_loss(self, trainable: list, non_trainable: list, inputs: dict):
        """The training-mode loss as a pure function of the variables' values.

        ``stateless_call`` (every backend has it) runs the model on the values it is
        given and returns the new BatchNorm statistics (and seed state) instead of
        assigning them, so ``loss_and_grads`` changes nothing in the model.
        """
        y_pred, _ = self.model.stateless_call(trainable, non_trainable, inputs, training=True)
        return self.model.loss_of(inputs["x"], y_pred)

    def synchronize(self) -> None:
        keras_backend.synchronize(self.model)

    def loss_value(self, handle: Any) -> float:
        """A host float (``train_on_batch``) or the backend array in ``fit``'s logs (this waits)."""
        return float(ops.convert_to_numpy(handle)) if ops.is_tensor(handle) else float(handle)

    # -- probes ------------------------------------------------------------------------
    def device_memory(self) -> dict[str, int | None]:
        return keras_backend.device_memory()

    def reset_peak_memory(self) -> None:
        """JAX has no peak reset; its ``peak_bytes`` is the process-wide peak."""
        keras_backend.reset_peak_memory()

    def counters(self) -> dict[str, int]:
        """``compiles``: JAX's XLA compilations in this process (every jitted function and
        eager op), with ``compile_cache_hits``, those loaded from the persistent compilation
        cache (``impls.jax_probes``, as the Flax build counts them); TensorFlow's traces of the
        train step (the first call of a ``tf.function`` traces twice, its variable-creation pass
        and then the real one; every new input structure or shape adds one). Eager torch
        compiles nothing."""
        if BACKEND == "tensorflow":
            return {"compiles": self.model.train_step_traces}
        return keras_backend.xla_counters()

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"framework": keras.__version__, "keras": keras.__version__, "backend": BACKEND,
                BACKEND: keras_backend.backend_version()}

    @classmethod
    def device_kind(cls) -> str:
        return "gpu" if on_gpu() else "cpu"


__all__ = ["KerasVAE"]
