"""Stored videos in an S3-compatible bucket, against a real S3 server process (moto's server
mode on 127.0.0.1): kept under the prefix with its type, served by a redirect to a presigned URL
that works (the dashboard's task page allowed to play it), refused to another key, deleted by
retention."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest

from service.redis_server import RedisServer, free_port
from service.simulator.state import video_chunks
from tests.stack.conftest import API_KEY, Simulator, Stack, start_stack, wait_for
from tests.stack.receivers import events_of, run_task
from tests.stack.test_storage import stored_or_failed

BUCKET = "relay-videos"
PREFIX = "kept/videos"
OTHER_KEY = "test-key-2"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with open(tmp_path_factory.mktemp("moto") / "moto.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=0.5).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout_s=30, interval_s=0.1, what="moto_server to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


def s3_stack(redis_server: RedisServer, simulator: Simulator, base: Path, endpoint: str, **env: str) -> Stack:
    settings = {
        "KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "AWS_ENDPOINT_URL": endpoint,
        **AWS,
        **env,
    }
    return start_stack(redis_server, simulator, base, settings)


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str
) -> Iterator[Stack]:
    s3_client(s3_endpoint).create_bucket(Bucket=BUCKET)
    stack = s3_stack(redis_server, simulator, tmp_path_factory.mktemp("logs"), s3_endpoint)
    yield stack
    stack.stop()


def test_a_video_is_kept_in_the_bucket_and_served_by_a_presigned_redirect(
    stack: Stack, api: httpx.Client, sim: Simulator, s3_endpoint: str
) -> None:
    size = 300_000
    sim.configure(video_bytes=size)
    task = run_task(api)
    done = stored_or_failed(api, task["id"])
    body = b"".join(video_chunks(size))
    assert done["result"]["sha256"] == hashlib.sha256(body).hexdigest() and done["result"]["bytes"] == size
    assert [e["type"] for e in events_of(api, task["id"])].count("task.stored") == 1

    kept = s3_client(s3_endpoint).get_object(Bucket=BUCKET, Key=f"{PREFIX}/{task['id']}.mp4")
    assert kept["Body"].read() == body
    assert kept["ContentType"] == "video/mp4"

    redirect = api.get(f"/v1/tasks/{task['id']}/video")
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"{s3_endpoint}/") and "Signature" in location and "Expires" in location
    fetched = httpx.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content == body
    ranged = httpx.get(location, headers={"Range": "bytes=10-19"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == body[10:20]
    # The dashboard plays it from the bucket: its route redirects there, its page's CSP allows it.
    assert api.get(f"/dashboard/tasks/{task['id']}/video").headers["location"].startswith(f"{s3_endpoint}/")
    page = api.get(f"/dashboard/tasks/{task['id']}")
    assert f"media-src 'self' {s3_endpoint};" in page.headers["content-security-policy"]

    with stack.client(OTHER_KEY) as other:
        refused = other.get(f"/v1/tasks/{task['id']}/video")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"


def test_retention_deletes_the_object(
    redis_server: RedisServer, simulator: Simulator, sim: Simulator, s3_endpoint: str, tmp_path: Path
) -> None:
    stack = s3_stack(redis_server, simulator, tmp_path, s3_endpoint, STORAGE_RETENTION_S="2")
    client = s3_client(s3_endpoint)
    try:
        with stack.client() as api:
            task = run_task(api)
            stored_or_failed(api, task["id"])
            key = f"{PREFIX}/{task['id']}.mp4"

            def deleted() -> bool:
                listed = client.list_objects_v2(Bucket=BUCKET, Prefix=key)
                return int(listed.get("KeyCount", 0)) == 0

            wait_for(deleted, what="the expired object to be deleted")
            gone = api.get(f"/v1/tasks/{task['id']}/video")
            assert gone.status_code == 410 and gone.json()["error"]["code"] == "video_expired"
    finally:
        stack.stop()
