"""pytest-benchmark timings of the code whose speed users feel; run with ``nox -s microbench``."""
