"""The app's own backend in the loop: the call-control hook asked before a call rings,
and signed call-event webhooks delivered at least once from a Redis outbox
(docs/webhooks.md)."""
