"""LoRA adapters: where they come from (sources), the download cache, and applying them."""
