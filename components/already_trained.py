"""The branch a pipeline run takes when `open_run` found its model already trained: one log
line and a Markdown note in the KFP UI naming the version. The module imports only kfp, so the
step starts in about a second."""

from __future__ import annotations

from kfp.dsl import Markdown, Output

from components.kfp_step import step_component


def already_trained_note(trained_as: str) -> str:
    """What the run says when it trains nothing: the version that has this data and code."""
    return (
        f"cxr-gaze version {trained_as} was trained on the same data content, code commit, "
        "preset and overrides: nothing to train. Run with retrain=true to train anyway."
    )


@step_component
def already_trained(trained_as: str, note: Output[Markdown]):
    """Record that this run trained nothing, and why."""
    import logging

    from components.already_trained import already_trained_note

    text = already_trained_note(trained_as)
    logging.getLogger(__name__).info("%s", text)
    with open(note.path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
