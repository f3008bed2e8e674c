"""Settings: config/default.toml, then the file named by VOIP_CONFIG, then the environment."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from voip.ice_servers import MIN_SECRET_BYTES, parse_uris

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_FILE = CONFIG_DIR / "default.toml"
DEV_SECRET_FILE = Path(".voip") / "dev-secret"
# An iOS bundle id (reverse DNS): APNS_BUNDLE_ID and the keys of APNS_APPS.
BUNDLE_ID = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class APNsApp(BaseModel):
    """One iOS app's APNs token-auth key: an entry of APNS_APPS, keyed by its bundle id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_file: str = Field(min_length=1)
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")
    team_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")


def _env(*names: str) -> AliasChoices:
    # The TOML key (the field name) and the documented environment variable both work.
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True)

    environment: Literal["development", "production"] = Field(
        "development", validation_alias=_env("environment", "VOIP_ENV")
    )
    host: str = Field("127.0.0.1", validation_alias=_env("host", "HOST"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("port", "PORT"))
    node_id: str = Field("", max_length=64, validation_alias=_env("node_id", "VOIP_NODE_ID"))
    redis_url: str = Field("", validation_alias=_env("redis_url", "REDIS_URL"))
    redis_prefix: str = Field(
        "voip:", min_length=1, max_length=64, validation_alias=_env("redis_prefix", "VOIP_REDIS_PREFIX")
    )
    jwt_secret: str = Field("", validation_alias=_env("jwt_secret", "VOIP_JWT_SECRET"), repr=False)
    ring_timeout: float = Field(45, gt=0, le=600, validation_alias=_env("ring_timeout", "VOIP_RING_TIMEOUT"))
    call_retention: int = Field(86400, ge=60, validation_alias=_env("call_retention", "VOIP_CALL_RETENTION"))
    history_retention: int = Field(
        30 * 86400, ge=60, le=400 * 86400, validation_alias=_env("history_retention", "VOIP_HISTORY_RETENTION")
    )
    max_devices_per_user: int = Field(
        10, ge=1, le=1000, validation_alias=_env("max_devices_per_user", "VOIP_MAX_DEVICES_PER_USER")
    )
    ws_max_frame_bytes: int = Field(
        65536, ge=1024, validation_alias=_env("ws_max_frame_bytes", "VOIP_WS_MAX_FRAME_BYTES")
    )
    ws_rate: float = Field(20.0, gt=0, validation_alias=_env("ws_rate", "VOIP_WS_RATE"))
    ws_burst: int = Field(40, ge=1, validation_alias=_env("ws_burst", "VOIP_WS_BURST"))
    public_url: str = Field("", validation_alias=_env("public_url", "VOIP_PUBLIC_URL"))
    apns_key_file: str = Field("", validation_alias=_env("apns_key_file", "APNS_KEY_FILE"))
    apns_key_id: str = Field("", validation_alias=_env("apns_key_id", "APNS_KEY_ID"))
    apns_team_id: str = Field("", validation_alias=_env("apns_team_id", "APNS_TEAM_ID"))
    apns_bundle_id: str = Field(
        "com.example.caller",
        pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
        validation_alias=_env("apns_bundle_id", "APNS_BUNDLE_ID"),
    )
    apns_endpoint: str = Field(
        "", pattern=r"^$|^[^:\s]+:\d{1,5}$", validation_alias=_env("apns_endpoint", "APNS_ENDPOINT")
    )
    apns_ca_file: str = Field("", validation_alias=_env("apns_ca_file", "APNS_CA_FILE"))
    # Several iOS apps (issue 14, item 6; docs/push.md#several-apps): bundle id -> its key.
    # APNS_KEY_FILE (with APNS_BUNDLE_ID) is one more app of the same table.
    apns_apps: dict[str, APNsApp] = Field({}, max_length=256, validation_alias=_env("apns_apps", "APNS_APPS"))
    # Android over FCM HTTP v1 (voip/push/fcm.py, docs/push.md#android-fcm)
    fcm_credentials_file: str = Field("", validation_alias=_env("fcm_credentials_file", "FCM_CREDENTIALS_FILE"))
    fcm_project_id: str = Field(
        "",
        pattern=r"^$|^[a-z][a-z0-9-]{4,28}[a-z0-9]$",
        validation_alias=_env("fcm_project_id", "FCM_PROJECT_ID"),
    )
    fcm_endpoint: str = Field(
        "",
        pattern=r"^$|^https?://[^/\s:]+(:\d{1,5})?/?$",
        validation_alias=_env("fcm_endpoint", "FCM_ENDPOINT"),
    )
    fcm_ca_file: str = Field("", validation_alias=_env("fcm_ca_file", "FCM_CA_FILE"))
    # SIP gateway (voip/sipcalls, docs/sip-gateway.md)
    sip_enabled: bool = Field(False, validation_alias=_env("sip_enabled", "SIP_ENABLED"))
    sip_host: str = Field("127.0.0.1", validation_alias=_env("sip_host", "SIP_HOST"))
    sip_port: int = Field(5060, ge=0, le=65535, validation_alias=_env("sip_port", "SIP_PORT"))
    sip_public_host: str = Field("", validation_alias=_env("sip_public_host", "SIP_PUBLIC_HOST"))
    sip_domain: str = Field("", validation_alias=_env("sip_domain", "SIP_DOMAIN"))
    sip_transports: list[Literal["UDP", "TCP", "udp", "tcp"]] = Field(
        ["UDP", "TCP"], min_length=1, validation_alias=_env("sip_transports", "SIP_TRANSPORTS")
    )
    sip_accounts: dict[str, str] = Field({}, validation_alias=_env("sip_accounts", "SIP_ACCOUNTS"), repr=False)
    sip_trusted_networks: list[str] = Field(
        ["127.0.0.0/8", "::1/128"], validation_alias=_env("sip_trusted_networks", "SIP_TRUSTED_NETWORKS")
    )
    sip_digest_algorithms: list[Literal["SHA-256", "MD5", "SHA-512-256"]] = Field(
        ["SHA-256", "MD5"],
        min_length=1,
        validation_alias=_env("sip_digest_algorithms", "SIP_DIGEST_ALGORITHMS"),
    )
    sip_rate: float = Field(50.0, gt=0, validation_alias=_env("sip_rate", "SIP_RATE"))
    sip_burst: int = Field(100, ge=1, validation_alias=_env("sip_burst", "SIP_BURST"))
    sip_max_expires: int = Field(3600, ge=60, validation_alias=_env("sip_max_expires", "SIP_MAX_EXPIRES"))
    # SIP digest replay protection (issue 8, item 1)
    sip_nonce_ttl: int = Field(30, ge=5, le=3600, validation_alias=_env("sip_nonce_ttl", "SIP_NONCE_TTL"))
    sip_trunk_host: str = Field("", validation_alias=_env("sip_trunk_host", "SIP_TRUNK_HOST"))
    sip_trunk_pattern: str = Field(r"^\+?[0-9]{3,15}$", validation_alias=_env("sip_trunk_pattern", "SIP_TRUNK_PATTERN"))
    sip_trunk_username: str = Field("", validation_alias=_env("sip_trunk_username", "SIP_TRUNK_USERNAME"))
    sip_trunk_password: str = Field("", validation_alias=_env("sip_trunk_password", "SIP_TRUNK_PASSWORD"), repr=False)
    # SIP over TLS (docs/sip-gateway.md#sip-over-tls): off unless port, cert and key are all set.
    sip_tls_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("sip_tls_port", "SIP_TLS_PORT"))
    sip_tls_cert_file: str = Field("", validation_alias=_env("sip_tls_cert_file", "SIP_TLS_CERT_FILE"))
    sip_tls_key_file: str = Field("", validation_alias=_env("sip_tls_key_file", "SIP_TLS_KEY_FILE"))
    sip_tls_ca_file: str = Field("", validation_alias=_env("sip_tls_ca_file", "SIP_TLS_CA_FILE"))
    # SIP over WebSocket (RFC 7118) at /v1/sip: sockets per node; beyond, 503.
    sip_ws_max_connections: int = Field(
        1000, ge=1, validation_alias=_env("sip_ws_max_connections", "SIP_WS_MAX_CONNECTIONS")
    )
    # Limits on every channel (docs/operators.md#limits)
    max_ringing_per_callee: int = Field(
        3, ge=1, le=1000, validation_alias=_env("max_ringing_per_callee", "VOIP_MAX_RINGING_PER_CALLEE")
    )
    calls_per_callee_per_minute: int = Field(
        20,
        ge=1,
        le=100000,
        validation_alias=_env("calls_per_callee_per_minute", "VOIP_CALLS_PER_CALLEE_PER_MINUTE"),
    )
    http_max_header_bytes: int = Field(
        16384, ge=1024, le=1048576, validation_alias=_env("http_max_header_bytes", "VOIP_HTTP_MAX_HEADER_BYTES")
    )
    http_max_headers: int = Field(
        100, ge=8, le=10000, validation_alias=_env("http_max_headers", "VOIP_HTTP_MAX_HEADERS")
    )
    http_header_timeout: float = Field(
        10.0, gt=0, le=300, validation_alias=_env("http_header_timeout", "VOIP_HTTP_HEADER_TIMEOUT")
    )
    http_body_timeout: float = Field(
        30.0, gt=0, le=3600, validation_alias=_env("http_body_timeout", "VOIP_HTTP_BODY_TIMEOUT")
    )
    http_keep_alive: int = Field(5, ge=1, le=3600, validation_alias=_env("http_keep_alive", "VOIP_HTTP_KEEP_ALIVE"))
    http_max_connections: int = Field(
        4096, ge=2, validation_alias=_env("http_max_connections", "VOIP_HTTP_MAX_CONNECTIONS")
    )
    # Graceful drain on SIGTERM (issue 9, item 6; docs/operators.md#draining-a-node)
    drain_seconds: float = Field(20.0, ge=0, le=600, validation_alias=_env("drain_seconds", "VOIP_DRAIN_SECONDS"))
    ops_feed: bool = Field(True, validation_alias=_env("ops_feed", "VOIP_OPS_FEED"))
    # Secrets out of URLs and logs (issue 8, item 4)
    ops_ticket_ttl: int = Field(30, ge=1, le=600, validation_alias=_env("ops_ticket_ttl", "VOIP_OPS_TICKET_TTL"))
    # Newcomers (issue 10, item 9): a human banner on stderr once the node is ready.
    # auto: only when stderr is a terminal, so log collectors see JSON lines only.
    banner: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("banner", "VOIP_BANNER"))
    # Durable Redis (issue 9, item 1; docs/deploy.md)
    redis_epoch_interval: float = Field(
        5.0, gt=0, le=300, validation_alias=_env("redis_epoch_interval", "VOIP_REDIS_EPOCH_INTERVAL")
    )
    # Redis unavailable or busy (issue 9, items 3 and 5)
    redis_pool_size: int = Field(64, ge=2, le=10000, validation_alias=_env("redis_pool_size", "VOIP_REDIS_POOL_SIZE"))
    redis_pool_timeout: float = Field(
        2.0, gt=0, le=60, validation_alias=_env("redis_pool_timeout", "VOIP_REDIS_POOL_TIMEOUT")
    )
    redis_command_timeout: float = Field(
        5.0, gt=0, le=120, validation_alias=_env("redis_command_timeout", "VOIP_REDIS_COMMAND_TIMEOUT")
    )
    redis_retry_after: int = Field(
        2, ge=1, le=3600, validation_alias=_env("redis_retry_after", "VOIP_REDIS_RETRY_AFTER")
    )
    # Redis Sentinel (issue 9, item 2; docs/deploy.md#redis-sentinel)
    redis_sentinels: str = Field("", validation_alias=_env("redis_sentinels", "REDIS_SENTINELS"))
    redis_sentinel_master: str = Field(
        "", max_length=128, validation_alias=_env("redis_sentinel_master", "REDIS_SENTINEL_MASTER")
    )
    # Redis Cluster (issue 11, item 1; docs/deploy.md#redis-cluster): with it, REDIS_URL is not used.
    redis_cluster_nodes: str = Field("", validation_alias=_env("redis_cluster_nodes", "REDIS_CLUSTER_NODES"))
    redis_password: str = Field("", validation_alias=_env("redis_password", "REDIS_PASSWORD"), repr=False)
    # TLS to Redis on every path (issue 11, item 1; docs/deploy.md#tls-to-redis). Unset: what
    # REDIS_URL's scheme says (rediss:// is TLS). After loading, always a bool.
    redis_tls: bool | None = Field(None, validation_alias=_env("redis_tls", "REDIS_TLS"))
    redis_tls_ca_file: str = Field("", validation_alias=_env("redis_tls_ca_file", "REDIS_TLS_CA_FILE"))
    redis_tls_cert_file: str = Field("", validation_alias=_env("redis_tls_cert_file", "REDIS_TLS_CERT_FILE"))
    redis_tls_key_file: str = Field("", validation_alias=_env("redis_tls_key_file", "REDIS_TLS_KEY_FILE"))
    redis_tls_server_name: str = Field(
        "",
        max_length=253,
        pattern=r"^[A-Za-z0-9.:-]*$",
        validation_alias=_env("redis_tls_server_name", "REDIS_TLS_SERVER_NAME"),
    )
    # Sentinels may listen with or without TLS, and with a password of their own.
    redis_sentinel_tls: bool | None = Field(None, validation_alias=_env("redis_sentinel_tls", "REDIS_SENTINEL_TLS"))
    redis_sentinel_password: str = Field(
        "", validation_alias=_env("redis_sentinel_password", "REDIS_SENTINEL_PASSWORD"), repr=False
    )
    redis_wait_replicas: int = Field(
        0, ge=0, le=16, validation_alias=_env("redis_wait_replicas", "VOIP_REDIS_WAIT_REPLICAS")
    )
    redis_wait_timeout_ms: int = Field(
        100, ge=1, le=10000, validation_alias=_env("redis_wait_timeout_ms", "VOIP_REDIS_WAIT_TIMEOUT_MS")
    )
    # ICE servers for apps' media (issue 13, part 3; GET /v1/ice-servers): stun:, stuns:,
    # turn:, turns: URIs (RFC 7064, RFC 7065); TURN credentials in coturn's REST-API form.
    turn_uris: list[str] = Field([], max_length=32, validation_alias=_env("turn_uris", "TURN_URIS"))
    turn_secret: str = Field("", validation_alias=_env("turn_secret", "TURN_SECRET"), repr=False)
    turn_ttl: int = Field(86400, ge=60, le=604800, validation_alias=_env("turn_ttl", "TURN_TTL"))
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("log_level", "VOIP_LOG_LEVEL")
    )
    # The app's own backend in the loop (docs/webhooks.md): names from tokens, the
    # call-control hook, signed call-event webhooks.
    trust_client_names: bool = Field(False, validation_alias=_env("trust_client_names", "VOIP_TRUST_CLIENT_NAMES"))
    call_hook_url: str = Field("", validation_alias=_env("call_hook_url", "VOIP_CALL_HOOK_URL"), repr=False)
    call_hook_timeout_ms: int = Field(
        1000, ge=10, le=30000, validation_alias=_env("call_hook_timeout_ms", "VOIP_CALL_HOOK_TIMEOUT_MS")
    )
    call_hook_failure: Literal["open", "closed"] = Field(
        "closed", validation_alias=_env("call_hook_failure", "VOIP_CALL_HOOK_FAILURE")
    )
    webhook_urls: str = Field("", validation_alias=_env("webhook_urls", "VOIP_WEBHOOK_URLS"), repr=False)
    webhook_secret: str = Field("", validation_alias=_env("webhook_secret", "VOIP_WEBHOOK_SECRET"), repr=False)

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.apns_key_file:
            if not Path(self.apns_key_file).is_file():
                raise ValueError(f"APNS_KEY_FILE: no such file: {self.apns_key_file}")
            if not (self.apns_key_id and self.apns_team_id):
                raise ValueError("APNS_KEY_ID, APNS_TEAM_ID: both are needed with APNS_KEY_FILE")
        if self.apns_ca_file and not Path(self.apns_ca_file).is_file():
            raise ValueError(f"APNS_CA_FILE: no such file: {self.apns_ca_file}")
        _check_apns_apps(self)
        _check_fcm(self)
        _check_sip_tls(self)
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("REDIS_SENTINELS, REDIS_SENTINEL_MASTER: both or neither")
        if self.redis_sentinels:
            try:
                sentinel_addresses(self.redis_sentinels)
            except ValueError as exc:
                raise ValueError(f"REDIS_SENTINELS: {exc}") from None
        if self.redis_cluster_nodes:
            try:
                sentinel_addresses(self.redis_cluster_nodes)
            except ValueError as exc:
                raise ValueError(f"REDIS_CLUSTER_NODES: {exc}") from None
            if self.redis_sentinels:
                raise ValueError("REDIS_CLUSTER_NODES, REDIS_SENTINELS: one or the other")
            if self.redis_wait_replicas:
                # WAIT needs the writes' own connection; a cluster spreads them over shards.
                raise ValueError("VOIP_REDIS_WAIT_REPLICAS: not supported with REDIS_CLUSTER_NODES")
        _check_redis_tls(self)
        _check_app_backend(self)
        _check_turn(self)
        if self.environment == "production":
            if not (self.apns_key_file or self.apns_apps):
                raise ValueError("APNS_KEY_FILE: production needs an APNs auth key (.p8), or APNS_APPS")
            if not self.public_url:
                raise ValueError("VOIP_PUBLIC_URL: production needs the URL apps reach this service at")
            if len(self.jwt_secret.encode()) < 32:
                raise ValueError("VOIP_JWT_SECRET: production needs a secret of 32 bytes or more")
            if not (self.redis_url or self.redis_sentinels or self.redis_cluster_nodes):
                raise ValueError("REDIS_URL: production needs a shared Redis (or REDIS_SENTINELS, REDIS_CLUSTER_NODES)")
        elif self.jwt_secret and len(self.jwt_secret.encode()) < 16:
            raise ValueError("VOIP_JWT_SECRET: a secret of 16 bytes or more is needed")
        self.public_url = self.public_url.rstrip("/")
        if not self.node_id:
            self.node_id = f"{socket.gethostname()}-{os.getpid()}"
        return self

    @field_validator("sip_tls_port", "redis_tls", "redis_sentinel_tls", mode="before")
    @classmethod
    def _unset_port(cls, value: object) -> object:
        # SIP_TLS_PORT="" (or REDIS_TLS="") in the environment means unset, like the file
        # settings beside it.
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files: list[Path] = [DEFAULT_FILE]
        if extra := os.environ.get("VOIP_CONFIG"):
            files.append(Path(extra))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=files))


def webhook_url_list(value: str) -> list[str]:
    """VOIP_WEBHOOK_URLS: comma-separated http(s) URLs, blanks dropped."""
    return [url.strip() for url in value.split(",") if url.strip()]


def _http_url(name: str, url: str) -> None:
    # The URL may carry a token of the app's: never echoed in the error.
    if not re.match(r"^https?://[^/\s?#]+", url) or any(c.isspace() for c in url):
        raise ValueError(f"{name}: not an http:// or https:// URL")


def _check_app_backend(settings: Settings) -> None:
    urls = webhook_url_list(settings.webhook_urls)
    for url in urls:
        _http_url("VOIP_WEBHOOK_URLS", url)
    if settings.call_hook_url:
        _http_url("VOIP_CALL_HOOK_URL", settings.call_hook_url)
    if (urls or settings.call_hook_url) and len(settings.webhook_secret.encode()) < 16:
        # The hook and the webhooks are signed with it: an unsigned request would be one
        # anybody could forge.
        raise ValueError("VOIP_WEBHOOK_SECRET: a secret of 16 bytes or more is needed with webhooks or a call hook")


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` -> [(host, port)]; ValueError names the bad entry."""
    addresses: list[tuple[str, int]] = []
    for entry in (part.strip() for part in value.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not host:port: {entry!r}")
        addresses.append((host.removeprefix("[").removesuffix("]"), int(port)))
    return addresses


def apns_app_table(settings: Settings) -> dict[str, APNsApp]:
    """Every iOS app this node pushes to with credentials of its own, by bundle id:
    APNS_KEY_FILE's (as APNS_BUNDLE_ID) and APNS_APPS's. Empty: no credentials, the bundled
    simulator serves every bundle."""
    table: dict[str, APNsApp] = {}
    if settings.apns_key_file:
        table[settings.apns_bundle_id] = APNsApp(
            key_file=settings.apns_key_file, key_id=settings.apns_key_id, team_id=settings.apns_team_id
        )
    return table | settings.apns_apps


def default_app(settings: Settings) -> str | None:
    """The app of a device that registered no bundle id (and of the calls stored before
    apps had one): APNS_BUNDLE_ID when this node serves it, else the only app, else none."""
    table = apns_app_table(settings)
    if not table or settings.apns_bundle_id in table:
        return settings.apns_bundle_id
    return next(iter(table)) if len(table) == 1 else None


def _check_apns_apps(settings: Settings) -> None:
    """Each app of APNS_APPS: a bundle id, a readable P-256 key, not APNS_KEY_FILE's app again."""
    for bundle_id, app in settings.apns_apps.items():
        if not BUNDLE_ID.match(bundle_id) or len(bundle_id) > 155:
            raise ValueError(f"APNS_APPS: not a bundle id: {bundle_id!r}")
        if settings.apns_key_file and bundle_id == settings.apns_bundle_id:
            raise ValueError(f"APNS_APPS: {bundle_id} is APNS_BUNDLE_ID's app already (APNS_KEY_FILE); name it once")
        path = Path(app.key_file)
        if not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"APNS_APPS: {bundle_id}: key_file: not a readable file: {path}")
        if not _is_p256_private_key(path.read_bytes()):
            # Never the file's bytes: it is a secret.
            raise ValueError(f"APNS_APPS: {bundle_id}: key_file: not a PEM P-256 private key (an APNs .p8): {path}")


def _is_p256_private_key(pem: bytes) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return False
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def _check_fcm(settings: Settings) -> None:
    """The key file is a readable service-account key; the project comes from it unless
    FCM_PROJECT_ID says otherwise; the CA file holds PEM certificates; the other FCM
    settings only with a key."""
    if not settings.fcm_credentials_file:
        for env, value in (
            ("FCM_PROJECT_ID", settings.fcm_project_id),
            ("FCM_ENDPOINT", settings.fcm_endpoint),
            ("FCM_CA_FILE", settings.fcm_ca_file),
        ):
            if value:
                raise ValueError(f"{env}: only with FCM_CREDENTIALS_FILE (without it: the bundled FCM simulator)")
        return
    from voip.push.fcm_auth import check_service_account  # google-auth only when FCM is configured

    path = Path(settings.fcm_credentials_file)
    if not (path.is_file() and os.access(path, os.R_OK)):
        raise ValueError(f"FCM_CREDENTIALS_FILE: not a readable file: {path}")
    try:
        info = check_service_account(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise ValueError("FCM_CREDENTIALS_FILE: not JSON") from None
    except ValueError as exc:
        raise ValueError(f"FCM_CREDENTIALS_FILE: {exc}") from None
    if not settings.fcm_project_id:
        project = info.get("project_id")
        if not isinstance(project, str) or not project:
            raise ValueError("FCM_PROJECT_ID: needed, the key names no project_id")
        settings.fcm_project_id = project
    settings.fcm_endpoint = settings.fcm_endpoint.rstrip("/")
    if settings.fcm_ca_file:
        ca_file = Path(settings.fcm_ca_file)
        if not (ca_file.is_file() and os.access(ca_file, os.R_OK)):
            raise ValueError(f"FCM_CA_FILE: not a readable file: {ca_file}")
        try:
            ssl.create_default_context(cafile=settings.fcm_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"FCM_CA_FILE: not PEM certificates ({_tls_reason(exc)})") from None


SIP_TLS_SETTINGS = {
    "SIP_TLS_PORT": "sip_tls_port",
    "SIP_TLS_CERT_FILE": "sip_tls_cert_file",
    "SIP_TLS_KEY_FILE": "sip_tls_key_file",
}


def _check_sip_tls(settings: Settings) -> None:
    """All three TLS settings or none, and a certificate and key that load and match."""
    given = {env: getattr(settings, name) not in (None, "") for env, name in SIP_TLS_SETTINGS.items()}
    if any(given.values()) and not all(given.values()):
        missing = ", ".join(env for env, present in given.items() if not present)
        raise ValueError(f"{missing}: SIP over TLS needs SIP_TLS_PORT, SIP_TLS_CERT_FILE and SIP_TLS_KEY_FILE")
    if settings.sip_tls_port and settings.sip_tls_port == settings.sip_port:
        raise ValueError(f"SIP_TLS_PORT: {settings.sip_tls_port} is SIP_PORT already (UDP and TCP listen there)")
    files = {"SIP_TLS_CA_FILE": settings.sip_tls_ca_file}
    if all(given.values()):
        files = {
            "SIP_TLS_CERT_FILE": settings.sip_tls_cert_file,
            "SIP_TLS_KEY_FILE": settings.sip_tls_key_file,
            **files,
        }
    for env, path in files.items():
        if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{env}: not a readable file: {path}")
    if all(given.values()):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                settings.sip_tls_cert_file, settings.sip_tls_key_file
            )
        except (ssl.SSLError, OSError) as exc:
            # OpenSSL's reason only ("KEY_VALUES_MISMATCH", "PEM lib"): never the files' bytes.
            raise ValueError(
                f"SIP_TLS_CERT_FILE, SIP_TLS_KEY_FILE: not a PEM certificate and its key ({_tls_reason(exc)})"
            ) from None
    if settings.sip_tls_ca_file:
        try:
            ssl.create_default_context(cafile=settings.sip_tls_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"SIP_TLS_CA_FILE: not PEM certificates ({_tls_reason(exc)})") from None


REDIS_TLS_FILES = {
    "REDIS_TLS_CA_FILE": "redis_tls_ca_file",
    "REDIS_TLS_CERT_FILE": "redis_tls_cert_file",
    "REDIS_TLS_KEY_FILE": "redis_tls_key_file",
}


def _check_redis_tls(settings: Settings) -> None:
    """REDIS_TLS agrees with REDIS_URL's scheme; TLS files only with TLS on, readable and
    loadable now; the Sentinel settings only with Sentinels. Leaves both flags as bools."""
    scheme = settings.redis_url.partition("://")[0].lower() if settings.redis_url else ""
    if settings.redis_tls is None:
        settings.redis_tls = scheme == "rediss"
    elif scheme == "rediss" and not settings.redis_tls:
        raise ValueError("REDIS_TLS: false, but REDIS_URL is rediss://, which is TLS")
    elif scheme and scheme != "rediss" and settings.redis_tls:
        raise ValueError(f"REDIS_TLS: true, but REDIS_URL is {scheme}://; TLS is rediss://")
    if not settings.redis_sentinels:
        for env, value in (
            ("REDIS_SENTINEL_TLS", settings.redis_sentinel_tls is not None),
            ("REDIS_SENTINEL_PASSWORD", bool(settings.redis_sentinel_password)),
        ):
            if value:
                raise ValueError(f"{env}: only with REDIS_SENTINELS")
    if settings.redis_sentinel_tls is None:
        settings.redis_sentinel_tls = settings.redis_tls
    if settings.redis_tls and not (scheme or settings.redis_sentinels or settings.redis_cluster_nodes):
        raise ValueError(
            "REDIS_TLS: needs REDIS_URL (rediss://), REDIS_CLUSTER_NODES or REDIS_SENTINELS; "
            "the private development Redis has no TLS"
        )
    given = [env for env, name in REDIS_TLS_FILES.items() if getattr(settings, name)]
    if settings.redis_tls_server_name:
        given.append("REDIS_TLS_SERVER_NAME")
    if given and not (settings.redis_tls or settings.redis_sentinel_tls):
        raise ValueError(f"{given[0]}: set, but TLS to Redis is off (REDIS_TLS)")
    if settings.redis_tls_server_name and not (settings.redis_cluster_nodes or settings.redis_sentinels):
        # Only addresses the node is handed (cluster nodes, the master) need another name.
        raise ValueError(
            "REDIS_TLS_SERVER_NAME: only with REDIS_CLUSTER_NODES or REDIS_SENTINELS (REDIS_URL names its host)"
        )
    if bool(settings.redis_tls_cert_file) != bool(settings.redis_tls_key_file):
        raise ValueError("REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE: both or neither")
    for env, name in REDIS_TLS_FILES.items():
        path = getattr(settings, name)
        if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{env}: not a readable file: {path}")
    if settings.redis_tls_ca_file:
        try:
            ssl.create_default_context(cafile=settings.redis_tls_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"REDIS_TLS_CA_FILE: not PEM certificates ({_tls_reason(exc)})") from None
    if settings.redis_tls_cert_file:
        try:
            ssl.create_default_context().load_cert_chain(settings.redis_tls_cert_file, settings.redis_tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE: not a PEM certificate and its key ({_tls_reason(exc)})"
            ) from None


def _check_turn(settings: Settings) -> None:
    """Every ICE URI parses; TURN URIs and the shared secret come together."""
    try:
        uris = parse_uris(settings.turn_uris)
    except ValueError as exc:
        raise ValueError(f"TURN_URIS: {exc}") from None
    turn = any(uri.is_turn for uri in uris)
    if turn and not settings.turn_secret:
        raise ValueError("TURN_SECRET: needed with a turn: or turns: URI in TURN_URIS (coturn's static-auth-secret)")
    if settings.turn_secret and not turn:
        raise ValueError("TURN_SECRET: set, but TURN_URIS has no turn: or turns: URI")
    if settings.turn_secret and len(settings.turn_secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"TURN_SECRET: a secret of {MIN_SECRET_BYTES} bytes or more is needed")


def _tls_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
    return str(reason).removeprefix("[SSL] ").split(" (_ssl.c", 1)[0]


class SettingsError(Exception):
    """One line that names the setting at fault."""


def load_settings(**overrides: Any) -> Settings:
    extra = os.environ.get("VOIP_CONFIG")
    if extra and not Path(extra).is_file():
        raise SettingsError(f"VOIP_CONFIG: no such file: {extra}")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except ValueError as exc:  # a TOML file, or a JSON-valued variable, that does not parse
        raise SettingsError(_unparsable(exc, extra)) from None
    if not settings.jwt_secret:
        settings.jwt_secret = development_secret()
    return settings


def _unparsable(exc: ValueError, config_file: str | None) -> str:
    message = str(exc)
    field = re.search(r'field "(\w+)"', message)
    if field and field.group(1) in Settings.model_fields:
        alias = Settings.model_fields[field.group(1)].validation_alias
        env_name = alias.choices[-1] if isinstance(alias, AliasChoices) else field.group(1)
        return f"{env_name} ({field.group(1)}): not valid JSON"
    source = f"VOIP_CONFIG ({config_file})" if config_file else str(DEFAULT_FILE)
    return f"{source}: not valid TOML: {message}"


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a model-level rule: its message names the setting already
        return message
    name = str(error["loc"][0])
    field = Settings.model_fields.get(name)
    if field is None:
        return f"{name}: unknown setting"
    alias = field.validation_alias
    assert isinstance(alias, AliasChoices)  # every setting is declared with _env()
    env_name = alias.choices[-1]
    if name == "apns_apps" and len(error["loc"]) > 1:  # inside the table: which app, which field
        where = ": ".join(str(part) for part in error["loc"][1:])
        return f"{env_name} ({name}): {where}: {message}"
    shown = "" if not field.repr else f" (got {error.get('input')!r})"  # secrets are never echoed
    return f"{env_name} ({name}): {message}{shown}"


def development_secret() -> str:
    """A per-checkout secret, so `python -m voip token` and `run` agree without configuration."""
    if DEV_SECRET_FILE.is_file():
        return DEV_SECRET_FILE.read_text().strip()
    DEV_SECRET_FILE.parent.mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(DEV_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
