"""Page routers, one module per area (docs/notes/web.md)."""
