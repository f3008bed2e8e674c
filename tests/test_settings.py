"""Settings: one clear line naming the variable at fault, production's requirements,
no secret in any error, and the order defaults < VOIP_CONFIG file < environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voip.settings import Settings, SettingsError, load_settings

ENV_NAMES = sorted(
    {str(name) for field in Settings.model_fields.values() for name in field.validation_alias.choices}  # type: ignore[union-attr]
    | {"VOIP_CONFIG"}
)
GOOD_SECRET = "production-secret-" + "s" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Nothing from the machine running the tests, and no .voip/dev-secret in the checkout.
    for name in list(os.environ):
        if name.upper() in {n.upper() for n in ENV_NAMES}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def failure(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and message
    return message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("VOIP_ENV", "staging"),
        ("VOIP_RING_TIMEOUT", "0"),
        ("VOIP_RING_TIMEOUT", "601"),
        ("VOIP_CALL_RETENTION", "59"),
        ("VOIP_MAX_DEVICES_PER_USER", "0"),
        ("VOIP_MAX_DEVICES_PER_USER", "1001"),
        ("VOIP_WS_MAX_FRAME_BYTES", "1023"),
        ("VOIP_WS_RATE", "0"),
        ("VOIP_WS_BURST", "0"),
        ("VOIP_REDIS_PREFIX", ""),
        ("VOIP_NODE_ID", "n" * 65),
        ("VOIP_LOG_LEVEL", "loud"),
        ("VOIP_OPS_FEED", "perhaps"),
        ("APNS_BUNDLE_ID", "nodots"),
        ("APNS_ENDPOINT", "host-without-port"),
        ("FCM_PROJECT_ID", "Has_Capitals"),
        ("FCM_ENDPOINT", "fcm.googleapis.com"),
        ("FCM_ENDPOINT", "https://fcm.googleapis.com/v1/projects"),
        ("SIP_ENABLED", "maybe"),
        ("SIP_PORT", "65536"),
        ("SIP_TRANSPORTS", '["SCTP"]'),
        ("SIP_RATE", "0"),
        ("SIP_MAX_EXPIRES", "10"),
    ],
)
def test_each_invalid_setting_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = failure(monkeypatch, **{name: value})
    assert message.startswith(f"{name} "), message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VOIP_CONFIG": "/nonexistent/voip.toml"}, "VOIP_CONFIG"),
        ({"APNS_KEY_FILE": "/nonexistent/key.p8"}, "APNS_KEY_FILE"),
        ({"APNS_CA_FILE": "/nonexistent/ca.pem"}, "APNS_CA_FILE"),
    ],
)
def test_missing_files_are_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    message = failure(monkeypatch, **env)
    assert message.startswith(named) and "/nonexistent/" in message


def test_apns_key_needs_key_id_and_team_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = tmp_path / "key.p8"
    key.write_text("not really a key")
    message = failure(monkeypatch, APNS_KEY_FILE=str(key), APNS_KEY_ID="KEY123")
    assert "APNS_TEAM_ID" in message


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "AuthKey.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n")
    env = {
        "VOIP_ENV": "production",
        "VOIP_JWT_SECRET": GOOD_SECRET,
        "REDIS_URL": "redis://redis.internal:6379/0",
        "APNS_KEY_FILE": str(key),
        "APNS_KEY_ID": "ABCDE12345",
        "APNS_TEAM_ID": "TEAM123456",
        "VOIP_PUBLIC_URL": "https://voip.example.com/",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_production_starts_with_everything_set(production: dict[str, str]) -> None:
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.jwt_secret == GOOD_SECRET
    assert settings.public_url == "https://voip.example.com"
    assert not Path(".voip").exists()  # no development secret was made


@pytest.mark.parametrize("missing", ["VOIP_JWT_SECRET", "REDIS_URL", "APNS_KEY_FILE", "VOIP_PUBLIC_URL"])
def test_production_refuses_to_start_without(
    monkeypatch: pytest.MonkeyPatch, production: dict[str, str], missing: str
) -> None:
    monkeypatch.delenv(missing)
    message = failure(monkeypatch)
    assert message.startswith(missing), message
    assert not Path(".voip").exists()


def test_production_secret_must_be_32_bytes(monkeypatch: pytest.MonkeyPatch, production: dict[str, str]) -> None:
    short = "p" * 31
    message = failure(monkeypatch, VOIP_JWT_SECRET=short)
    assert message.startswith("VOIP_JWT_SECRET") and "32" in message
    assert short not in message
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    monkeypatch.setenv("VOIP_JWT_SECRET", "é" * 16)
    assert load_settings().jwt_secret == "é" * 16


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VOIP_JWT_SECRET", "tiny-secret-9"),  # under 16 bytes in development
        ("SIP_ACCOUNTS", '{"alice": 12345678}'),  # wrong type: the password is not echoed
    ],
)
def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    message = failure(monkeypatch, **{name: value})
    assert name in message
    for fragment in ("tiny-secret-9", "12345678"):
        assert fragment not in message


def test_secret_of_the_wrong_type_in_a_file_is_not_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "voip.toml"
    config.write_text("jwt_secret = 98765432109876543210\nsip_trunk_password = 55555555555\n")
    message = failure(monkeypatch, VOIP_CONFIG=str(config))
    assert "VOIP_JWT_SECRET" in message or "SIP_TRUNK_PASSWORD" in message
    assert "98765432109876543210" not in message and "55555555555" not in message


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOIP_JWT_SECRET", "repr-secret-" + "r" * 20)
    monkeypatch.setenv("SIP_TRUNK_PASSWORD", "trunk-password-77")
    monkeypatch.setenv("SIP_ACCOUNTS", '{"alice": "account-password-88"}')
    settings = load_settings()
    assert settings.sip_accounts == {"alice": "account-password-88"}
    text = repr(settings) + str(settings)
    for secret in ("repr-secret-", "trunk-password-77", "account-password-88"):
        assert secret not in text


def test_file_overrides_defaults_and_environment_overrides_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "voip.toml"
    config.write_text('port = 9001\nring_timeout = 30\nredis_prefix = "file:"\n')
    monkeypatch.setenv("VOIP_CONFIG", str(config))
    monkeypatch.setenv("PORT", "9002")
    settings = load_settings()
    assert settings.port == 9002  # environment over file
    assert settings.ring_timeout == 30  # file over default (45)
    assert settings.redis_prefix == "file:"
    assert settings.ws_burst == 40  # default kept
    monkeypatch.delenv("PORT")
    assert load_settings().port == 9001


def test_unknown_key_in_the_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "voip.toml"
    config.write_text("ring_timout = 30\n")
    assert failure(monkeypatch, VOIP_CONFIG=str(config)) == "ring_timout: unknown setting"


def test_invalid_value_in_the_file_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "voip.toml"
    config.write_text('port = "eighty"\n')
    assert failure(monkeypatch, VOIP_CONFIG=str(config)).startswith("PORT (port):")


def test_development_makes_and_reuses_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = load_settings().jwt_secret
    assert len(first.encode()) >= 32
    assert load_settings().jwt_secret == first
    secret_file = tmp_path / ".voip" / "dev-secret"
    assert secret_file.read_text() == first and (secret_file.stat().st_mode & 0o777) == 0o600


def test_run_with_a_bad_port_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in ENV_NAMES}}
    env["PORT"] = "not-a-port"
    result = subprocess.run(
        [sys.executable, "-m", "voip", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PORT" in lines[0] and "not-a-port" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(("name", "value"), [("SIP_ACCOUNTS", '{"alice": "pw'), ("SIP_TRANSPORTS", "UDP")])
def test_json_settings_that_do_not_parse_name_their_variable(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(name), str(caught.value)


def test_a_config_file_that_does_not_parse_is_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "voip.toml"
    config.write_text("port = \n")
    monkeypatch.setenv("VOIP_CONFIG", str(config))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "VOIP_CONFIG" in str(caught.value) or str(config) in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_CLUSTER_NODES": "redis-a:6379,redis-b"}, "REDIS_CLUSTER_NODES"),
        (
            {"REDIS_CLUSTER_NODES": "a:1", "REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_CLUSTER_NODES, REDIS_SENTINELS",
        ),
        ({"REDIS_CLUSTER_NODES": "a:1", "VOIP_REDIS_WAIT_REPLICAS": "1"}, "VOIP_REDIS_WAIT_REPLICAS"),
    ],
)
def test_redis_cluster_nodes_are_checked(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    assert named in failure(monkeypatch, **env)


def test_redis_cluster_nodes_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "redis-a:6379, redis-b:6380")
    assert load_settings().redis_cluster_nodes == "redis-a:6379, redis-b:6380"


def service_account_file(tmp_path: Path, **changes: object) -> Path:
    from fcmsim import generate_service_account

    key = {**generate_service_account("my-project", "https://oauth2.googleapis.com/token"), **changes}
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({k: v for k, v in key.items() if v is not None}))
    return path


def test_fcm_settings_are_checked_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = service_account_file(tmp_path)
    monkeypatch.setenv("FCM_CREDENTIALS_FILE", str(good))
    settings = load_settings()
    assert settings.fcm_project_id == "my-project"  # the key's, when FCM_PROJECT_ID is not set
    monkeypatch.setenv("FCM_PROJECT_ID", "other-project")
    monkeypatch.setenv("FCM_ENDPOINT", "http://127.0.0.1:9999/")
    settings = load_settings()
    assert (settings.fcm_project_id, settings.fcm_endpoint) == ("other-project", "http://127.0.0.1:9999")
    monkeypatch.delenv("FCM_PROJECT_ID")
    monkeypatch.delenv("FCM_ENDPOINT")

    not_json = tmp_path / "key.txt"
    not_json.write_text("-----BEGIN PRIVATE KEY-----")
    cases = {
        str(tmp_path / "missing.json"): "FCM_CREDENTIALS_FILE: not a readable file",
        str(not_json): "FCM_CREDENTIALS_FILE: not JSON",
        str(service_account_file(tmp_path, type="authorized_user")): "FCM_CREDENTIALS_FILE: type is 'authorized_user'",
        str(
            service_account_file(tmp_path, private_key=None)
        ): "FCM_CREDENTIALS_FILE: not a service-account key: no private_key",
        str(
            service_account_file(tmp_path, private_key="garbage")
        ): "FCM_CREDENTIALS_FILE: its private_key does not load",
        str(service_account_file(tmp_path, project_id=None)): "FCM_PROJECT_ID: needed, the key names no project_id",
    }
    for path, expected in cases.items():
        message = failure(monkeypatch, FCM_CREDENTIALS_FILE=path)
        assert message.startswith(expected), message
        assert "PRIVATE KEY" not in message and "garbage" not in message


def test_fcm_project_and_endpoint_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert failure(monkeypatch, FCM_PROJECT_ID="my-project").startswith(
        "FCM_PROJECT_ID: only with FCM_CREDENTIALS_FILE"
    )
    monkeypatch.delenv("FCM_PROJECT_ID")
    assert failure(monkeypatch, FCM_ENDPOINT="http://127.0.0.1:1").startswith("FCM_ENDPOINT: only with")
    monkeypatch.delenv("FCM_ENDPOINT")
    assert failure(monkeypatch, FCM_CA_FILE="/etc/ssl/certs/ca-certificates.crt").startswith("FCM_CA_FILE: only with")


def test_fcm_ca_file_is_a_readable_pem_checked_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from simtls import generate_tls_material

    monkeypatch.setenv("FCM_CREDENTIALS_FILE", str(service_account_file(tmp_path)))
    assert load_settings().fcm_ca_file == ""  # unset: the default CAs
    material = generate_tls_material(tmp_path / "ca", issuer="fcm-test")
    monkeypatch.setenv("FCM_CA_FILE", str(material.ca_file))
    assert load_settings().fcm_ca_file == str(material.ca_file)

    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(material.ca_file.read_bytes())
    unreadable.chmod(0)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate")
    cases = {
        str(tmp_path / "missing.pem"): f"FCM_CA_FILE: not a readable file: {tmp_path / 'missing.pem'}",
        str(tmp_path): f"FCM_CA_FILE: not a readable file: {tmp_path}",
        str(not_pem): "FCM_CA_FILE: not PEM certificates (NO_CERTIFICATE_OR_CRL_FOUND)",
        # A key alone is not a CA, and its bytes are never echoed.
        str(material.key_file): "FCM_CA_FILE: not PEM certificates (NO_CERTIFICATE_OR_CRL_FOUND)",
    }
    if os.access(unreadable, os.R_OK):  # root reads any file
        unreadable.chmod(0o600)
    else:
        cases[str(unreadable)] = f"FCM_CA_FILE: not a readable file: {unreadable}"
    for path, expected in cases.items():
        message = failure(monkeypatch, FCM_CA_FILE=path)
        assert message == expected, message
        assert "PRIVATE KEY" not in message


# Several iOS apps (issue 14, item 6): APNS_APPS, a table keyed by bundle id.


def _p8(path: Path) -> str:
    from apnsim import generate_signing_key

    path.write_text(generate_signing_key("TEAMAPPS01", "KEYAPPS001").private_pem)
    return str(path)


def test_apns_apps_from_the_environment_and_from_a_toml_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from voip.settings import apns_app_table, default_app

    alpha, beta = _p8(tmp_path / "alpha.p8"), _p8(tmp_path / "beta.p8")
    config = tmp_path / "voip.toml"
    config.write_text(
        f'[apns_apps."com.example.alpha"]\nkey_file = "{alpha}"\nkey_id = "KEYALPHA01"\nteam_id = "TEAMALPHA1"\n'
    )
    monkeypatch.setenv("VOIP_CONFIG", str(config))
    from_file = load_settings()
    assert list(apns_app_table(from_file)) == ["com.example.alpha"]
    assert apns_app_table(from_file)["com.example.alpha"].key_id == "KEYALPHA01"
    assert default_app(from_file) == "com.example.alpha"  # the only app serves devices that name none

    both = {
        name: {"key_file": path, "key_id": f"KEY{n}", "team_id": "TEAM1"}
        for n, (name, path) in enumerate([("com.example.alpha", alpha), ("com.example.beta", beta)])
    }
    # The environment's table is merged into the file's, app by app: its entry for an app wins.
    monkeypatch.setenv("APNS_APPS", json.dumps(both))
    settings = load_settings()
    assert sorted(apns_app_table(settings)) == ["com.example.alpha", "com.example.beta"]
    assert apns_app_table(settings)["com.example.alpha"].key_id == "KEY0"
    assert default_app(settings) is None  # two apps, neither is APNS_BUNDLE_ID

    # The single-app settings are one more app, and APNS_BUNDLE_ID is then the default.
    monkeypatch.delenv("VOIP_CONFIG")
    monkeypatch.setenv("APNS_KEY_FILE", alpha)
    monkeypatch.setenv("APNS_KEY_ID", "KEYSINGLE1")
    monkeypatch.setenv("APNS_TEAM_ID", "TEAMSINGLE")
    monkeypatch.setenv("APNS_APPS", json.dumps({"com.example.beta": both["com.example.beta"]}))
    single = load_settings()
    assert sorted(apns_app_table(single)) == ["com.example.beta", "com.example.caller"]
    assert apns_app_table(single)["com.example.caller"].key_id == "KEYSINGLE1"
    assert default_app(single) == "com.example.caller"


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        (
            {"com.example.alpha": {"key_id": "K1", "team_id": "T1"}},
            "APNS_APPS (apns_apps): com.example.alpha: key_file",
        ),
        (
            {"com.example.alpha": {"key_file": "KEY", "team_id": "T1"}},
            "APNS_APPS (apns_apps): com.example.alpha: key_id",
        ),
        (
            {"com.example.alpha": {"key_file": "KEY", "key_id": "K1"}},
            "APNS_APPS (apns_apps): com.example.alpha: team_id",
        ),
        ({"com.example.alpha": {"key_file": "KEY", "key_id": "K 1", "team_id": "T1"}}, "com.example.alpha: key_id"),
        ({"com.example.alpha": {"key_file": "KEY", "key_id": "K1", "team_id": "T1", "topic": "x"}}, "topic"),
        ({"nodots": {"key_file": "KEY", "key_id": "K1", "team_id": "T1"}}, "APNS_APPS: not a bundle id: 'nodots'"),
        ({"com.example.caller": {"key_file": "KEY", "key_id": "K1", "team_id": "T1"}}, "APNS_BUNDLE_ID's app"),
        ({"com.example.alpha": {"key_file": "/nonexistent/k.p8", "key_id": "K1", "team_id": "T1"}}, "not a readable"),
        ({"com.example.alpha": {"key_file": "NOTKEY", "key_id": "K1", "team_id": "T1"}}, "not a PEM P-256 private key"),
        (["com.example.alpha"], "APNS_APPS (apns_apps): Input should be a valid dictionary"),
    ],
)
def test_each_bad_app_is_one_line_naming_apns_apps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, apps: object, says: str
) -> None:
    key, not_key = _p8(tmp_path / "key.p8"), tmp_path / "notkey.p8"
    not_key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n")
    raw = json.dumps(apps).replace('"KEY"', json.dumps(key)).replace('"NOTKEY"', json.dumps(str(not_key)))
    env = {"APNS_APPS": raw}
    if "APNS_BUNDLE_ID" in says:
        env |= {"APNS_KEY_FILE": key, "APNS_KEY_ID": "K0", "APNS_TEAM_ID": "T0"}
    message = failure(monkeypatch, **env)
    assert message.startswith("APNS_APPS") and says in message, message
    assert "c2VjcmV0" not in message and "PRIVATE KEY" not in message  # a key's bytes are never echoed


def test_production_starts_with_apns_apps_instead_of_apns_key_file(
    monkeypatch: pytest.MonkeyPatch, production: dict[str, str], tmp_path: Path
) -> None:
    monkeypatch.delenv("APNS_KEY_FILE")
    key = _p8(tmp_path / "alpha.p8")
    monkeypatch.setenv(
        "APNS_APPS", json.dumps({"com.example.alpha": {"key_file": key, "key_id": "K1", "team_id": "T1"}})
    )
    assert load_settings().apns_apps["com.example.alpha"].key_file == key
