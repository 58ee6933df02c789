"""The browser playground: its routes and static assets (HTML, CSS, JavaScript)."""
