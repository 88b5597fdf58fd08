"""Pure tensor code of the sparsification core (no transformers, no nn.Module, no I/O)."""
