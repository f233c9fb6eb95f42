"""The local stack as `dropgate-dev up` runs it: every function a real process, health answered."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import jwt
import pytest

from dropgate_local.stack import FUNCTIONS, SOURCE_DIR

EXPECTED_CHECKS = {
    "presign": {"database", "storage"},
    "storage_events": set(),
    "scan": {"database", "storage", "clamd"},
    "metadata": {"storage", "database"},
    "expire": {"database", "storage"},
    "reconcile": {"database", "storage"},
    "webhooks": {"database"},  # its receivers are checked per delivery (SSRF), not at readiness
}


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_answers_health_with_its_real_dependencies(running_functions, name):
    status, body = get_json(f"{running_functions[name]}/healthz")
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == EXPECTED_CHECKS[name]
    assert all(value == "ok" for value in body["checks"].values())


def test_unknown_paths_get_json_404(running_functions):
    status, body = get_json(f"{running_functions['presign']}/no/such/path")
    assert status == 404
    assert body["error"] == "not_found"


def test_a_function_with_missing_settings_refuses_to_start_and_names_them():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPGATE_") and k != "DATABASE_URL"}
    result = subprocess.run(
        # As the image runs it: functions-framework loads main.py with its folder on sys.path.
        [sys.executable, "-m", "functions_framework", "--source", "functions/presign/main.py", "--target", "handle",
         "--port", "0"],
        cwd=SOURCE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DATABASE_URL is required but not set" in result.stderr
    assert "DROPGATE_OIDC_JWKS_URL is required but not set" in result.stderr


def test_scan_health_turns_unavailable_when_clamd_is_unreachable(stack, running_functions, tmp_path):
    """/healthz is a real check: point a scan instance at a closed port and it says so."""
    from dropgate_local.processes import ChildProcess, free_port

    port = free_port()
    env = {**os.environ, **stack.function_env(), **stack.identity_env("scan"),
           "DROPGATE_CLAMD_ADDRESS": f"127.0.0.1:{free_port()}"}
    child = ChildProcess("scan-no-clamd", [sys.executable, "-m", "functions_framework", "--source",
                                           str(SOURCE_DIR / "functions/scan/main.py"), "--target", "handle",
                                           "--host", "127.0.0.1", "--port", str(port)],
                         tmp_path / "scan.log", env=env).start()
    try:
        from dropgate_local.stack import _answers_http
        child.wait_until(lambda: _answers_http(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        status, body = get_json(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert body["checks"]["clamd"].startswith("unavailable")
        assert body["checks"]["database"] == "ok"
    finally:
        child.stop()


def test_dev_token_verifies_against_the_served_jwks(stack, running_functions):
    from dropgate_local.cli import main as cli_main

    env = stack.function_env()
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["--data-dir", str(stack.data_dir), "token", "--sub", "alice", "--roles",
                         "uploader,admin"]) == 0
    token = out.getvalue().strip()
    signing_key = jwt.PyJWKClient(env["DROPGATE_OIDC_JWKS_URL"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience=env["DROPGATE_OIDC_AUDIENCE"],
                        issuer=env["DROPGATE_OIDC_ISSUER"])
    assert claims["sub"] == "alice"
    assert claims["realm_access"]["roles"] == ["uploader", "admin"]


def test_the_broker_accepts_a_cloudevent(stack, running_functions):
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.router}/", data=b"{}", method="POST",
        headers={"ce-specversion": "1.0", "ce-id": "x", "ce-type": "t", "ce-source": "s",
                 "content-type": "application/json",
                 # as the operator account the broker's EventPolicy allows (dropgate-dev mints the same)
                 "Authorization": "Bearer " + stack.cluster_issuer.mint(
                     "system:serviceaccount:dropgate:dropgate-operator", "eventing.knative.dev/broker/dropgate/dropgate")})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
