"""A real uvicorn server on localhost in a thread, for the tests that need a live socket (streaming
bodies, overload, disconnects); `TestClient` covers the rest."""
import socket
import threading
import time

import httpx
import uvicorn

from vistaste.serving.service import create_app
from vistaste.serving.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on localhost in a thread; ``app`` is reachable for patching."""

    def __init__(self, settings: Settings):
        self.port = free_port()
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise TimeoutError("server did not start")
            time.sleep(0.05)
        return self

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=kw.pop("timeout", 60), **kw)

    @property
    def state(self):
        return self.app.state.vistaste

    def slow_down(self, seconds: float) -> list:
        """Make every slate take ``seconds`` longer (in the worker thread); returns the list of calls."""
        calls, recommender = [], self.state.recommender
        original = recommender.recommend

        def slow(*args, **kw):
            calls.append(time.time())
            time.sleep(seconds)
            return original(*args, **kw)

        recommender.recommend = slow
        return calls

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
