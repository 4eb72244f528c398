"""``meshserve certs``: the mesh CA and the certificates of mesh services (files in one folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshserve.cli.common import cli_errors, console
from meshserve.cli.text import Table
from meshserve.tls import certs

certs_app = typer.Typer(help="The mesh CA and service certificates for TLS between mesh services.",
                        no_args_is_help=True)

FolderArgument = Annotated[Path, typer.Argument(help="folder holding ca.crt, ca.key and issued certificates")]


@certs_app.command("init")
@cli_errors
def init(
    folder: FolderArgument,
    force: Annotated[bool, typer.Option(help="replace an existing CA (every certificate it signed stops working)")]
    = False,
) -> None:
    """Create the mesh CA in FOLDER (ca.crt to share, ca.key to keep secret)."""
    made = certs.init_ca(folder, force=force)
    console.print(f"mesh CA: {made.cert} (valid until {made.not_after:%Y-%m-%d}); its key {made.key} "
                  "signs every mesh certificate: keep it off the machines that run services")


@certs_app.command("issue")
@cli_errors
def issue(
    folder: FolderArgument,
    name: Annotated[str, typer.Argument(help="certificate name, e.g. router, runtime-python, audit, etcd")],
    host: Annotated[list[str] | None, typer.Option(
        help="DNS name or IP address the service is reached at (repeatable; default localhost and loopback)")]
    = None,
    days: Annotated[int, typer.Option(min=1, help="days the certificate is valid")] = certs.CERT_DAYS,
) -> None:
    """Issue NAME.crt and NAME.key, signed by the mesh CA in FOLDER, for servers and clients alike."""
    made = certs.issue(folder, name, tuple(host) if host else certs.DEFAULT_HOSTS, days=days)
    console.print(f"{made.cert} and {made.key} (valid until {made.not_after:%Y-%m-%d}); start the service with "
                  f"--tls-ca {folder / 'ca.crt'} --tls-cert {made.cert} --tls-key {made.key}")


@certs_app.command("rotate")
@cli_errors
def rotate(
    folder: FolderArgument,
    names: Annotated[list[str] | None, typer.Argument(
        help="certificates to issue again (default: every one in FOLDER but the CA's)", show_default=False)] = None,
    days: Annotated[int, typer.Option(min=1, help="days the new certificates are valid")] = certs.CERT_DAYS,
) -> None:
    """Issue certificates in FOLDER again: new keys, the same mesh CA and hosts.

    Running services take the new certificates from their next connection on, without a restart.
    """
    table = Table("name", "serial", "expires", "hosts", title=f"rotated in {folder}")
    for made in certs.rotate(folder, tuple(names or ()), days=days):
        row = certs.describe(made.cert)
        table.add_row(row["name"], row["serial"], row["expires"], row["hosts"])
    console.print(table)


@certs_app.command("list")
@cli_errors
def list_certs(folder: FolderArgument) -> None:
    """The certificates in FOLDER: name, subject, expiry and hosts."""
    table = Table("name", "subject", "expires", "hosts", title=f"certificates in {folder}")
    for path in sorted(folder.glob("*.crt")):
        row = certs.describe(path)
        table.add_row(row["name"], row["subject"], row["expires"], row["hosts"])
    console.print(table)
