"""vaebench's command line: ``python -m bench VERB`` (also installed as ``vaebench``)."""
