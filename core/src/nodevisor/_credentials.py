"""The host's identity: the id and token that provisioning returned."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ._errors import CredentialsError

__all__ = ["Credentials"]

FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    host_id: str
    token: str
    api_url: str

    def save(self, data_dir: Path) -> Path:
        """Write the file with mode 0600, replacing any earlier one whole."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / FILE_NAME
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, data_dir: Path) -> Credentials:
        path = data_dir / FILE_NAME
        try:
            data = json.loads(path.read_text())
            return cls(
                host_id=data["host_id"], token=data["token"], api_url=data["api_url"]
            )
        except FileNotFoundError:
            raise CredentialsError(
                f"this host is not provisioned: {str(path)!r} does not exist; "
                "run 'nodevisor agent provision --otp <OTP>' first"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(
                f"credentials file {str(path)!r} is unreadable ({exc!r}); "
                "provision the host again"
            ) from exc

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)
