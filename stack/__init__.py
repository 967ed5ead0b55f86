"""Launchers for the processes the Procfile runs besides the server and the worker."""
