"""The outbox relay: claims due events, delivers them to HTTP subscribers, settles them."""
