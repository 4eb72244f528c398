"""``meshserve secrets``: the mesh credential and etcd's users, for deployments that ``meshserve up`` does not start.

``meshserve up --no-dev-mode`` does the same for the local mesh by itself; Docker Compose
and Kubernetes run these commands once, in an init job (see docs/security.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from meshserve.auth import mesh as mesh_credential
from meshserve.cli.common import EtcdOption, UserError, cli_errors, console
from meshserve.cli.text import Table
from meshserve.errors import Unauthenticated
from meshserve.registry import etcd_auth
from meshserve.registry.etcd import connect
from meshserve.registry.etcd_token import EtcdCredentials
from meshserve.secretfiles import read_or_make

secrets_app = typer.Typer(help="The mesh credential and etcd's users outside dev mode.", no_args_is_help=True)


@secrets_app.command("credential")
@cli_errors
def credential(path: Annotated[Path, typer.Argument(help="file to hold the mesh credential (mode 0600)")]) -> None:
    """Make the mesh credential in PATH (kept when it exists): routers present it, runtimes require it."""
    if path.exists():
        mesh_credential.read(path)  # refuses a file that holds no credential
        console.print(f"mesh credential kept: {path}")
        return
    mesh_credential.write(path)
    console.print(f"mesh credential made: {path}; give it to routers, runtimes and Triton's registrar "
                  "with --mesh-credential-file")


def _user(spec: str, password_dir: Path | None) -> etcd_auth.User:
    name, sep, role = spec.partition("=")
    if not sep or not name or not role:
        raise UserError(f"--user {spec!r}: write NAME=ROLE, e.g. router=router or runtime-r=runtime")
    etcd_auth.grants(role)  # an unknown role fails here, naming the choices
    password = read_or_make(password_dir / f"etcd-{name}.password") if password_dir else None
    return etcd_auth.User(name, password, role)


@secrets_app.command("etcd-users")
@cli_errors
def etcd_users(
    user: Annotated[list[str], typer.Option(
        help="NAME=ROLE, repeatable; ROLE: operator, router, audit, runtime (any runtime's records) or "
             "runtime:ID (that runtime's only)")],
    root_password_file: Annotated[Path, typer.Option(help="etcd root's password (made when missing)")],
    password_dir: Annotated[Path | None, typer.Option(
        help="folder of etcd-NAME.password files (made when missing); without it the users have no password "
             "and etcd names them by their TLS certificates")] = None,
    etcd: EtcdOption = "",
) -> None:
    """Create one etcd user per mesh component, each with only its key ranges, and turn etcd's authentication on."""
    users = [_user(spec, password_dir) for spec in user]
    root = EtcdCredentials(etcd_auth.ROOT_USER, read_or_make(root_password_file))

    async def run() -> None:
        try:
            client = await connect(etcd, wait=10)
        except Unauthenticated:  # on already: root changes it
            client = await connect(etcd, wait=10, credentials=root)
        try:
            await etcd_auth.setup(client, users, root_password=root.password)
        finally:
            await client.close()

    asyncio.run(run())
    table = Table("user", "role", "authenticates with", title=f"etcd users at {etcd} (authentication on)")
    for u in users:
        table.add_row(u.name, u.role, f"{password_dir}/etcd-{u.name}.password" if u.password else "certificate")
    console.print(table)
