"""A benchmark of the service that anyone can rerun: ``python -m bench`` (see ``bench/__main__.py``)."""
