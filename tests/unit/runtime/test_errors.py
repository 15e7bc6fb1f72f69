from localcache.runtime import errors


def _status(code: int, reason: str, message: str = "m", **details: object) -> dict[str, object]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "details": details,
    }


def test_reason_selects_class() -> None:
    assert isinstance(errors.from_status(404, _status(404, "NotFound")), errors.NotFound)
    assert type(errors.from_status(409, _status(409, "AlreadyExists"))) is errors.AlreadyExists
    assert type(errors.from_status(409, _status(409, "Conflict"))) is errors.Conflict
    assert isinstance(errors.from_status(410, _status(410, "Expired")), errors.Gone)
    assert isinstance(errors.from_status(410, _status(410, "Gone")), errors.Gone)
    assert isinstance(errors.from_status(403, _status(403, "Forbidden")), errors.Forbidden)
    assert isinstance(errors.from_status(401, _status(401, "Unauthorized")), errors.Unauthorized)
    assert isinstance(errors.from_status(503, _status(503, "ServiceUnavailable")), errors.ServerError)


def test_code_used_when_reason_unknown_or_missing() -> None:
    assert isinstance(errors.from_status(410, {}), errors.Gone)
    assert isinstance(errors.from_status(502, None), errors.ServerError)
    assert isinstance(errors.from_status(504, {"code": 504}), errors.Timeout)
    err = errors.from_status(418, {})
    assert type(err) is errors.ApiError and err.status == 418


def test_invalid_carries_field_causes() -> None:
    body = _status(
        422,
        "Invalid",
        'ConfigMap "x" is invalid',
        causes=[{"field": "metadata.name", "reason": "FieldValueInvalid", "message": "bad"}],
    )
    err = errors.from_status(422, body)
    assert isinstance(err, errors.Invalid)
    assert err.causes == [errors.Cause("metadata.name", "FieldValueInvalid", "bad")]
    assert err.message == 'ConfigMap "x" is invalid' and err.reason == "Invalid"


def test_too_many_requests_retry_after_from_header_or_details() -> None:
    err = errors.from_response(429, b'{"code":429,"reason":"TooManyRequests"}', {"Retry-After": "3"})
    assert isinstance(err, errors.TooManyRequests) and err.retry_after == 3.0
    err2 = errors.from_status(429, _status(429, "TooManyRequests", retryAfterSeconds=7))
    assert isinstance(err2, errors.TooManyRequests) and err2.retry_after == 7.0


def test_non_json_body_becomes_message() -> None:
    err = errors.from_response(500, b"<html>boom</html>")
    assert isinstance(err, errors.ServerError) and "boom" in err.message


def test_too_large_resource_version_detection() -> None:
    err = errors.from_status(
        504,
        _status(504, "Timeout", "Too large resource version", causes=[{"reason": "ResourceVersionTooLarge"}]),
    )
    assert errors.is_resource_version_too_large(err)
    assert not errors.is_resource_version_too_large(errors.from_status(504, _status(504, "Timeout")))
