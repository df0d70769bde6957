"""HTTP routes, one module per resource family. Thin: parse, authorize, call engine, render."""
