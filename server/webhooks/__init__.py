"""Webhook deliveries: the dispatcher that sends, signs and retries them."""
