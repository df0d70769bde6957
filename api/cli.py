"""The ``sopflow`` command line: db upgrade, deploy, worker, serve."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from api.timer_processes import PARENT_ENV, TimerProcesses
from engine import migrate
from engine.commands import SYSTEM, Actor, deploy
from engine.config import load as load_settings
from engine.errors import InvalidInput, SopflowError
from engine.loading import UploadedFile
from engine.store.db import Database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _db() -> Database:
    return Database(load_settings().resolved_database_url())


def _bundles(paths: list[str], one_bundle: bool) -> list[list[UploadedFile]]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".bpmn", ".dmn")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"sopflow deploy: {raw}: no such file or directory")
    uploads = [UploadedFile(p.name, p.read_bytes()) for p in files]
    if one_bundle:
        return [uploads]
    dmn = [u for u in uploads if u.name.lower().endswith(".dmn")]
    return [[u, *dmn] for u in uploads if not u.name.lower().endswith(".dmn")]


def cmd_db(args: argparse.Namespace) -> int:
    url = load_settings().resolved_database_url()
    if args.action == "upgrade":
        migrate.upgrade(url)
        print(f"database at head {', '.join(migrate.current(url))}")
    else:
        print(", ".join(migrate.current(url)) or "(empty)")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    db = _db()
    actor = Actor(args.actor) if args.actor else SYSTEM
    status = 0
    for bundle in _bundles(args.paths, args.bundle):
        names = ", ".join(f.name for f in bundle)
        try:
            result = db.command(lambda s, b=bundle: deploy(s, files=b, actor=actor))
        except SopflowError as exc:
            print(f"refused {names}: {exc}", file=sys.stderr)
            status = 1
            continue
        verb = "deployed" if result.created else "unchanged"
        for d in result.definitions:
            print(f"{verb} {d['key']} v{d['version']} ({d['resource']})")
    return status


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.config import load as load_settings
    from engine.worker import run_forever, run_once

    db = _db()
    if load_settings().clock_control:  # agree with the API's admin clock (the shared offset)
        from engine.commands import clock_control

        clock_control.install(db)
    if args.once:
        print(json.dumps(run_once(db).__dict__))
        return 0
    from engine.worker import wake

    stop = threading.Event()

    def finish(signum: int, _frame: object) -> None:  # end the round in progress, then exit
        stop.set()
        wake()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    # The loop runs in a thread; the main thread only waits for it, so a signal handler (always run
    # in the main thread) never interrupts the loop while it holds the wake-up event's lock.
    loop = threading.Thread(target=run_forever, kwargs={"db": db, "stop": stop, "interval": args.interval},
                            name="sopflow-worker")
    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    parent = int(os.environ.get(PARENT_ENV) or 0)  # a child of `sopflow serve` (api.timer_processes)
    loop.start()
    while loop.is_alive():
        loop.join(0.5)
        if parent and os.getppid() != parent and not stop.is_set():  # serve died without stopping us
            logging.getLogger("sopflow.worker").warning("the serving process %s is gone; stopping", parent)
            stop.set()
            wake()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket the HTTP worker processes share, with TCP_NODELAY for every connection.

    uvicorn's own (``Config.bind_socket``) is made without ``IPPROTO_TCP``, so asyncio does
    not set TCP_NODELAY on its connections, and a keep-alive client then waits for a delayed
    ACK (~40 ms) on every response written in two parts. Linux passes TCP_NODELAY on from
    the listening socket to the connections it accepts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"sopflow serve: cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.observability import configure_logging

    configure_logging()
    settings = load_settings()
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise SystemExit("sopflow serve: --workers must be at least 1")
    timer_processes = 0 if args.no_worker else (
        args.timer_processes if args.timer_processes is not None else settings.timer_processes)
    if timer_processes < 0:
        raise SystemExit("sopflow serve: --timer-processes must be 0 or more")
    print(f"sopflow serving on http://{args.host}:{args.port} with {workers} worker process(es) and "
          f"{timer_processes} timer process(es) (API docs at /docs)", flush=True)
    # One timer worker loop runs in this process (below); the others are `sopflow worker` children.
    children = TimerProcesses(timer_processes - 1, settings.resolved_database_url())
    children.start()
    try:
        if workers == 1:
            # uvicorn shuts down gracefully on SIGTERM and then raises it again with the handler it
            # found: make that one unwind to the ``finally`` below, so the children are stopped too
            signal.signal(signal.SIGTERM, _exit_after_shutdown)
            uvicorn.run(create_app(run_worker=timer_processes > 0), host=args.host, port=args.port,
                        log_level="warning", access_log=False)
            return 0
        _serve_processes(args, workers, run_worker=timer_processes > 0)
    finally:
        children.stop()
    return 0


def _exit_after_shutdown(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _serve_processes(args: argparse.Namespace, workers: int, *, run_worker: bool) -> None:
    """Several HTTP processes: uvicorn's supervisor spawns them from an import string; this
    process's timer worker loop runs as a thread of the supervisor, never in the HTTP workers."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from api.app import SERVE_WORKER_ENV
    from engine.worker import run_forever, wake

    os.environ[SERVE_WORKER_ENV] = "0"
    stop = threading.Event()
    timer_worker = None
    if run_worker:
        timer_worker = threading.Thread(target=run_forever, kwargs={"db": _db(), "stop": stop},
                                        name="sopflow-worker", daemon=True)
        timer_worker.start()
    try:
        config = uvicorn.Config("api.app:serve_app", factory=True, workers=workers, host=args.host,
                                port=args.port, log_level="warning", access_log=False)
        Multiprocess(config, sockets=[_listen(args.host, args.port)]).run()
    finally:
        stop.set()
        wake()
        if timer_worker is not None:
            timer_worker.join(timeout=5)


def _read_password(name: str) -> str:
    """A new password for ``name``: asked twice on a terminal, else the first line of standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"new password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise InvalidInput("the two passwords differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    from engine import identity, passwords

    db = _db()
    try:
        if args.action == "add":
            password = _read_password(args.name) if args.password else None

            def add(s: Session) -> identity.UserView:
                view = identity.add_user(s, name=args.name, role=args.role, groups=args.group, actor=SYSTEM)
                if password is not None:
                    passwords.set_password(s, name=args.name, password=password, actor=SYSTEM)
                return view

            view = db.command(add)
            print(f"added {view.name} ({view.role}) groups: {', '.join(view.groups) or '-'}"
                  + (" (can sign in)" if password else ""))
        elif args.action == "password":
            password = passwords.generate_password() if args.generate else _read_password(args.name)
            db.command(lambda s: passwords.set_password(s, name=args.name, password=password, actor=SYSTEM))
            print(f"new password for {args.name}: {password}" if args.generate else f"password of {args.name} set")
        elif args.action == "token":
            print(db.command(lambda s: identity.issue_token(s, name=args.name, actor=SYSTEM)))
        elif args.action == "revoke":
            count = db.command(lambda s: identity.revoke_tokens(s, name=args.name, actor=SYSTEM))
            print(f"revoked {count} token(s) of {args.name}")
        elif args.action == "list":
            with db.read() as s:
                for u in identity.list_users(s):
                    print(f"{u.name:<12} {u.role:<9} {', '.join(u.groups)}")
        elif args.action == "demo":
            tokens, secrets = db.command(lambda s: (identity.seed_demo(s, actor=SYSTEM),
                                                    identity.demo_passwords(s, actor=SYSTEM)))
            if tokens:
                print("Demo organisation created. These API tokens are shown once:")
                for name, token in tokens.items():
                    print(f"  {name:<8} {token}")
            if secrets:
                print("Sign in at http://127.0.0.1:8000/ with these passwords (shown once):")
                for name, password in secrets.items():
                    print(f"  {name:<8} {password}")
            if not tokens and not secrets:
                print("Demo organisation already present (new token: sopflow users token NAME; "
                      "new password: sopflow users password NAME --generate).")
    except SopflowError as exc:
        print(f"sopflow users: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine.identity import ROLES

    parser = argparse.ArgumentParser(prog="sopflow", description="BPMN workflow engine and SOP runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(fn=cmd_db)
    dep = sub.add_parser("deploy", help="deploy .bpmn/.dmn files or directories")
    dep.add_argument("paths", nargs="+")
    dep.add_argument("--bundle", action="store_true", help="deploy all files as one deployment")
    dep.add_argument("--actor", help="who deploys (recorded in the audit trail)")
    dep.set_defaults(fn=cmd_deploy)
    wk = sub.add_parser("worker", help="run the timer/job worker")
    wk.add_argument("--once", action="store_true", help="fire what is due now and exit")
    wk.add_argument("--interval", type=float, default=1.0)
    wk.set_defaults(fn=cmd_worker)
    us = sub.add_parser("users", help="identity: users add|password|token|revoke|list|demo")
    us_sub = us.add_subparsers(dest="action", required=True)
    add = us_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=list(ROLES))
    add.add_argument("--group", action="append", default=[], help="repeatable")
    add.add_argument("--password", action="store_true",
                     help="let the user sign in: asks for a password (or reads one line from stdin)")
    pw = us_sub.add_parser("password", help="set a user's sign-in password (asks, or reads one line from stdin)")
    pw.add_argument("name")
    pw.add_argument("--generate", action="store_true", help="generate one and print it")
    tok = us_sub.add_parser("token", help="print a new API token for a user (only the token)")
    tok.add_argument("name")
    rev = us_sub.add_parser("revoke", help="revoke every token of a user")
    rev.add_argument("name")
    us_sub.add_parser("list", help="list users")
    us_sub.add_parser("demo", help="create the demo organisation (idempotent); prints new tokens and passwords once")
    us.set_defaults(fn=cmd_users)
    sv = sub.add_parser("serve", help="serve the HTTP API (and, by default, the worker)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=None,
                    help="HTTP worker processes (default: the number of cores); timers fire apart from them")
    sv.add_argument("--no-worker", action="store_true", help="do not run the timer worker")
    sv.add_argument("--timer-processes", type=int, default=None,
                    help="processes that fire timers: this one's worker loop plus N-1 `sopflow worker` children "
                         "(default: SOPFLOW_TIMER_PROCESSES, else min(2, cores); 0: none)")
    sv.set_defaults(fn=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
