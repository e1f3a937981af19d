"""`inspector station`: run the review station, and manage its users and exports."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import os
import sys

from ..errors import InspectorError

DEFAULT_OUT = "station"


def add_parser(sub, store_help: str) -> None:
    from ..common.arguments import number, whole

    st = sub.add_parser(
        "station",
        help="the review station: a web app for operators, an API for the line",
        description="Run the review station (with -c), or manage its users and exports.",
    )
    st.add_argument("-c", "--config", default=None, help="YAML config (needed to run the station)")
    st.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder for uploads, explanations and the default store (default ./{DEFAULT_OUT})",
    )
    st.add_argument("--store", default=None, help=store_help)
    st.add_argument(
        "--watch",
        default=None,
        metavar="IN_DIR",
        help="also explain each new image in this folder (handled ones go to <out>/done, <out>/failed)",
    )
    st.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; put a TLS reverse proxy "
        "in front for others)",
    )
    st.add_argument("--port", type=whole(1, 65535), default=8600, help="(default 8600)")
    st.add_argument(
        "--shifts",
        default="06:00,14:00,22:00",
        help="shift start times, local clock (default 06:00,14:00,22:00)",
    )
    st.add_argument(
        "--max-upload-mb",
        type=number(0, 1 << 20, above_low=True),
        default=50.0,
        help="largest accepted upload (default 50)",
    )
    st.add_argument(
        "--settle",
        type=number(0, 86400),
        default=2.0,
        help="with --watch: seconds a file must stay unchanged before use (default 2)",
    )
    st.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="[PRODUCT[/CAMERA]=]IMAGE",
        help="a golden image of a good part, shown beside each part with key r; repeat it per product or "
        "product/camera (default: the part a reviewer most recently labelled good, of the same product "
        "and camera)",
    )
    st.add_argument(
        "--secure-cookies",
        action="store_true",
        help="send the session cookie over HTTPS only (set this behind a TLS proxy)",
    )
    where = argparse.ArgumentParser(add_help=False)  # the same --out/--store after a command's name
    where.add_argument("--out", default=argparse.SUPPRESS, help="the station's folder (its store is in it)")
    where.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    ops = st.add_subparsers(dest="station_command", metavar="{add-user,list-users,disable-user,export}")
    add = ops.add_parser(
        "add-user", parents=[where], help="add a user (asks for the password), or change one with --update"
    )
    add.add_argument("username")
    add.add_argument(
        "--role",
        default="reviewer",
        choices=("viewer", "reviewer", "admin"),
        help="viewer: sees; reviewer: also gives verdicts and uploads; admin: also exports "
        "(default reviewer)",
    )
    add.add_argument("--update", action="store_true", help="change the password and role of an existing user")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    ops.add_parser("list-users", parents=[where], help="list users and roles")
    dis = ops.add_parser(
        "disable-user", parents=[where], help="stop a user from logging in (their verdicts stay)"
    )
    dis.add_argument("username")
    ex = ops.add_parser(
        "export",
        parents=[where],
        help="reviewed parts as a dataset folder (one folder per label + labels.csv)",
    )
    ex.add_argument("dataset", help="a new folder for the dataset (--out is the station's folder it reads)")


def run(args) -> int:
    from . import auth
    from .service import store_for_users

    command = args.station_command
    if command is None:
        return _serve(args)
    password = None
    if command == "add-user":  # checked before anything is created
        password = _read_password(args.password_stdin)
        auth.check_new_user(args.username, password, args.role)
    with store_for_users(args.out, args.store, create=command == "add-user") as store:
        if command == "add-user":
            auth.add_user(store, args.username, password, args.role, update=args.update)
            print(f"user {args.username} ({args.role}) {'updated' if args.update else 'added'}")
        elif command == "list-users":
            for u in auth.list_users(store):
                print("\t".join([u["username"], u["role"]] + (["disabled"] if u["disabled"] else [])))
        elif command == "disable-user":
            auth.disable_user(store, args.username)
            print(f"user {args.username} disabled")
        elif command == "export":
            from .export import export_folder

            written, missing = export_folder(store, args.dataset)
            print(
                f"exported {written} image(s) to {args.dataset}"
                + (
                    f"; {missing} reviewed part(s) have no original image any more (listed in labels.csv)"
                    if missing
                    else ""
                )
            )
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    from .auth import MIN_PASSWORD

    if len(first) < MIN_PASSWORD:
        raise InspectorError(f"the password must have at least {MIN_PASSWORD} characters")
    if getpass.getpass("again: ") != first:
        raise InspectorError("the two passwords differ; run the command again")
    return first


def _serve(args) -> int:
    if not args.config:
        raise InspectorError("give -c CONFIG to run the station (or a command: add-user, list-users, ...)")
    try:
        import uvicorn
    except ImportError as e:
        raise InspectorError(
            "the station needs its extra [station]: pip install -e '.[station]' in the checkout, or "
            "pip install fastapi uvicorn jinja2 python-multipart swagger-ui-bundle-v2"
        ) from e
    from .app import create_app
    from .service import Station, StationSettings, parse_references
    from .shifts import parse_shifts

    parse_shifts(args.shifts)
    settings = StationSettings(
        config=args.config,
        out_dir=args.out,
        store_url=args.store,
        watch_dir=args.watch,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        shifts=tuple(args.shifts.split(",")),
        secure_cookies=args.secure_cookies,
        settle=args.settle,
        reference=parse_references(args.reference),
    )
    if args.watch:
        from ..jobs.watch import check_folders

        out = os.path.abspath(args.out)
        check_folders(
            os.path.abspath(args.watch), out, os.path.join(out, "done"), os.path.join(out, "failed")
        )
    if args.watch and not os.path.isdir(args.watch):
        raise InspectorError(
            f"--watch {args.watch}: no such folder; create it (the camera or line PC writes images there)"
        )
    _check_port(args.host, args.port)
    station = Station(settings)
    from . import auth

    if not auth.list_users(station.store):
        print(
            f"note: no users yet; add one: inspector station add-user NAME --role admin --out {args.out}"
            + (f" --store {args.store}" if args.store else ""),
            file=sys.stderr,
        )
    if not _is_loopback(args.host):
        print(
            f"note: listening on {args.host}: anyone who reaches this port sees the station; put a TLS "
            "reverse proxy in front and use --secure-cookies",
            file=sys.stderr,
        )
    station_log = logging.getLogger("inspector.station")
    station_log.setLevel(logging.INFO)
    station_log.addHandler(_stdout_handler())
    station_log.propagate = False  # one line per event, not a second "warning:" copy from the root logger
    print(f"review station on http://{args.host}:{args.port}/ (store: {station.store!r})", flush=True)
    from ..common.stop import Stop

    stop = Stop().install()  # uvicorn hands a SIGTERM back to this handler after its graceful shutdown
    uvicorn.run(create_app(station), host=args.host, port=args.port, log_level="warning")
    print(f"review station stopped{f' by {stop.signal_name}' if stop.signal_name else ''}", flush=True)
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail before loading anything when the address is taken (exit 2, as for any usage error)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise InspectorError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
            "another station running? choose another --port"
        ) from e


def _stdout_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
