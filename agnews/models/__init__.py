"""Model factory: Hugging Face sequence classifiers from the hub, a local path, a package, or a tiny random config."""
