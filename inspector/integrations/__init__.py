"""Results and verdicts to the plant's systems: the store's outbox published to MQTT and a webhook."""

from ..errors import InspectorError


class IntegrationError(InspectorError):
    """A sink that cannot work as configured: a secret file missing, a password the broker refuses."""


def read_secret(path: str, what: str) -> bytes:
    """A secret file's content without its trailing line end; IntegrationError naming the key."""
    try:
        with open(path, "rb") as f:
            secret = f.read(4096).rstrip(b"\r\n")
    except OSError as e:
        raise IntegrationError(f"{what}: {path} cannot be read ({e.strerror})") from e
    if not secret:
        raise IntegrationError(f"{what}: {path} is empty")
    return secret
