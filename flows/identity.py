"""`egi-identity`: who am I on EGI, which VOs, how long is my token valid?

The smallest useful deployment: it proves that a worker can obtain a Check-in
token from a saved block, and shows the identity (never the token) in the UI.

    from prefect_egi.flows import egi_identity
    egi_identity("egi-checkin")
"""


import asyncio

from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import CheckinCredentials, Identity, egi_task
from prefect_egi.tasks.reporting import publish_sync


class IdentityReport(BaseModel):
    """The identity behind a CheckinCredentials block (no secret in it)."""

    subject: str | None
    issuer: str | None
    username: str | None
    vos: list[str] = Field(default_factory=list)
    vos_from: str
    token_source: str
    expires_at: str | None
    expires_in_seconds: int | None

    @classmethod
    def of(cls, identity: Identity) -> "IdentityReport":
        left = identity.seconds_left()
        return cls(
            subject=identity.subject,
            issuer=identity.issuer,
            username=identity.username,
            vos=list(identity.vos),
            vos_from=identity.vos_from,
            token_source=identity.source,
            expires_at=identity.expires_at.isoformat(timespec="seconds") if identity.expires_at else None,
            expires_in_seconds=int(left) if left is not None else None,
        )

    def markdown(self) -> str:
        vos = ", ".join(f"`{vo}`" for vo in self.vos) or "none"
        expiry = f"{self.expires_at} (in {self.expires_in_seconds} s)" if self.expires_at else "unknown (opaque token)"
        return "\n".join([
            "# EGI Check-in identity",
            "",
            "| | |",
            "|---|---|",
            f"| Subject | `{self.subject}` |",
            f"| Username | {self.username or '—'} |",
            f"| Issuer | {self.issuer} |",
            f"| VOs ({self.vos_from}) | {vos} |",
            f"| Token from | {self.token_source} |",
            f"| Valid until | {expiry} |",
        ])


@egi_task(name="describe-checkin-identity", retries=2, retry_delay_seconds=5)
async def describe_identity(credentials: CheckinCredentials) -> IdentityReport:
    """Whose token the credentials give, and how long it stays valid (the issuer's userinfo
    is asked for the VOs; the token itself never leaves the task)."""
    return IdentityReport.of(await asyncio.to_thread(credentials.identity))


@egi_flow(name="egi-identity", description="Show the EGI Check-in identity of a credentials block.")
def egi_identity(credentials_block: str = "egi-checkin") -> IdentityReport:
    """Load the `CheckinCredentials` block named `credentials_block`, resolve its token
    and publish who it belongs to as a markdown artifact."""
    credentials = load_block(CheckinCredentials, credentials_block, "credentials_block")
    report = describe_identity(credentials)
    publish_sync("identity", create_markdown_artifact, report.markdown(), key="egi-identity",
                 description="EGI Check-in identity")
    return report
