"""`repscope token`: create, list and revoke API tokens.

Two ways to reach the tokens:
- on the server host (no --url): straight in the database named by REPSCOPE_DATABASE_URL / --data-dir, the
  way to make the first admin token (`docker compose exec api repscope token create alice --scopes admin`);
- anywhere else (--url URL): through the API, authenticated with an admin token in REPSCOPE_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SCOPE_HELP = "comma list of read, write, worker, admin (write and worker imply read; admin implies all)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser(
        "token", help="create, list and revoke API tokens",
        description="API tokens are shown once and stored as sha256 hashes. Without --url the command works on "
                    "the server's database (REPSCOPE_DATABASE_URL, or the SQLite file in --data-dir); with "
                    "--url it goes through the API using an admin token from REPSCOPE_TOKEN.")
    tsub = tok.add_subparsers(dest="token_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="server URL: use the API (admin token in $REPSCOPE_TOKEN) instead of the "
                                     "database")
        p.add_argument("--data-dir", help="data dir holding the embedded SQLite database (without --url)")
        p.add_argument("--json", action="store_true", help="print JSON")

    create = tsub.add_parser("create", help="create a token and print its secret (shown once)")
    create.add_argument("name", help="unique name, e.g. alice or gpu-worker-0")
    create.add_argument("--scopes", default="read,write", help=f"{SCOPE_HELP} (default read,write)")
    common(create)
    create.set_defaults(func=cmd_create)

    lst = tsub.add_parser("list", help="list tokens (names, scopes, last use; never secrets)")
    common(lst)
    lst.set_defaults(func=cmd_list)

    revoke = tsub.add_parser("revoke", help="revoke a token by name: its clients and sessions stop at once")
    revoke.add_argument("name")
    common(revoke)
    revoke.set_defaults(func=cmd_revoke)


# ---- two backends: the API or the database ---------------------------------------------------------------
def _api(args: argparse.Namespace):  # noqa: ANN202
    from repscope.client import Client

    return Client(args.url)


def _db_session(args: argparse.Namespace):  # noqa: ANN202
    if args.data_dir:
        os.environ["REPSCOPE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from backend.db import make_engine, make_sessionmaker, secure_data_dir
    from backend.migrate import upgrade
    from repscope.settings import Settings

    settings = Settings()
    secure_data_dir(settings)
    upgrade(settings.resolved_database_url)
    return make_sessionmaker(make_engine(settings))()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _row(t: dict) -> str:
    last = (t.get("last_used") or "never")[:19].replace("T", " ")
    return f"{t['id']:>4}  {t['name']:<24} {','.join(t['scopes']):<24} created {str(t['created_at'])[:19]}  " \
           f"last used {last}"


def _as_dict(token) -> dict:  # noqa: ANN001
    from repscope.schemas import TokenRead

    return json.loads(TokenRead.model_validate(token).model_dump_json())


def cmd_create(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    if args.url:
        from repscope.client import RepscopeError, _check

        try:
            out = _check(_api(args).http.post("/tokens", json={"name": args.name, "scopes": scopes})).json()
        except RepscopeError as exc:
            return _fail(f"{exc.detail} (HTTP {exc.status_code})")
    else:
        from backend.services import Conflict
        from backend.services import tokens as service

        with _db_session(args) as session:
            try:
                token, secret = service.create_token(session, args.name, scopes)
            except (ValueError, Conflict) as exc:
                return _fail(str(exc))
            out = {**_as_dict(token), "token": secret}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"created token {out['name']!r} with scopes {', '.join(out['scopes'])}. Its secret, shown only now:",
              file=sys.stderr)
        print(out["token"])
        print("use it as:  export REPSCOPE_TOKEN=<secret>   (or sign in to the web UI with it)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.url:
        from repscope.client import RepscopeError, _check

        try:
            rows = _check(_api(args).http.get("/tokens")).json()
        except RepscopeError as exc:
            return _fail(f"{exc.detail} (HTTP {exc.status_code})")
    else:
        from backend.services import tokens as service

        with _db_session(args) as session:
            rows = [_as_dict(t) for t in service.list_tokens(session)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{len(rows)} token(s)")
        for t in rows:
            print(_row(t))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.url:
        from repscope.client import RepscopeError, _check

        client = _api(args)
        try:
            rows = _check(client.http.get("/tokens")).json()
            match = [t for t in rows if t["name"] == args.name]
            if not match:
                return _fail(f"token {args.name!r} not found")
            _check(client.http.delete(f"/tokens/{match[0]['id']}"))
        except RepscopeError as exc:
            return _fail(f"{exc.detail} (HTTP {exc.status_code})")
    else:
        from backend.services import NotFound
        from backend.services import tokens as service

        with _db_session(args) as session:
            try:
                service.revoke(session, service.find_by_name(session, args.name))
            except NotFound as exc:
                return _fail(str(exc))
    if args.json:
        print(json.dumps({"revoked": args.name}))
    else:
        print(f"revoked token {args.name!r}")
    return 0
