"""User-facing notices shared by several routes."""

TINY_MODEL_NOTICE = (
    "This server runs the tiny demo model with random weights because no FLUX.1-dev weights were found: "
    "its images are noise. Point model.weights at FLUX.1-dev (see README)."
)
