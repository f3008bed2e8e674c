from tests.sipcalls.conftest import sip_node  # noqa: F401  (the fixture, for these tests too)
