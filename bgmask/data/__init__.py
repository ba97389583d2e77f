"""CUB data layer: CUB-200-2011 and Waterbirds readers, the synthetic benchmark, transforms."""
