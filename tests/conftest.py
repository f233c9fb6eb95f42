"""Session fixtures: the real servers, started once per test session on free loopback ports.

Nothing that can run on this machine is mocked: PostgreSQL is pgserver's real
server (or DATABASE_URL), S3 is SeaweedFS, clamd is Debian's. Each fixture
starts only its piece, so a pure-logic test run starts nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dropgate_local.stack import FUNCTIONS, LocalStack, StackPorts

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@pytest.fixture
def clean_environ() -> Iterator[None]:
    """Restore os.environ after a test that changes it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class _Session:
    stack: LocalStack | None = None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("dropgate-stack"), StackPorts.allocate())
    _Session.stack = local
    yield local
    local.stop()


def as_storage_adapter(stack: LocalStack | None = None) -> dict[str, str]:
    """The Authorization header storage_events posts to the broker with: its SinkBinding's token."""
    from dropgate_local.identity import broker_audience, sink_binding_subject

    issuer_stack = stack or _Session.stack
    assert issuer_stack is not None, "as_storage_adapter needs the session stack (or the test's own)"
    token = issuer_stack.cluster_issuer.mint(sink_binding_subject("dropgate", "dropgate-storage-events-sink"),
                                            broker_audience("dropgate", "dropgate"))
    return {"Authorization": f"Bearer {token}"}


def as_broker(function: str, stack: LocalStack | None = None) -> dict[str, str]:
    """The Authorization header of the broker's delivery to `function` (its Trigger's token, for its
    audience: Knative's authentication-oidc), minted by the issuer of the stack that runs it."""
    issuer_stack = stack or _Session.stack
    assert issuer_stack is not None, "as_broker needs the session stack (or the test's own)"
    return {"Authorization": f"Bearer {issuer_stack.event_token(function)}"}


@pytest.fixture(scope="session")
def database_url(stack: LocalStack) -> str:
    return stack.start_postgres()


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    """An empty database on the same server, for tests that need a schema of their own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_dbname(database_url, name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _with_dbname(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def clamd_address(stack: LocalStack) -> tuple[str, int]:
    # Tests always use the generated offline signatures: the same detections on every machine.
    stack.start_clamd(try_update=False)
    return "127.0.0.1", stack.ports.clamd


@pytest.fixture(scope="session")
def storage(stack: LocalStack):  # noqa: ANN201 - StorageSettings
    stack.start_storage()
    return stack.storage_settings()


# Buckets outside the filer webhook's path prefixes (local-dev/seaweed.py): tests that stage states
# by hand use them, so the event pipeline that other tests run never races them.
UNWATCHED_ENV = {"DROPGATE_UPLOADS_BUCKET": "unwatched-uploads", "DROPGATE_QUARANTINE_BUCKET": "unwatched-quarantine"}


@pytest.fixture(scope="session")
def unwatched(storage):  # noqa: ANN201 - StorageSettings
    from dataclasses import replace

    from shared.platform.storage import set_up_buckets

    settings = replace(storage, uploads_bucket=UNWATCHED_ENV["DROPGATE_UPLOADS_BUCKET"],
                       quarantine_bucket=UNWATCHED_ENV["DROPGATE_QUARANTINE_BUCKET"])
    set_up_buckets(settings)
    return settings


@pytest.fixture(scope="session")
def running_functions(stack: LocalStack, database_url: str, clamd_address, storage) -> dict[str, str]:
    """Every function as its own functions-framework process, as `dropgate-dev up` runs them."""
    stack.start_dev_oidc()
    stack.start_router()
    for name in FUNCTIONS:
        stack.start_function(name)
    stack.write_state()
    return {name: stack.ports.function_url(name) for name in FUNCTIONS}


@pytest.fixture(scope="session")
def testfiles_dir() -> Path:
    path = Path("/usr/share/clamav-testfiles")
    assert path.is_dir(), "Debian's clamav-testfiles is installed by local-dev/bootstrap.sh"
    return path
