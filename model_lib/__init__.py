"""cxr-gaze model library: data, models, losses, metrics and training. Pure computation."""
