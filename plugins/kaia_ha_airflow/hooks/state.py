"""A small JSON document store with create-only writes: the home of the live placement.

``s3://bucket/prefix``: every worker and scheduler sees it, it survives any Airflow host, and S3's
conditional write (``If-None-Match: *``, S3 since 2024-08) makes "create this key unless it exists" atomic,
so two writers of the same generation cannot both win. ``file:///path``: the same on one machine
(``link()`` is atomic and refuses an existing name). The IAM actions (on the bucket and prefix) are on the methods.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from kaia_ha_airflow.iam import needs


class AlreadyExists(Exception):
    """A create-only write found the key taken: another writer got there first."""


class StateStore:
    def __init__(self, url: str, aws_conn_id: str = "aws_default", region: str = "us-east-1"):
        parts = urlsplit(url)
        self.url, self.scheme = url, parts.scheme
        if self.scheme == "s3":
            self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
            self._s3 = S3Hook(aws_conn_id=aws_conn_id, region_name=region).get_conn()
        elif self.scheme == "file":
            self.root = Path(parts.path)
        else:
            raise ValueError(f"state.url: {url!r} must start with s3:// or file://")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @needs("s3:GetObject")
    def get(self, name: str) -> dict | None:
        if self.scheme == "file":
            try:
                return json.loads((self.root / name).read_text())
            except FileNotFoundError:
                return None
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body)

    @needs("s3:ListBucket")
    def names(self, under: str) -> list[str]:
        """Names below ``under/``, sorted."""
        if self.scheme == "file":
            folder = self.root / under
            return sorted(f"{under}/{p.name}" for p in folder.iterdir()) if folder.is_dir() else []
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                       Prefix=self._key(under) + "/"):
            found += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(found)

    def put(self, name: str, doc: dict) -> None:
        """Write ``doc`` at ``name``, replacing what is there (small records one writer owns, e.g. a watch counter)."""
        self._write(name, doc, create_only=False)

    def create(self, name: str, doc: dict) -> None:
        """Write ``doc`` at ``name`` only if nothing is there yet; AlreadyExists otherwise."""
        self._write(name, doc, create_only=True)

    @needs("s3:PutObject")
    def _write(self, name: str, doc: dict, *, create_only: bool) -> None:
        body = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if self.scheme == "file":
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                if create_only:
                    os.link(tmp, path)  # atomic, and refuses an existing name: the file system's create-only write
                else:
                    os.replace(tmp, path)  # atomic: a reader sees the old record or the new one
            except FileExistsError:
                raise AlreadyExists(name) from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        condition = {"IfNoneMatch": "*"} if create_only else {}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=body.encode(),
                                ContentType="application/json", **condition)
        except botocore.exceptions.ClientError as exc:
            if create_only and exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise AlreadyExists(name) from None
            raise
