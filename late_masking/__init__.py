"""Late masking: classifiers whose background features are zeroed before pooling."""
