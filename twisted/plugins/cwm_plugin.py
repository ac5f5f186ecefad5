"""twistd plugins of cwm: tiny shims, nothing heavy imported here."""

from twisted.application.service import ServiceMaker

cwm_receiver = ServiceMaker(
    "cwm",
    "cwm.service",
    "Webhook receiver and router (Klein on the reactor).",
    "cwm",
)

cwm_connector = ServiceMaker(
    "cwm-connector",
    "cwm.connector.service",
    "Webhook Connect local connector: pulls a channel from a cloud cwm and delivers locally.",
    "cwm-connector",
)
