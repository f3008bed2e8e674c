"""The cluster pipe's pure part, without a socket: the slot map read from CLUSTER SLOTS
(as hiredis hands it over) and what each answer of a cluster calls for. The pipe on a
real cluster is tests/cluster/test_status_pipe_on_cluster.py."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from redis.crc import key_slot

from voip.redis_cluster_pipe import SLOTS, ClusterPipe, Decision, SlotMap, Step, decide

ASKED = ("10.0.0.9", 7000)


def parsed(payload: bytes) -> Any:
    """A reply as the pipe gets it: RESP through hiredis."""
    reader = hiredis.Reader()
    reader.feed(payload)
    return reader.gets()


# CLUSTER SLOTS of a three-primary cluster, one replica each, as redis-server 7 sends it.
THREE_PRIMARIES = (
    b"*3\r\n"
    b"*4\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$3\r\nid1\r\n*0\r\n"
    b"*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$3\r\nid4\r\n"
    b"*4\r\n:5461\r\n:10922\r\n*4\r\n$9\r\n127.0.0.1\r\n:7002\r\n$3\r\nid2\r\n*0\r\n"
    b"*3\r\n$9\r\n127.0.0.1\r\n:7005\r\n$3\r\nid5\r\n"
    b"*4\r\n:10923\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7003\r\n$3\r\nid3\r\n*0\r\n"
    b"*3\r\n$9\r\n127.0.0.1\r\n:7006\r\n$3\r\nid6\r\n"
)


def test_every_slot_has_its_primary_and_replicas_are_not_used() -> None:
    slots = SlotMap.parse(parsed(THREE_PRIMARIES), ASKED)
    assert len(slots.owners) == SLOTS
    assert (slots.owners[0], slots.owners[5460]) == (("127.0.0.1", 7001),) * 2
    assert (slots.owners[5461], slots.owners[10922]) == (("127.0.0.1", 7002),) * 2
    assert (slots.owners[10923], slots.owners[16383]) == (("127.0.0.1", 7003),) * 2
    assert slots.primaries() == [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]


def test_a_key_goes_to_the_owner_of_its_hash_tag() -> None:
    slots = SlotMap.parse(parsed(THREE_PRIMARIES), ASKED)
    call, timeline = "voip:{c:9f0c}:call", "voip:{c:9f0c}:timeline"
    assert key_slot(call.encode()) == key_slot(timeline.encode()) == key_slot(b"c:9f0c")
    assert slots.owners[key_slot(call.encode())] == ("127.0.0.1", 7003)  # slot 13501


def test_a_node_with_no_name_for_itself_is_the_host_asked() -> None:
    # One node alone, or a node without cluster-announce-hostname: "" (NULL with RESP3).
    reply = parsed(
        b"*2\r\n"
        b"*3\r\n:0\r\n:99\r\n*3\r\n$0\r\n\r\n:7000\r\n$1\r\na\r\n"
        b"*3\r\n:100\r\n:16383\r\n*3\r\n$-1\r\n:7001\r\n$1\r\nb\r\n"
    )
    slots = SlotMap.parse(reply, ASKED)
    assert (slots.owners[0], slots.owners[100]) == (("10.0.0.9", 7000), ("10.0.0.9", 7001))


def test_an_unknown_endpoint_and_an_unserved_slot_have_no_owner() -> None:
    reply = parsed(b"*1\r\n*3\r\n:0\r\n:10\r\n*3\r\n$1\r\n?\r\n:7000\r\n$1\r\na\r\n")
    slots = SlotMap.parse(reply, ASKED)
    assert slots.owners[0] is None and slots.owners[11] is None and slots.primaries() == []
    assert SlotMap.empty().owners == (None,) * SLOTS


@pytest.mark.parametrize(
    "reply",
    [
        b"-ERR This instance has cluster support disabled\r\n",
        b"$2\r\nno\r\n",
        b"*1\r\n:5\r\n",
        b"*1\r\n*2\r\n:0\r\n:10\r\n",  # no primary
        b"*1\r\n*3\r\n:10\r\n:0\r\n*2\r\n$1\r\nh\r\n:1\r\n",  # end before start
        b"*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",  # past the last slot
        b"*1\r\n*3\r\n:-1\r\n:3\r\n*2\r\n$1\r\nh\r\n:1\r\n",
        b"*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n:0\r\n",  # port 0
        b"*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n:65536\r\n",
        b"*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n$4\r\n7000\r\n",  # port as a string
        b"*1\r\n*3\r\n:0\r\n:3\r\n*1\r\n$1\r\nh\r\n",  # no port
        b"*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n:5\r\n:7000\r\n",  # host as a number
        b"*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$2\r\n\xc3\xa9\r\n:7000\r\n",  # host not ASCII
    ],
)
def test_a_malformed_slot_map_is_refused(reply: bytes) -> None:
    with pytest.raises(ValueError):
        SlotMap.parse(parsed(reply), ASKED)


@pytest.mark.parametrize(
    ("error", "decision"),
    [
        ("MOVED 3999 127.0.0.1:6381", Decision(Step.MOVED, ("127.0.0.1", 6381))),
        ("ASK 3999 127.0.0.1:6381", Decision(Step.ASK, ("127.0.0.1", 6381))),
        ("MOVED 3999 :6381", Decision(Step.MOVED, ("10.0.0.9", 6381))),  # the host that answered
        ("MOVED 0 redis-2.internal:7000", Decision(Step.MOVED, ("redis-2.internal", 7000))),
        ("ASK 16383 fd00::5:7000", Decision(Step.ASK, ("fd00::5", 7000))),
        ("NOSCRIPT No matching script. Please use EVAL.", Decision(Step.LOAD_SCRIPT)),
        ("TRYAGAIN Multiple keys request during rehashing of slot", Decision(Step.TRY_AGAIN)),
        ("CLUSTERDOWN The cluster is down", Decision(Step.UNAVAILABLE)),
        ("CLUSTERDOWN Hash slot not served", Decision(Step.UNAVAILABLE)),
        ("LOADING Redis is loading the dataset in memory", Decision(Step.UNAVAILABLE)),
        ("MASTERDOWN Link with MASTER is down", Decision(Step.UNAVAILABLE)),
        ("ERR Error running script (call to f_1234): @user_script:1: oops", Decision(Step.FAIL)),
        ("WRONGPASS invalid username-password pair", Decision(Step.FAIL)),
        ("MOVED", Decision(Step.FAIL)),  # malformed redirections are errors, not addresses
        ("MOVED 3999", Decision(Step.FAIL)),
        ("MOVED x 127.0.0.1:6381", Decision(Step.FAIL)),
        ("MOVED 16384 127.0.0.1:6381", Decision(Step.FAIL)),
        ("ASK 1 127.0.0.1:0", Decision(Step.FAIL)),
        ("ASK 1 127.0.0.1:70000", Decision(Step.FAIL)),
        ("ASK 1 127.0.0.1", Decision(Step.FAIL)),
        ("ASK 1 127.0.0.1:-5", Decision(Step.FAIL)),
        ("", Decision(Step.FAIL)),
    ],
)
def test_what_each_answer_calls_for(error: str, decision: Decision) -> None:
    assert decide(error, ASKED) == decision


def test_a_pipe_needs_a_node_to_start_from() -> None:
    with pytest.raises(ValueError):
        ClusterPipe([])
