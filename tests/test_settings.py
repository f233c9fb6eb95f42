"""Settings: every problem is named at start-up; nothing falls back silently."""

import pytest

from shared.platform.env import parse_size
from shared.platform.settings import (
    GIB,
    MIB,
    Settings,
    SettingsError,
    required_variables,
)

STORAGE_ENV = {"DROPGATE_S3_ACCESS_KEY": "key", "DROPGATE_S3_SECRET_KEY": "secret"}
AUTH_ENV = {"DROPGATE_OIDC_ISSUER": "https://id.example/realms/x", "DROPGATE_OIDC_AUDIENCE": "dropgate",
            "DROPGATE_OIDC_JWKS_URL": "https://id.example/realms/x/certs"}


def problems(sections, environ):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(sections, environ)
    return raised.value.problems


def test_every_missing_variable_is_named_at_once():
    found = problems(["storage", "database", "auth"], {})
    assert found == [
        "DROPGATE_S3_ACCESS_KEY is required but not set",
        "DROPGATE_S3_SECRET_KEY is required but not set",
        "DATABASE_URL is required but not set",
        "DROPGATE_OIDC_ISSUER is required but not set",
        "DROPGATE_OIDC_AUDIENCE is required but not set",
        "DROPGATE_OIDC_JWKS_URL is required but not set",
    ]


def test_error_message_lists_the_variables():
    with pytest.raises(SettingsError, match="DATABASE_URL is required"):
        Settings.from_env(["database"], {})


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("DROPGATE_S3_ENDPOINT", "localhost:8333", "expected an http(s) URL"),
    ("DROPGATE_MAX_UPLOAD_SIZE", "lots", "expected a byte size"),
    ("DROPGATE_PART_SIZE", "1MiB", f"must be at least {5 * MIB}"),
    ("DROPGATE_RETENTION_DAYS", "31", "must be at most 30"),
    ("DROPGATE_RETENTION_DAYS", "thirty", "invalid literal"),
    ("DROPGATE_CLAMD_ADDRESS", "clamd", "expected host:port"),
    ("DROPGATE_CLAMD_ADDRESS", "clamd:99999", "expected host:port"),
    ("DROPGATE_JWT_ALGORITHMS", "RS256,HS256", "HS256 not allowed"),
    ("DROPGATE_JWT_ALGORITHMS", "none", "none not allowed"),
    ("DROPGATE_STORAGE_ACCEPT_MISSING", "signature,everything", "everything is not a capability"),
    ("DROPGATE_STORAGE_EXPECT", "object-lock,signature", "signature is not configurable"),
    ("DROPGATE_S3_ADDRESSING_STYLE", "host", "expected path or virtual"),
    ("DROPGATE_S3_CHECKSUMS", "always", "expected when_required or when_supported"),
    ("DROPGATE_S3_PART_CHECKSUMS", "sometimes", "expected optional or required"),
])
def test_malformed_values_name_the_variable_and_the_reason(name, value, reason):
    environ = {**STORAGE_ENV, **AUTH_ENV, "DATABASE_URL": "postgresql://x/y", name: value}
    found = problems(["storage", "database", "clamd", "auth", "limits"], environ)
    assert len(found) == 1
    assert found[0].startswith(f"{name}={value!r}") or found[0].startswith(f"{name}:")
    assert reason in found[0]


def test_defaults_are_the_documented_ones():
    settings = Settings.from_env(["storage", "limits", "clamd", "auth"], {**STORAGE_ENV, **AUTH_ENV})
    assert settings.storage.uploads_bucket == "dropgate-uploads"
    assert settings.storage.endpoint_url is None  # AWS S3
    assert (settings.storage.addressing_style, settings.storage.checksum_mode) == ("path", "when_required")
    assert settings.storage.accept_missing == frozenset()  # every guarantee the probe checks is required
    assert settings.limits.max_upload_size == GIB
    assert settings.limits.default_part_size == 8 * MIB
    assert settings.limits.retention_days == 30
    assert (settings.clamd.host, settings.clamd.port) == ("127.0.0.1", 3310)
    assert settings.auth.roles_claim == "realm_access.roles"
    assert settings.auth.algorithms == ("RS256", "ES256")


def test_public_endpoint_defaults_to_the_endpoint():
    settings = Settings.from_env(["storage"], {**STORAGE_ENV, "DROPGATE_S3_ENDPOINT": "http://minio:9000/"})
    assert settings.storage.endpoint_url == "http://minio:9000"
    assert settings.storage.public_endpoint_url == "http://minio:9000"


def test_a_section_not_loaded_is_an_error_not_a_default():
    settings = Settings.from_env(["storage"], STORAGE_ENV)
    with pytest.raises(SettingsError, match="'clamd' was not loaded"):
        _ = settings.clamd


def test_unknown_section_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown settings section 'store'"):
        Settings.from_env(["store"], {})


@pytest.mark.parametrize(("raw", "expected"), [
    ("1048576", 1048576), ("8MiB", 8 * MIB), ("1 GiB", GIB), ("10MB", 10_000_000), ("5kib", 5120)])
def test_parse_size(raw, expected):
    assert parse_size(raw) == expected


def test_required_variables_lists_what_a_function_cannot_start_without():
    assert required_variables(["database", "clamd"]) == ["DATABASE_URL"]
    assert "DROPGATE_OIDC_JWKS_URL" in required_variables(["auth"])


def test_content_section_defaults_allow_everything_and_deny_programs_and_active_markup():
    content = Settings.from_env(["content"], {}).content
    assert content.allowed_content_types == ("*",)
    assert content.denied_content == {"executable", "script", "active-markup", "java"}
    blank = Settings.from_env(["content"], {"DROPGATE_ALLOWED_CONTENT_TYPES": "", "DROPGATE_DENIED_CONTENT": " "})
    assert blank.content == content  # an empty ConfigMap value means the default


def test_content_section_reads_patterns_and_kinds():
    content = Settings.from_env(["content"], {"DROPGATE_ALLOWED_CONTENT_TYPES": "image/*, Application/PDF",
                                              "DROPGATE_DENIED_CONTENT": "Executable,java"}).content
    assert content.allowed_content_types == ("image/*", "application/pdf")
    assert content.denied_content == {"executable", "java"}
    assert Settings.from_env(["content"], {"DROPGATE_DENIED_CONTENT": "none"}).content.denied_content == frozenset()


@pytest.mark.parametrize(("name", "value", "words"), [
    ("DROPGATE_ALLOWED_CONTENT_TYPES", "image", "image: expected comma-separated patterns"),
    ("DROPGATE_ALLOWED_CONTENT_TYPES", "image/*,*/*", "*/*: expected"),
    ("DROPGATE_ALLOWED_CONTENT_TYPES", "image/png;q=1", "image/png;q=1: expected"),
    ("DROPGATE_ALLOWED_CONTENT_TYPES", ",", "empty: expected"),
    ("DROPGATE_DENIED_CONTENT", "executable,macros", "macros: expected some of executable, script, active-markup, "
                                                     "java, or none"),
    ("DROPGATE_DENIED_CONTENT", "none,script", "none: expected some of"),
])
def test_content_section_problems_name_the_variable(name, value, words):
    found = problems(["content"], {name: value})
    assert len(found) == 1 and found[0].startswith(f"{name}: ") and words in found[0], found


def test_limits_no_longer_carry_content_types():
    limits = Settings.from_env(["limits"], {"DROPGATE_ALLOWED_CONTENT_TYPES": "image/*"}).limits
    assert not hasattr(limits, "allowed_content_types")
