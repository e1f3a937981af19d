"""Results and verdicts to the plant's systems: the store's outbox published to MQTT and a webhook."""

from ..errors import InspectorError


class IntegrationError(InspectorError):
    """A sink that cannot work as configured: a secret file missing, a password the broker refuses."""


SECRET_LIMIT = 64 * 1024


def read_secret(path: str, what: str) -> bytes:
    """A secret file's content without a UTF-8 BOM and its trailing line end; IntegrationError naming the
    key for a file that cannot be read, is empty or is too large to be a secret."""
    try:
        with open(path, "rb") as f:
            secret = f.read(SECRET_LIMIT + 1)
    except OSError as e:
        raise IntegrationError(f"{what}: {path} cannot be read ({e.strerror})") from e
    if len(secret) > SECRET_LIMIT:
        raise IntegrationError(f"{what}: {path} is over {SECRET_LIMIT} bytes; is it the right file?")
    secret = secret.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
    if not secret:
        raise IntegrationError(f"{what}: {path} is empty")
    return secret
