"""MMSegmentation plugin for the binary bird segmentation task (registers CUBBinarySegDataset)."""
