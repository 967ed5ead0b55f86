"""A command-line client of the factorial service: ``python -m client 100000 --out f.txt``."""
