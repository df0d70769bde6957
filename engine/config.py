"""Settings read from the environment (``SOPFLOW_*``), with safe defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _types(raw: str) -> tuple[str, ...]:
    """``SOPFLOW_ATTACHMENT_TYPES`` as lower-case extensions without dots; empty: the default list."""
    from engine import uploads  # late: uploads reads no settings, but keep config import-light

    names = tuple(dict.fromkeys(t.strip().lower().lstrip(".") for t in raw.split(",") if t.strip()))
    if not names:
        return uploads.DEFAULT_TYPES
    unknown = [n for n in names if n not in uploads.KNOWN_TYPES]
    if unknown:
        raise ValueError(f"SOPFLOW_ATTACHMENT_TYPES names {', '.join(unknown)}, which sopflow cannot recognise by "
                         f"content; choose among {', '.join(uploads.KNOWN_TYPES)}")
    return names


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("SOPFLOW_DATA_DIR", "./data")))
    database_url: str = field(default_factory=lambda: os.environ.get("SOPFLOW_DATABASE_URL", ""))
    max_upload_bytes: int = field(default_factory=lambda: _int("SOPFLOW_MAX_UPLOAD_BYTES", 5 * 1024 * 1024))
    max_request_bytes: int = field(default_factory=lambda: _int("SOPFLOW_MAX_REQUEST_BYTES", 20 * 1024 * 1024))
    # JSON request bodies (start/complete/message variables): a smaller cap than max_request_bytes.
    max_json_bytes: int = field(default_factory=lambda: _int("SOPFLOW_MAX_JSON_BYTES", 1024 * 1024))
    max_xml_depth: int = field(default_factory=lambda: _int("SOPFLOW_MAX_XML_DEPTH", 100))
    # Script budgets: loop iterations per script/expression, and wall time per script.
    script_max_steps: int = field(default_factory=lambda: _int("SOPFLOW_SCRIPT_MAX_STEPS", 100_000))
    script_max_seconds: float = field(default_factory=lambda: float(os.environ.get("SOPFLOW_SCRIPT_MAX_SECONDS", "2")))
    # Every script, expression and SOP template runs in an evaluator process (engine/evaluator.py):
    # CPU seconds above (enforced by a kill), memory above the process's start-up size, the
    # expanded size of the data it returns, the size of rendered SOP text, processes per API process.
    script_max_memory_mb: int = field(default_factory=lambda: _int("SOPFLOW_SCRIPT_MAX_MEMORY_MB", 256))
    script_max_result_bytes: int = field(default_factory=lambda: _int("SOPFLOW_SCRIPT_MAX_RESULT_BYTES",
                                                                      16 * 1024 * 1024))
    template_max_output_bytes: int = field(default_factory=lambda: _int("SOPFLOW_TEMPLATE_MAX_OUTPUT_BYTES",
                                                                        256 * 1024))
    script_workers: int = field(default_factory=lambda: _int("SOPFLOW_SCRIPT_WORKERS", 2))
    # Engine budget per command: tasks run and wall time before the command is refused.
    command_max_steps: int = field(default_factory=lambda: _int("SOPFLOW_COMMAND_MAX_STEPS", 50_000))
    command_max_seconds: float = field(default_factory=lambda: float(os.environ.get("SOPFLOW_COMMAND_MAX_SECONDS", "30")))
    command_retries: int = field(default_factory=lambda: _int("SOPFLOW_COMMAND_RETRIES", 5))
    # how long a server process trusts a token it has checked (revocation elsewhere takes effect within it)
    token_cache_seconds: float = field(
        default_factory=lambda: float(os.environ.get("SOPFLOW_TOKEN_CACHE_SECONDS", "5")))
    # External-task long polls wait at most this long (ms); a longer asyncResponseTimeout is shortened.
    max_long_poll_ms: int = field(default_factory=lambda: _int("SOPFLOW_MAX_LONG_POLL_MS", 60_000))

    # SLA (engine.sla, docs/notes/sla.md): a task is at risk once this share of its allowed time passed.
    sla_at_risk_fraction: float = field(default_factory=lambda: float(os.environ.get("SOPFLOW_SLA_AT_RISK_FRACTION",
                                                                                     "0.75")))
    # The admin clock (POST /api/admin/clock): off unless SOPFLOW_CLOCK_CONTROL=1.
    clock_control: bool = field(default_factory=lambda: os.environ.get("SOPFLOW_CLOCK_CONTROL") == "1")
    # Notifications (engine.notifications): SMTP for e-mail, one webhook URL + HMAC secret.
    smtp_host: str = field(default_factory=lambda: os.environ.get("SOPFLOW_SMTP_HOST", ""))
    smtp_port: int = field(default_factory=lambda: _int("SOPFLOW_SMTP_PORT", 25))
    smtp_from: str = field(default_factory=lambda: os.environ.get("SOPFLOW_SMTP_FROM", "sopflow@localhost"))
    webhook_url: str = field(default_factory=lambda: os.environ.get("SOPFLOW_WEBHOOK_URL", ""))
    webhook_secret: str = field(default_factory=lambda: os.environ.get("SOPFLOW_WEBHOOK_SECRET", ""))
    # Timer batches (engine.worker, docs/notes/batch.md): the worker fires the due timers of at most
    # this many instances, or about this many milliseconds of work, in one transaction.
    timer_batch_instances: int = field(default_factory=lambda: _int("SOPFLOW_TIMER_BATCH_INSTANCES", 50))
    timer_batch_ms: int = field(default_factory=lambda: _int("SOPFLOW_TIMER_BATCH_MS", 200))
    # Processes that fire timers under `sopflow serve` (api.timer_processes): its own worker loop
    # plus this many minus one `sopflow worker` children; 0: none (as --no-worker). A batch
    # computes outside SQLite's write lock, so on SQLite too a second process uses a second core.
    timer_processes: int = field(default_factory=lambda: _int("SOPFLOW_TIMER_PROCESSES", min(2, os.cpu_count() or 1)))
    # Task attachments (engine.uploads): the largest file stored, and the types accepted, as
    # comma-separated extensions (each one engine.uploads knows how to recognise by its content).
    max_attachment_bytes: int = field(default_factory=lambda: _int("SOPFLOW_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024))
    attachment_types: tuple[str, ...] = field(default_factory=lambda: _types(
        os.environ.get("SOPFLOW_ATTACHMENT_TYPES", "")))

    # The web application (web/, docs/notes/web.md): how long a browser stays signed in, and
    # whether the session cookie is sent over HTTPS only (turn on behind TLS).
    session_hours: float = field(default_factory=lambda: float(os.environ.get("SOPFLOW_SESSION_HOURS", "12")))
    cookie_secure: bool = field(default_factory=lambda: os.environ.get("SOPFLOW_COOKIE_SECURE") == "1")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'sopflow.db').resolve()}"


@lru_cache(maxsize=1)
def load() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
