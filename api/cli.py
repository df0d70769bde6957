"""The ``sopflow`` command line: db upgrade, deploy, worker, serve."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from engine import migrate
from engine.config import load as load_settings
from engine.errors import SopflowError
from engine.loading import UploadedFile
from engine.runtime import SYSTEM, Actor, deploy
from engine.store.db import Database


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
    from engine.worker import run_forever, run_once

    db = _db()
    if args.once:
        print(json.dumps(run_once(db).__dict__))
        return 0
    stop = threading.Event()
    try:
        run_forever(db, stop=stop, interval=args.interval)
    except KeyboardInterrupt:
        stop.set()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(run_worker=not args.no_worker), host=args.host, port=args.port,
                log_level="info", access_log=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    sv = sub.add_parser("serve", help="serve the HTTP API (and, by default, the worker)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--no-worker", action="store_true", help="do not run the timer worker in this process")
    sv.set_defaults(fn=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
