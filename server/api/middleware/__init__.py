"""ASGI middleware: request body limit, blank query values, Host and Origin guard."""
