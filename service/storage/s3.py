"""An S3-compatible bucket: objects `{prefix}/{task id}.mp4`, through boto3.

Endpoint, region and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, instance roles:
boto3's own chain). A download is written to a local partial file first, then uploaded: one PUT,
or a multipart upload that S3 makes visible only when complete, so a reader never sees half an
object and a re-run overwrites it whole. Readers get a presigned GET URL, signed locally.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from service.storage.base import PartialFiles, StorageWriteError

# Partial files live on local disk, outside any bucket; one folder per machine is enough.
PARTIAL_DIR = Path(tempfile.gettempdir()) / "kling-relay-partial"
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    def __init__(self, *, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = client or boto3.client("s3")
        self._partials = PartialFiles(PARTIAL_DIR)
        self._origin: str | None = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def partial(self) -> Path:
        return self._partials.new()

    def keep(self, partial: Path, name: str, content_type: str) -> None:
        try:
            self._client.upload_file(str(partial), self.bucket, self._key(name), ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageWriteError(f"could not upload {name}: {exc}") from exc

    def locate(self, name: str, *, expires_s: int) -> Path | str | None:
        key = self._key(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in NOT_FOUND:
                return None
            raise
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    def media_origin(self) -> str | None:
        if self._origin is None:
            # Where presigned URLs point (path or virtual-hosted style, any endpoint): signing is
            # local, so one made for a name that need not exist tells it.
            url = urlsplit(
                self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": self._key("origin")}, ExpiresIn=1
                )
            )
            self._origin = f"{url.scheme}://{url.netloc}"
        return self._origin

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as exc:
            raise StorageWriteError(f"could not delete {name}: {exc}") from exc

    def clean_partials(self, *, older_than_s: float, now_s: float) -> int:
        return self._partials.clean(older_than_s=older_than_s, now_s=now_s)
