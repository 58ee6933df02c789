"""The prediction domain: what a prediction is, its statuses and errors (``model``). No FastAPI,
SQL or torch here: the API contracts, the stores and the workers all speak these types."""
