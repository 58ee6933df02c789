"""The Replicate-compatible contract: routes and rendering."""
