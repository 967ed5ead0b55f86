"""The browser page at ``/``."""

from __future__ import annotations

import os

import tornado.web


class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        with open(os.path.join(self.settings["static_path"], "index.html"), "rb") as page:
            self.write(page.read())
        self.set_header("Content-Type", "text/html; charset=utf-8")
