"""Training the folds: the split and one fold, data order, the model cache, fused folds, the JAX loop."""
