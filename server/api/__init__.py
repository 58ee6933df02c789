"""HTTP only: routes per contract, shared dependencies, errors, middleware and the OpenAPI document."""
