"""The shipped Prometheus rules and Grafana dashboard (SPEC §5.5, §7) against mailgate's
real metrics: promtool's own unit tests of the alerts, every metric they name exported,
and a real Prometheus scraping a running gateway and evaluating every rule."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import free_port
from tests.prometheus import ALERT_RULES, REPO, PrometheusInstance
from tests.wire import WireClient, message

DASHBOARD = REPO / "conf" / "grafana" / "mailgate-dashboard.json"
ALERT_TESTS = REPO / "conf" / "prometheus" / "mailgate-alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install prometheus; scripts/test "
                    "does it)", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          cwd=ALERT_RULES.parent)


def test_the_alert_rules_load_and_pass_their_unit_tests():
    checked = promtool("check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def referenced_metrics() -> set[str]:
    """Metric names the alert rules and the dashboard's queries use."""
    exprs = [ALERT_RULES.read_text()]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    exprs.append(json.dumps(json.loads(DASHBOARD.read_text())["templating"]))
    return set(re.findall(r"\bmailgate_[a-z_]+", "\n".join(exprs)))


def exported_families(gateway) -> set[str]:
    text = gateway.metrics.exposition().decode()
    return set(re.findall(r"^# TYPE (\S+)", text, re.M))


def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(gateway):
    families = exported_families(gateway)
    def known(name: str) -> bool:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        return name in families or base in families
    used = referenced_metrics()
    assert len(used) >= 15
    assert sorted(n for n in used if not known(n)) == []


async def test_a_real_prometheus_scrapes_the_gateway_and_evaluates_every_rule(gateway):
    await gateway.pipeline.stop()                    # one copy waits in the journal
    client = await WireClient.connect(gateway.listeners["lmtp"].port)
    await client.command("LHLO test")
    await client.transaction("alice@customer.test", ["support@example.test"],
                             message(message_id="<prom@customer.test>"))
    await client.close()

    def run() -> tuple[list, float]:
        with PrometheusInstance(f"127.0.0.1:{gateway.http_port}", free_port()) as prom:
            prom.wait_for(lambda: [t for t in prom.api("targets")["activeTargets"]
                                   if t["health"] == "up"], "the gateway's target to be up")

            def all_rules_evaluated():
                rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
                return rules if all(r.get("lastEvaluation", "").startswith("2")
                                    and r.get("evaluationTime", 0) > 0 for r in rules) else None
            rules = prom.wait_for(all_rules_evaluated, "every rule to be evaluated")
            [waiting] = prom.wait_for(lambda: prom.api(
                "query", query='mailgate_queue_messages{job="mailgate",queue="journal"}')
                ["result"], "the journal queue's series")
            return rules, float(waiting["value"][1])

    rules, waiting = await asyncio.to_thread(run)
    assert len(rules) == 12                          # MailgateIntakeThrottled too
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert waiting == 1.0
