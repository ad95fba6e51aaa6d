"""Generated torchvision-like DenseNet weights and a local HTTP server that serves them.

The published ImageNet files cannot be used offline; a random DenseNet121 state dict saved the
way they are (old-style ``norm.1`` keys, no ``num_batches_tracked``, the classifier kept) and
named as torchvision names them (``densenet121-<first 8 hex of its sha256>.pth``) goes through
the same download, hash and cache code.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from torchvision.models import densenet121


def old_style_key(key: str) -> str:
    """The 'norm.1' naming of older torchvision checkpoints (the published ImageNet files)."""
    return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


def densenet121_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A random DenseNet121 state dict with running statistics unlike a fresh model's."""
    torch.manual_seed(seed)
    state = densenet121(weights=None).state_dict()
    return {k: v + 1 if "running" in k else v for k, v in state.items()}


def save_like_torchvision(state: dict[str, torch.Tensor], folder: Path) -> Path:
    """``state`` saved as the published files are, named ``densenet121-<sha256[:8]>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "densenet121.tmp"
    torch.save({old_style_key(k): v for k, v in state.items() if "num_batches" not in k}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"densenet121-{digest[:8]}.pth")


@dataclass
class Served:
    """A folder served on 127.0.0.1; ``hits`` counts GET requests per path."""

    url: str
    folder: Path
    hits: dict[str, int] = field(default_factory=dict)


@contextmanager
def serve_folder(folder: Path) -> Iterator[Served]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (port 0) in a thread for the block."""
    served = Served(url="", folder=folder)

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits[self.path] = served.hits.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
