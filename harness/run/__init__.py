"""Starting workers and what they do: the typed task (``task``), the launcher (``launch``), the worker
entry point (``worker``), one measured cell (``cell``), the bare loop it is checked against (``bare``),
the matrix of cells (``runner``, ``matrix``), the max-batch sweep (``sweep``) and parity (``parity``)."""
