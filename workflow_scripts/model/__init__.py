"""The backbone, shared by training and evaluation: building it, its weights and checkpoints,
precision, random state, model_kwargs, and embedding images with it."""
