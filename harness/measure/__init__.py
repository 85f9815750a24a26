"""How a number is taken: host and device memory probes (``probes``), step-time statistics (``stats``)
and the machine a row was measured on (``fingerprint``)."""
