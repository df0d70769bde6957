"""The web application: server-rendered pages for employees, designers, auditors and admins (docs/notes/web.md)."""
