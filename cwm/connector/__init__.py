"""Webhook Connect, local side: the connector that pulls a channel and delivers locally."""
