"""EGD-CXR data: schemas, geometry, gaze heatmaps, DICOM decoding, the packed store."""
