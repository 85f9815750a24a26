"""vaebench's framework-free core: spec -> adapter -> cell -> result.

* ``spec/``      what the model is: the spec language, the presets, a numpy reference forward pass.
* ``adapter.py`` the one interface every build implements, and the registry of built-in builds.
* ``run/``       starting workers and what they do: one cell, the matrix, the sweep, parity.
* ``measure/``   how a number is taken: probes of RSS and device memory, step statistics, the machine.
* ``diagnose/``  why it breaks: preflight (int32, memory), leak verdicts, failure classes, leak scenarios.
* ``store.py``   the result: append-only JSON Lines, one row per cell, and loading them back.
* ``data.py``    the profiles a cell trains on (synthetic or the user's memmap).

No module here imports a framework at load time; a worker imports only its own cell's.
"""
