"""A webhook sink: each message as a JSON POST, signed with HMAC-SHA256 of the body."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request

from ..config import WebhookConfig
from . import IntegrationError, read_secret
from .publisher import Sink


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not a delivery: following it would send a GET without the message."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-SISE-Signature`` header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink(Sink):
    def __init__(self, config: WebhookConfig):
        self.config = config
        self.name = f"webhook:{config.url}"
        self.secret = read_secret(config.secret_file, "integrations.webhook.secret_file") \
            if config.secret_file else None

    def send(self, kind: str, message: dict) -> None:
        body = json.dumps(message, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "X-SISE-Message-Id": str(message["message_id"]),
                   "X-SISE-Kind": kind, "User-Agent": "sise-inspector"}
        if self.secret is not None:
            headers["X-SISE-Signature"] = signature(self.secret, body)
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.config.timeout) as response:
                if not 200 <= response.status < 300:
                    raise IntegrationError(f"the webhook answered {response.status} {response.reason}")
                response.read(1 << 16)
        except urllib.error.HTTPError as e:
            where = f" (to {e.headers.get('Location')})" if 300 <= e.code < 400 else ""
            raise IntegrationError(f"the webhook answered {e.code} {e.reason}{where}; only a 2xx to the POST "
                                   "counts") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise IntegrationError(f"the webhook cannot be reached ({reason})") from e
