"""How a number is taken: one tracker interface (``tracker``: start, stop, result) that every measurement
of a cell follows, host and device memory probes (``probes``), energy (``energy``), step-time statistics
(``stats``) and the machine a row was measured on (``fingerprint``)."""
