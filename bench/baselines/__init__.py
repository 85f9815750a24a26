"""Textbook training loops, one per framework, that the harness's step time is checked against.

Each module is what a user writes from that framework's own tutorial, with none of
vaebench's adapter code: ``torch_loop`` (an ``nn.Module`` and the loop of the PyTorch
tutorials), ``jax_loop`` (Flax NNX with the functional, donated ``jax.jit`` step of the
Flax performance guide), ``keras_fit`` (a ``keras.Model`` with ``compute_loss``,
trained by ``fit`` over a ``keras.utils.PyDataset``, as the Keras VAE example).
They read only the spec's layer sizes (``harness.spec``) and the same synthetic
batches (``harness.data``); an import-linter contract in ``pyproject.toml`` keeps
them away from ``impls`` and the rest of the harness.

Each exposes ``run(spec, kmer, batch, steps, warmup, steps_per_window) -> dict`` with
``median_s``, ``window_times_s`` (seconds per step of each window), ``params``
(trainable count) and ``final_loss``. Each trains in the spec's precision the way its framework's docs show it
(bf16: torch's autocast recipe, Flax NNX module dtypes, the Keras ``mixed_bfloat16`` policy).
``python -m bench baseline`` runs them in workers
(``harness.run.task.BaselineTask``), in the environment a cell gets.
"""

from harness.impls_registry import RecordField

#: the harness's impl -> the baseline module that trains the same model the textbook way: the ``baseline``
#: of each impl's record (``harness.impls_registry``). The records are plain data, the one thing about
#: the builds this package reads; the contract in pyproject.toml keeps the builds themselves away.
BASELINES = RecordField("baseline")
