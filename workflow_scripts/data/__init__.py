"""Data stage: metadata, validation, illumination + image cache, demo generator, download."""
