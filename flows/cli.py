"""`egi-flows`: the command line of prefect-egi."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from pydantic import SecretStr

TOKEN_HELP = """Check and inspect your EGI Check-in access token.

Sources, in order (the first fresh token wins):

1. --token (or `--token -` to paste it on stdin, out of shell history)

2. environment: OIDC_ACCESS_TOKEN, then FEDCLOUD_OIDC_ACCESS_TOKEN

3. EGI Notebooks token files: /var/run/secrets/egi.eu/access_token, then /var/run/secrets/oidc/access_token (--token-file to choose others)

4. a refresh token: OIDC_REFRESH_TOKEN + OIDC_CLIENT_ID (+ OIDC_CLIENT_SECRET), redeemed at the issuer found by OIDC discovery (--issuer)

5. a mytoken: --mytoken (or `--mytoken -` for stdin), else MYTOKEN, then FEDCLOUD_MYTOKEN, redeemed at its mytoken server (the one it names, else --mytoken-server / MYTOKEN_SERVER, default https://mytoken.data.kit.edu); make it with the "AT" capability

6. oidc-agent, when OIDC_AGENT_ACCOUNT is set (needs the oidc-agent extra of prefect-egi)

Or use the sources saved in a CheckinCredentials block: --block NAME.
"""

app = typer.Typer(
    name="egi-flows",
    help="Orchestrate remote work on the EGI e-infrastructure with Prefect.",
    no_args_is_help=True,
    add_completion=False,
)
token_app = typer.Typer(help=TOKEN_HELP, no_args_is_help=True)
app.add_typer(token_app, name="token")

EXIT_VALID, EXIT_NO_TOKEN, EXIT_MALFORMED = 0, 1, 2

TokenOption = Annotated[Optional[str], typer.Option("--token", "-t", help="An access token, or - to read it from stdin.")]
TokenFileOption = Annotated[Optional[list[str]], typer.Option("--token-file", help="Token file(s) to read instead of the EGI Notebooks mounts.")]
IssuerOption = Annotated[str, typer.Option("--issuer", envvar="OIDC_ISSUER", help="Check-in issuer URL.")]
ClientIdOption = Annotated[Optional[str], typer.Option("--client-id", envvar="OIDC_CLIENT_ID", help="OAuth client id (for refreshing).")]
BlockOption = Annotated[Optional[str], typer.Option("--block", help="Use a saved CheckinCredentials block by name.")]
MytokenOption = Annotated[Optional[str], typer.Option("--mytoken", help="A mytoken, or - to read it from stdin.")]
MytokenServerOption = Annotated[Optional[str], typer.Option(
    "--mytoken-server", envvar="MYTOKEN_SERVER", help="The mytoken server (default: the one the mytoken names).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _credentials(token: str | None, token_file: list[str] | None, issuer: str, client_id: str | None, block: str | None,
                 mytoken: str | None = None, mytoken_server: str | None = None):
    """Build the CheckinCredentials the command uses (margin 0: we check, not refresh early)."""
    import os

    from prefect_egi.tasks import CheckinCredentials

    if block:
        credentials = CheckinCredentials.load(block)
        credentials.margin_seconds = 0
        return credentials
    if token == "-" and mytoken == "-":
        typer.echo("Only one of --token and --mytoken can be read from stdin.", err=True)
        raise typer.Exit(EXIT_MALFORMED)
    if token == "-":
        token = sys.stdin.read()
    if mytoken == "-":
        mytoken = sys.stdin.read()
    secret = os.environ.get("OIDC_CLIENT_SECRET")
    refresh = os.environ.get("OIDC_REFRESH_TOKEN")
    kwargs = {"token_files": token_file} if token_file else {}
    return CheckinCredentials(
        issuer=issuer,
        access_token=SecretStr(token) if token is not None else None,
        client_id=client_id,
        client_secret=SecretStr(secret) if secret else None,
        refresh_token=SecretStr(refresh) if refresh else None,
        mytoken=SecretStr(mytoken) if mytoken is not None else None,
        mytoken_server=mytoken_server,
        margin_seconds=0,
        **kwargs,
    )


def _resolve(credentials):
    """The token, or an exit with the documented code and a readable reason."""
    from prefect_egi.tasks import CheckinError, MalformedTokenError, NoTokenError, TokenExpiredError

    try:
        return credentials.get_token()
    except MalformedTokenError as exc:
        typer.echo(f"Malformed token: {exc}", err=True)
        raise typer.Exit(EXIT_MALFORMED) from None
    except TokenExpiredError as exc:
        typer.echo(f"Expired: {exc}", err=True)
        raise typer.Exit(EXIT_NO_TOKEN) from None
    except (NoTokenError, CheckinError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_NO_TOKEN) from None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "unknown"


@token_app.command("check")
def token_check(
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    issuer: IssuerOption = "https://aai.egi.eu/auth/realms/egi",
    client_id: ClientIdOption = None,
    block: BlockOption = None,
    mytoken: MytokenOption = None,
    mytoken_server: MytokenServerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show who the token belongs to and how long it stays valid.

    Exit codes: 0 valid, 1 expired or no token found, 2 malformed token.

    Example:  egi-flows token check --token -   (then paste, Enter, Ctrl-D)
    """
    from prefect_egi.tasks.checkin.identity import identify

    credentials = _credentials(token, token_file, issuer, client_id, block, mytoken, mytoken_server)
    me = identify(_resolve(credentials), ask_issuer=False)
    left = me.seconds_left()
    if as_json:
        report = {
            "source": me.source,
            "subject": me.subject,
            "issuer": me.issuer,
            "username": me.username,
            "expires_at": me.expires_at.isoformat() if me.expires_at else None,
            "expires_in_seconds": int(left) if left is not None else None,
            "vos": list(me.vos),
            "jwt": me.is_jwt,
        }
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"Source:   {me.source}")
    if not me.is_jwt:
        typer.echo("Opaque token: not a JWT, its expiry and owner cannot be read locally.")
        return
    typer.echo(f"Subject:  {me.subject}")
    typer.echo(f"Issuer:   {me.issuer}")
    if me.username:
        typer.echo(f"Username: {me.username}")
    typer.echo(f"VOs:      {', '.join(me.vos) or '(none in the token; try `egi-flows token vos`)'}")
    if left is None:
        typer.echo("Token has no expiry claim.")
    else:
        typer.echo(f"Token is valid until {_when(me.expires_at)} (expires in {int(left)} s)")


@token_app.command("vos")
def token_vos(
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    issuer: IssuerOption = "https://aai.egi.eu/auth/realms/egi",
    client_id: ClientIdOption = None,
    block: BlockOption = None,
    mytoken: MytokenOption = None,
    mytoken_server: MytokenServerOption = None,
) -> None:
    """List the VOs you are a member of, one per line.

    Asks the issuer's userinfo endpoint (the authoritative list) when the token
    was issued by --issuer; otherwise reads the token's own entitlements.
    """
    from prefect_egi.tasks.checkin.identity import identify

    credentials = _credentials(token, token_file, issuer, client_id, block, mytoken, mytoken_server)
    identity = identify(_resolve(credentials), credentials.provider.oidc)
    if identity.note:
        typer.echo(identity.note, err=True)
    for vo in identity.vos:
        typer.echo(vo)
    if not identity.vos:
        typer.echo("No VO membership found.", err=True)


DIRAC_HELP = """Work with DIRAC through DiracX.

`login` gets DiracX credentials with the OAuth device flow (what `dirac login`
does): it prints a link, you approve it at your identity provider (EGI
Check-in), and the credentials file is written (mode 0600) where the DiracX
block — or `dirac` itself — reads it.
"""
dirac_app = typer.Typer(help=DIRAC_HELP, no_args_is_help=True)
app.add_typer(dirac_app, name="dirac")


@dirac_app.command("login")
def dirac_login_command(
    block: Annotated[Optional[str], typer.Option("--block", help="A saved DiracX block: its server, VO, group and credentials file.")] = None,
    url: Annotated[Optional[str], typer.Option("--url", envvar="DIRACX_URL", help="DiracX server URL (without --block).")] = None,
    vo: Annotated[Optional[str], typer.Option("--vo", help="Virtual organisation (without --block).")] = None,
    group: Annotated[Optional[str], typer.Option("--group", help="DIRAC group (default: the VO's default group).")] = None,
    credentials_path: Annotated[Optional[str], typer.Option("--credentials-path", help="Where to write the credentials (default: DiracX's own, ~/.cache/diracx/credentials.json).")] = None,
    deadline: Annotated[float, typer.Option("--deadline", help="Seconds to wait for your approval.")] = 600.0,
) -> None:
    """Log in to DiracX: open the printed link, approve, and the credentials are saved.

    Example: egi-flows dirac login --url https://diracx.example.org --vo biomed
    """
    import asyncio

    from prefect_egi.tasks import DiracLoginFailed, DiracX
    from prefect_egi.tasks.dirac.login import device_login

    if block:
        target = DiracX.load(block)
    elif url and vo:
        target = DiracX(url=url, vo=vo, group=group, credentials_path=credentials_path)
    else:
        typer.echo("Give --block NAME, or --url and --vo.", err=True)
        raise typer.Exit(2)

    def show(code) -> None:
        typer.echo(f"Open {code.verification_uri_complete}")
        typer.echo(f"and approve the login (user code {code.user_code}) within {code.expires_in} s.")

    try:
        path = asyncio.run(device_login(target.client(), deadline_seconds=deadline, on_code=show))
    except (DiracLoginFailed, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Logged in to {target.url} as a member of {target.vo}; credentials saved to {path}")


from prefect_egi.flows.cli_journey import register  # noqa: E402 - after the app it extends

register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
