"""Worker processes: one per GPU, each holding a loaded FLUX pipeline and running one job at a time."""
