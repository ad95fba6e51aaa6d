"""Synthetic EGD-CXR release: the real files' layout and schemas, with learnable images and gaze.

The demo and every test run on it, read by the same loader as the real (credentialed) data.
"""

from model_lib.data.synth.generate import SynthSummary, generate_dataset

__all__ = ["SynthSummary", "generate_dataset"]
