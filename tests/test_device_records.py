"""The one rule for a device registration update (voip/devices.py), for HTTP devices
and push-capable SIP phones alike."""

from __future__ import annotations

from voip.devices import DeviceRecord, Registration, SipRegistration, register

TOKEN = "ab" * 32


def test_a_first_registration_is_stamped_now_with_tokens_lower_case() -> None:
    record = register(None, Registration(TOKEN.upper(), "sandbox", "com.example.app", "CD" * 32), 1000)
    assert record == DeviceRecord(TOKEN, "sandbox", "com.example.app", "cd" * 32, 1000, 1000, 1000)


def test_the_same_token_keeps_its_registration_time_and_a_new_one_moves_it() -> None:
    first = register(None, Registration(TOKEN, "production", None), 1000)
    same = register(first, Registration(TOKEN.upper(), "production", None), 2000)
    assert (same.registered_at, same.updated_at, same.token_registered_at) == (1000, 2000, 1000)
    other = register(same, Registration("ef" * 32, "production", None), 3000)
    assert (other.registered_at, other.updated_at, other.token_registered_at) == (1000, 3000, 3000)
    gone = register(other, Registration(None, "production", None), 4000)
    assert (gone.voip_token, gone.token_registered_at) == (None, 4000)


def test_a_dropped_token_registered_again_is_a_new_token() -> None:
    dropped = DeviceRecord.from_stored(
        {
            "token_dropped_at": 1500,
            "voip_token": None,
            "apns_environment": "sandbox",
            "bundle_id": "b",
            "alert_token": None,
            "registered_at": 1000,
            "updated_at": 1000,
            "token_registered_at": 1000,
        }
    )
    again = register(dropped, Registration(TOKEN, "sandbox", "b"), 2000)
    assert again.token_dropped_at is None
    assert again.token_registered_at == 2000
    assert "token_dropped_at" not in again.stored()


def test_a_sip_phone_record_round_trips_through_its_stored_form() -> None:
    sip = SipRegistration("sip:alice@192.0.2.7:5062", 99_000, "TEAM123")
    record = register(None, Registration(TOKEN, "production", "com.example.app", sip=sip), 1000)
    stored = record.stored()
    assert list(stored) == [
        "voip_token",
        "apns_environment",
        "bundle_id",
        "alert_token",
        "registered_at",
        "updated_at",
        "token_registered_at",
        "sip",
    ]
    assert stored["sip"] == {"contact": "sip:alice@192.0.2.7:5062", "expires_at": 99_000, "team_id": "TEAM123"}
    assert DeviceRecord.from_stored(stored) == record
