"""The Eachlabs prediction contract: routes, request/response schemas and rendering."""
