"""Tornado request handlers: the WebSocket endpoint and the HTTP pages."""
