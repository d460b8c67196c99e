"""Model families, one file each; every public submodule is imported lazily by the model registry."""
