"""How a step function becomes a Kubeflow Pipelines component.

Every step runs in one project image that has this package and its pinned dependencies
installed, so a component is a lightweight Python component bound to that image, with its
imports inside the body and no ``pip install`` at run time (``install_kfp_package=False``: kfp
is in the image, and under ``kfp.local`` it is already in the environment). The image reference
here is a placeholder; ``cxrgaze compile --image`` writes the real one into the compiled
pipeline (:func:`pipelines.compile.compile_pipeline`).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable

from kfp import dsl

PLACEHOLDER_IMAGE = "cxr-gaze:latest"
PROGRESS_ENV = "CXRGAZE_PROGRESS_FILE"
"""Set by ``cxrgaze run`` for its steps: a file that training steps append one line per epoch
to, which the command shows as it happens (kfp.local logs a step's output when it ends)."""


def step_component(func: Callable) -> Callable:
    """``@dsl.component`` on the project image, without a run-time install of kfp.

    The step modules use postponed annotations (strings); kfp reads the types from
    ``__annotations__``, so they are resolved here first. In the container the function's source
    runs in a module of its own without postponed annotations, where they resolve as usual.
    """
    if os.environ.get("_KFP_RUNTIME") == "true":
        # Inside a running step kfp's executor has already loaded the component, and kfp.dsl
        # offers no decorator; the step function only needs to be importable.
        return func
    func.__annotations__ = typing.get_type_hints(func, include_extras=True)
    return dsl.component(func, base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
