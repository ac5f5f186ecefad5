"""Webhook Connect, cloud side: channels buffered in Redis Streams, streamed to connectors."""
