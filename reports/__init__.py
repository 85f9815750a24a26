"""Reports from stored results: Markdown and HTML pages with plots (``reports.build``) and run-to-run
comparison with regression flags (``reports.compare``). Framework-free: never imports torch, jax, keras
or tensorflow."""
