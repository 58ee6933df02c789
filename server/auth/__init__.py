"""Who may call: API keys (the keyring) and per-key rate limits."""
