"""``twistd -n cwm-connector`` against real processes: a cloud cwm with Webhook Connect on a
real redis-server, local cwm targets (or a scripted HTTP target), scenario 02 and the faults."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.connector_env import (
    PROTOCOLS,
    ConnectorProcess,
    Processes,
    channel_stats,
    connector_env,
    dead_letters,
    hook,
    procs,  # noqa: F401  (fixture)
    send,
    settled_stats,
    until,
)
from tests.integration.cwm_process import TWISTD

pytestmark = pytest.mark.integration

CHANNEL, TOKEN = "test-channel", "channel_secret_token_123"
CLOUD_HOOKS = {"cloud-webhook": hook(CHANNEL, TOKEN, ttl_seconds=3600, max_queue_size=10000, max_connections=10)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scenario_02_basic(procs: Processes, protocol: str) -> None:
    """1 webhook registers the channel, the connector starts, 9 more: 10/10 delivered, once each."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    local = procs.local()
    send(cloud, "cloud-webhook", [1])
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol,
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver"))
    connector.wait_connected()
    assert connector.count(f"over {protocol} ") == 1  # CONNECTOR_PROTOCOL is obeyed (upstream's CLI default won)
    send(cloud, "cloud-webhook", range(2, 11))
    connector.wait_delivered(10)
    local.wait_accepted(10)
    assert local.sequences() == list(range(1, 11))
    stats = settled_stats(cloud, CHANNEL, 10)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (10, 0, 0)
    assert connector.counters()["delivered"] == 10


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scenario_02_resilience(procs: Processes, protocol: str) -> None:
    """10 sent while the local side and the connector are down: all 10 delivered once they start."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send(cloud, "cloud-webhook", range(1, 11))
    assert channel_stats(cloud, CHANNEL)["messages_queued"] == 10
    local = procs.local()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol,
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver"))
    connector.wait_delivered(10)
    local.wait_accepted(10)
    assert local.sequences() == list(range(1, 11))
    assert channel_stats(cloud, CHANNEL)["messages_queued"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_github_signed_webhook_passes_the_local_cwm_hmac_check(procs: Processes, protocol: str) -> None:
    secret = "gh-webhook-secret"
    cloud = procs.cloud.start({"github": hook(CHANNEL, TOKEN)})
    local = procs.local(ids=(), extra={"github-local": {
        "data_type": "json", "module": "save_to_disk", "module-config": {"path": "logs/github-local"},
        "hmac": {"secret": secret, "provider": "github"},
    }})
    # Spacing and key order a re-serialisation would not keep: only the exact bytes verify.
    body = b'{ "zen": "Keep it logically awesome.",\n  "hook_id": 42, "sequence": 1 }'
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    status, answer, _ = cloud.request("POST", "/webhook/github", body, {
        "Content-Type": "application/json", "X-Hub-Signature-256": signature, "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    })
    assert status == 200, answer
    # The wrong signature is refused by the local cwm: its check is really applied.
    status, _, _ = local.process.request("POST", "/webhook/github-local", body, {
        "Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert status == 401
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol,
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/github-local"))
    connector.wait_delivered(1)
    local.wait_accepted(1, "github-local")
    saved = local.saved("github-local")
    assert saved == [json.loads(body)]


def test_kill_9_of_the_connector_mid_stream_loses_nothing(procs: Processes) -> None:
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, ack_timeout_seconds=2)})
    target = procs.target()
    env = connector_env(cloud, CHANNEL, TOKEN, "websocket", CONNECTOR_TARGET_URL=f"{target.url}/hook")
    first = procs.connector(env, "first")
    first.wait_connected()
    send(cloud, "cloud-webhook", range(1, 6))
    target.wait_seen(5)
    first.wait_delivered(5)
    target.hold()  # the next ones reach the target and hang there
    send(cloud, "cloud-webhook", range(6, 21))
    target.wait_waiting(10)  # 10 deliveries at once (max_concurrent_requests), 5 queued in the connector
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    target.release()
    second = procs.connector(env, "second")
    second.wait_delivered(15)
    bodies = [json.loads(seen.body)["sequence"] for seen in target.seen]
    assert sorted(set(bodies)) == list(range(1, 21))  # nothing lost
    # At least once: only what was at the target when the connector died came twice.
    assert len(bodies) - 20 <= 10
    stats = settled_stats(cloud, CHANNEL, 20)
    assert (stats["messages_queued"], stats["messages_in_flight"]) == (0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_cloud_restarted_mid_stream_loses_nothing(procs: Processes, protocol: str) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS, name="cloud-a")
    local = procs.local()
    send(cloud, "cloud-webhook", range(1, 6))
    env = connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver")
    connector = procs.connector(env)
    connector.wait_delivered(5)
    port = cloud.port
    cloud.stop()
    connector.wait_count(r"disconnected from the cloud", 1)
    assert connector.health() == 503
    # While the cloud is down nothing can arrive; once it is back (same Redis) the
    # connector reconnects by itself and gets what was posted after the restart.
    restarted = procs.cloud.start(CLOUD_HOOKS, name="cloud-b", args=("--listen", f"tcp:{port}:interface=127.0.0.1"))
    assert restarted.port == port
    connector.wait_connected(2)
    send(restarted, "cloud-webhook", range(6, 11))
    connector.wait_delivered(10)
    local.wait_accepted(10)
    assert local.sequences() == list(range(1, 11))
    assert connector.counters()["reconnects"] >= 1
    assert connector.health() == 200


def test_a_target_answering_500_then_200_gets_the_message_once_it_recovers(procs: Processes, tmp_path: Path) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    target = procs.target(script=[500, 500, 500, 503], then=200)
    config = tmp_path / "connector.json"
    config.write_text(json.dumps({
        "default_target": {"url": f"{target.url}/hook", "retry_max_attempts": 3, "retry_delay_seconds": 0.05},
    }))
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "sse"), args=["--config", str(config)])
    connector.wait_connected()
    send(cloud, "cloud-webhook", [1])
    connector.wait_delivered(1)
    # Three attempts, a nack with retry, then the cloud's redelivery: 503, 200.
    assert len(target.seen) == 5
    assert [s.headers["x-webhook-attempt"] for s in target.seen] == ["1", "2", "3", "1", "2"]
    assert {s.headers["x-webhook-message-id"] for s in target.seen} == {target.seen[0].headers["x-webhook-message-id"]}
    counters = connector.counters()
    assert (counters["nacked"], counters["delivered"], counters["dead_lettered"]) == (1, 1, 0)
    stats = settled_stats(cloud, CHANNEL, 1)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_dead_lettered"]) == (1, 0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_target_answering_400_sends_the_message_to_the_dead_letters(procs: Processes, protocol: str) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    target = procs.target(then=400)
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{target.url}/x"))
    connector.wait_connected()
    send(cloud, "cloud-webhook", [7])
    connector.wait_count(r": dead_lettered \(target answered 400\)$", 1)
    assert len(target.seen) == 1  # a 4xx is not retried
    until(lambda: len(dead_letters(cloud, CHANNEL)) == 1)
    letters = dead_letters(cloud, CHANNEL)
    assert letters[0]["payload"]["sequence"] == 7
    assert "400" in json.dumps(letters[0])


def test_a_message_redelivered_while_its_delivery_runs_is_not_delivered_twice(procs: Processes) -> None:
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, ack_timeout_seconds=1)})
    target = procs.target()
    target.hold()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "websocket",
                                              CONNECTOR_TARGET_URL=f"{target.url}/x",
                                              CONNECTOR_TARGET_TIMEOUT="60"))
    connector.wait_connected()
    send(cloud, "cloud-webhook", [1])
    target.wait_waiting(1)
    # The cloud's ack timeout (1 s) passes: it hands the message out again.
    connector.wait_count(r"redelivered while its delivery is under way", 1)
    target.release()
    connector.wait_delivered(1)
    assert len(target.seen) == 1
    assert connector.counters()["duplicates"] >= 1
    stats = settled_stats(cloud, CHANNEL, 1)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (1, 0, 0)
    assert connector.count(r": delivered$") == 1
    # Every duplicate the connector counted is one it logged. The cloud has the ack now, so no more
    # redeliveries come; wait (bounded) only for the log lines to be read from the pipe. A redelivery
    # that crossed the ack on the wire is logged as "after its delivery ended" and counted too.
    during = r"redelivered while its delivery is under way"
    after = r"redelivered after its delivery ended"
    until(lambda: connector.counters()["duplicates"] == connector.count(during) + connector.count(after),
          why=lambda: f"{connector.counters()} vs {connector.count(during)} + {connector.count(after)} lines")
    assert connector.count(during) >= 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_lets_running_deliveries_finish_and_acks_them(procs: Processes, protocol: str) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    target = procs.target()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{target.url}/x"))
    connector.wait_connected()
    target.hold()
    send(cloud, "cloud-webhook", [1, 2])
    target.wait_waiting(2)
    connector.process.send_signal(signal.SIGTERM)
    connector.wait_count(r"stopping: 2 deliveries to finish", 1)
    target.release()
    assert connector.process.wait(20) == -signal.SIGTERM  # twistd ends with the signal, after a clean stop
    connector.wait_for(r"Server Shut Down")
    assert connector.count(r": delivered$") == 2
    stats = settled_stats(cloud, CHANNEL, 2)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (2, 0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_nacks_what_does_not_finish_within_the_drain_timeout(procs: Processes, protocol: str) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    target = procs.target()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{target.url}/x",
                                              CONNECTOR_DRAIN_TIMEOUT="0.5", CONNECTOR_MAX_CONCURRENT_REQUESTS="1"))
    connector.wait_connected()
    target.hold()
    send(cloud, "cloud-webhook", [1, 2])
    target.wait_waiting(1)
    connector.process.send_signal(signal.SIGTERM)
    assert connector.process.wait(20) == -signal.SIGTERM  # twistd ends with the signal, after a clean stop
    connector.wait_for(r"Server Shut Down")
    # Only the held one: the connector asks for no more than it runs at once, so the
    # second message never left the cloud.
    assert connector.count(r": requeued \(connector stopping\)$") == 1
    stats = channel_stats(cloud, CHANNEL)
    assert (stats["messages_queued"], stats["messages_in_flight"]) == (2, 0)
    assert stats["messages_delivered"] == 0


@pytest.mark.parametrize("protocol", ("websocket", "sse"))
def test_a_silent_stream_is_closed_and_reopened(procs: Processes, protocol: str) -> None:
    # The cloud's heartbeats come every 30 s; the connector gives up on silence after 1 s.
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, heartbeat_interval_seconds=30)})
    local = procs.local()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_HEARTBEAT_TIMEOUT="1",
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver"))
    connector.wait_count(r"no data from the cloud for 1s", 2)
    connector.wait_connected(3)
    assert connector.counters()["reconnects"] >= 2
    send(cloud, "cloud-webhook", [1])
    connector.wait_delivered(1)


def test_heartbeats_keep_a_stream_open(procs: Processes) -> None:
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, heartbeat_interval_seconds=1)})
    target = procs.target()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "sse", CONNECTOR_HEARTBEAT_TIMEOUT="3",
                                              CONNECTOR_TARGET_URL=f"{target.url}/x"))
    connector.wait_connected()
    # No message yet: only heartbeats (every 1 s) reset the 3 s silence watchdog. Wait until the
    # stream has been up for well over the heartbeat timeout on heartbeats alone.
    _, body = connector.status()
    since = body["link"]["connected_since"]
    assert since is not None

    def up_long_enough() -> bool:
        _, body = connector.status()
        assert body["link"]["connected_since"] == since, body["link"]  # the stream was never re-opened
        return time.time() - since > 4.5

    until(up_long_enough, timeout=20, why=lambda: "\n".join(connector.lines[-20:]))
    assert connector.count(r"no data from the cloud") == 0
    assert connector.counters()["reconnects"] == 0
    assert connector.count(r"connected to the cloud over") == 1
    assert channel_stats(cloud, CHANNEL)["messages_delivered"] == 0  # no message reset the watchdog
    # A message sent after the heartbeats is delivered over the same stream.
    for n in range(1, 6):
        send(cloud, "cloud-webhook", [n])
        target.wait_seen(n)
    assert connector.count(r"no data from the cloud") == 0
    assert connector.counters()["reconnects"] == 0


def test_the_status_page_and_a_wrong_token(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    connector = procs.connector(connector_env(cloud, CHANNEL, "wrong-token", "sse",
                                              CONNECTOR_TARGET_URL="http://127.0.0.1:9/x"))
    connector.wait_count(r"the cloud refused the stream: cloud answered 401: Invalid channel token", 1)
    assert connector.health() == 503
    status, body = connector.status()
    assert status == 200
    assert body["link"]["connected"] is False
    assert "401" in body["link"]["last_error"]
    assert "wrong-token" not in json.dumps(body)
    assert body["delivery"]["mode"] == "http"


def test_the_status_page_when_connected(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    local = procs.local()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "websocket",
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver"))
    connector.wait_connected()
    send(cloud, "cloud-webhook", [1, 2])
    connector.wait_delivered(2)
    status, body = connector.status()
    assert connector.health() == 200
    assert body["status"] == "connected"
    assert body["link"]["protocol"] == "websocket"
    assert body["link"]["connection_id"].startswith("wsc_")
    assert body["counters"]["received"] == 2
    assert body["counters"]["delivered"] == 2
    assert TOKEN not in json.dumps(body)


def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "cwm-connector"],
        env={"CONNECTOR_CLOUD_URL": "http://127.0.0.1:1", "CONNECTOR_CHANNEL": "c", "CONNECTOR_TOKEN": "t",
             "CONNECTOR_PROTOCOL": "carrier-pigeon", "CONNECTOR_TARGET_URL": "http://127.0.0.1:2/x"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("cwm-connector: invalid CONNECTOR_PROTOCOL='carrier-pigeon'")


def test_an_explicit_option_wins_over_the_environment(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "websocket", CONNECTOR_TARGET_URL="http://127.0.0.1:9/x"),
                                args=["--protocol", "long_poll"])
    assert isinstance(connector, ConnectorProcess)
    connector.wait_connected()
    assert connector.count(r"over long_poll ") == 1


def test_sse_resumes_with_last_event_id_and_acks_on_the_new_stream(procs: Processes) -> None:
    # Silence after 1 s closes the stream while a delivery is held at the target.
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, heartbeat_interval_seconds=30)})
    target = procs.target()
    target.hold()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, "sse", CONNECTOR_HEARTBEAT_TIMEOUT="1",
                                              CONNECTOR_TARGET_URL=f"{target.url}/x"))
    connector.wait_connected()
    send(cloud, "cloud-webhook", [1, 2])
    target.wait_waiting(2)
    connector.wait_count(r"no data from the cloud for 1s", 1)
    # The new stream takes over both messages: they are not sent again, nor given back.
    cloud.wait_for(r"resumed sse_\S+ after \S+: 2 in flight, 0 sent again")
    connector.wait_connected(2)
    target.release()
    connector.wait_delivered(2)
    stats = settled_stats(cloud, CHANNEL, 2)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (2, 0, 0)
    assert len(target.seen) == 2
    counters = connector.counters()
    assert (counters["report_failures"], counters["duplicates"]) == (0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_cloud_over_tls_with_a_private_ca(procs: Processes, tmp_path: Path, protocol: str) -> None:
    from tests.integration.etcd_server import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    listen = f"ssl:0:interface=127.0.0.1:privateKey={tls.server_key}:certKey={tls.server_cert}"
    cloud = procs.cloud.start(CLOUD_HOOKS, args=("--listen", listen))
    local = procs.local()
    env = connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver",
                        CONNECTOR_CLOUD_URL=f"https://127.0.0.1:{cloud.port}")
    # The system roots do not know this CA: refused, and said why.
    untrusting = procs.connector(env, "untrusting")
    untrusting.wait_count(r"disconnected from the cloud: .*(certificate|SSL|TLS)", 1)
    assert untrusting.health() == 503
    untrusting.stop()
    trusting = procs.connector({**env, "CONNECTOR_CA_CERT_PATH": tls.ca_cert}, "trusting")
    trusting.wait_connected()
    send_tls = [1, 2, 3]
    for n in send_tls:
        status = _post_tls(cloud.port, tls.ca_cert, {"event": "test_event", "sequence": n})
        assert status == 200
    trusting.wait_delivered(3)
    local.wait_accepted(3)
    assert local.sequences() == [1, 2, 3]


def _post_tls(port: int, ca_cert: str, document: object) -> int:
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=ca_cert)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("POST", "/webhook/cloud-webhook", json.dumps(document), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_connector_holds_no_more_than_it_runs_at_once(procs: Processes, protocol: str) -> None:
    # The channel allows 100 in flight per connection; the connector runs 2 at once and asks for 2.
    cloud = procs.cloud.start({"cloud-webhook": hook(CHANNEL, TOKEN, max_in_flight=100)})
    target = procs.target()
    target.hold()
    connector = procs.connector(connector_env(cloud, CHANNEL, TOKEN, protocol, CONNECTOR_TARGET_URL=f"{target.url}/x",
                                              CONNECTOR_MAX_CONCURRENT_REQUESTS="2"))
    connector.wait_connected()
    send(cloud, "cloud-webhook", range(1, 6))
    target.wait_waiting(2)
    stats = channel_stats(cloud, CHANNEL)
    assert (stats["messages_in_flight"], stats["messages_queued"]) == (2, 3)
    target.release()
    connector.wait_delivered(5)
    assert sorted(json.loads(s.body)["sequence"] for s in target.seen) == [1, 2, 3, 4, 5]


def test_the_cloud_refuses_a_bad_max_in_flight(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    status, body, _ = cloud.request("GET", f"/connect/stream/{CHANNEL}/sse?max_in_flight=0",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert (status, body) == (422, {"detail": "max_in_flight: expected a whole number from 1 to 100000"})
