"""URI parsing, environment/STORAGE_CONFIG mapping, error lines and exit codes."""

from __future__ import annotations

import json

import pytest

from localcache.storage import DownloadError, FailureReason, Settings, parse_error_line, parse_uri
from localcache.storage.errors import format_error_line


@pytest.mark.parametrize(
    ("uri", "scheme", "location", "path", "revision"),
    [
        (
            "hf://sentence-transformers/all-MiniLM-L6-v2",
            "hf",
            "sentence-transformers/all-MiniLM-L6-v2",
            "",
            None,
        ),
        ("hf://meta-llama/Llama-3.1-8B:abc123", "hf", "meta-llama/Llama-3.1-8B", "", "abc123"),
        ("s3://models/llama/8b", "s3", "models", "llama/8b", None),
        ("s3://models", "s3", "models", "", None),
        ("gs://bucket/prefix/", "gs", "bucket", "prefix/", None),
        ("https://example.com/m/model.bin", "https", "https://example.com/m/model.bin", "", None),
        ("/srv/models/x", "file", "/srv/models/x", "", None),
        ("file:///srv/models/x", "file", "/srv/models/x", "", None),
    ],
)
def test_parse_uri_accepts_kserve_schemes(
    uri: str, scheme: str, location: str, path: str, revision: str | None
) -> None:
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.location, parsed.path, parsed.revision) == (
        scheme,
        location,
        path,
        revision,
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("hf://just-a-name", FailureReason.INVALID_REQUEST),
        ("hf://a/b:", FailureReason.INVALID_REQUEST),
        ("hf://../etc", FailureReason.INVALID_REQUEST),
        ("s3://bucket/../x", FailureReason.INVALID_REQUEST),
        ("s3://", FailureReason.INVALID_REQUEST),
        ("oci://registry/model", FailureReason.UNSUPPORTED),
        (" hf://a/b", FailureReason.INVALID_REQUEST),
    ],
)
def test_parse_uri_rejects_with_reason(uri: str, reason: FailureReason) -> None:
    with pytest.raises(DownloadError) as info:
        parse_uri(uri)
    assert info.value.reason is reason
    assert "storage URI" in str(info.value)


def test_plain_env_variables_use_kserve_names() -> None:
    s = Settings.from_env(
        {
            "HF_TOKEN": "hf_x",
            "HF_ENDPOINT": "http://hub:1",
            "AWS_ACCESS_KEY_ID": "AK",
            "AWS_SECRET_ACCESS_KEY": "SK",
            "S3_ENDPOINT": "minio:9000",
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (s.hf_token, s.hf_endpoint) == ("hf_x", "http://hub:1")
    assert s.s3.endpoint_url == "http://minio:9000"
    assert (s.s3.access_key_id, s.s3.secret_access_key, s.s3.region) == ("AK", "SK", "eu-west-1")
    assert s.s3.verify is False


def test_s3_endpoint_defaults_to_https_and_aws_endpoint_url_wins() -> None:
    assert Settings.from_env({"S3_ENDPOINT": "s3.local"}).s3.endpoint_url == "https://s3.local"
    s = Settings.from_env({"S3_ENDPOINT": "s3.local", "AWS_ENDPOINT_URL": "http://other:1"})
    assert s.s3.endpoint_url == "http://other:1"


def test_guide_hf_storage_config_sets_the_token() -> None:
    s = Settings.from_env({"STORAGE_CONFIG": json.dumps({"type": "hf", "token": "hf_secret"})})
    assert s.hf_token == "hf_secret"
    assert s.storage_type == "hf"
    assert "hf_secret" not in repr(s.redacted())


def test_s3_storage_config_and_override_merge_like_kserve() -> None:
    config = {"type": "s3", "access_key_id": "A", "secret_access_key": "S", "endpoint_url": "http://x:1"}
    override = {"endpoint_url": "http://y:2", "region": "ap-south-1"}
    s = Settings.from_env(
        {"STORAGE_CONFIG": json.dumps(config), "STORAGE_OVERRIDE_CONFIG": json.dumps(override)}
    )
    assert (s.s3.access_key_id, s.s3.secret_access_key) == ("A", "S")
    assert s.s3.endpoint_url == "http://y:2"
    assert s.s3.region == "ap-south-1"


def test_https_storage_config_adds_headers() -> None:
    s = Settings.from_env({"STORAGE_CONFIG": json.dumps({"type": "https", "headers": {"X-Api-Key": "k"}})})
    assert s.http_headers == {"X-Api-Key": "k"}


def test_bad_storage_config_names_the_variable_and_hides_the_value() -> None:
    with pytest.raises(DownloadError) as info:
        Settings.from_env({"STORAGE_CONFIG": '{"type": "hf", "token": "hf_leak'})
    assert info.value.reason is FailureReason.INVALID_REQUEST
    assert "STORAGE_CONFIG" in str(info.value) and "hf_leak" not in str(info.value)
    with pytest.raises(DownloadError, match="field 'type'"):
        Settings.from_env({"STORAGE_CONFIG": '{"type": "ftp"}'})


def test_tunables_are_validated() -> None:
    assert Settings.from_env({"LOCALCACHE_CONNECTIONS": "3"}).connections == 3
    with pytest.raises(DownloadError, match="LOCALCACHE_CONNECTIONS"):
        Settings.from_env({"LOCALCACHE_CONNECTIONS": "zero"})


def test_exit_codes_are_distinct_and_round_trip() -> None:
    codes = [r.exit_code for r in FailureReason]
    assert len(codes) == len(set(codes)) and 0 not in codes
    for reason in FailureReason:
        assert FailureReason.from_exit_code(reason.exit_code) is reason
    assert FailureReason.from_exit_code(0) is None
    assert FailureReason.from_exit_code(99) is FailureReason.UNKNOWN


def test_error_line_round_trips_through_a_log() -> None:
    line = format_error_line(DownloadError(FailureReason.DISK_FULL, "destination /mnt/models: no\nspace"))
    log = f"2026-01-01 INFO progress bytes=1\n{line}\n"
    parsed = parse_error_line(log)
    assert parsed is not None
    assert parsed.reason is FailureReason.DISK_FULL
    assert parsed.message == "destination /mnt/models: no space"
    assert parse_error_line("nothing to see") is None
