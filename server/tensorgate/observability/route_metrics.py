"""Per route and variant metrics, read at scrape time from the routing counters.

``variant`` is the target as ``model:version`` (``model:default`` for a target that
follows the model's default version), so an A/B test is analysed by
``sum by (route, variant)``; the per-version families (metrics.py) carry the model and
version that actually served.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tensorgate.observability.metrics import histogram_buckets


class RouteCollector:
    def __init__(self, routes) -> None:
        self._routes = routes  # a routing.manager.RouteManager

    def collect(self):
        labels = ["route", "variant"]
        requests = CounterMetricFamily(
            "tensorgate_route_requests", "Inference requests a route sent to a variant",
            labels=labels)
        failures = CounterMetricFamily(
            "tensorgate_route_failures", "Failed requests by route and variant", labels=labels)
        latency = HistogramMetricFamily(
            "tensorgate_route_request_duration_seconds",
            "Request latency inside the server by route and variant, seconds", labels=labels)
        for (route, variant), s in self._routes.variant_stats():
            requests.add_metric([route, variant], s.requests)
            failures.add_metric([route, variant], s.failures)
            buckets, total = histogram_buckets(s.latency, 1e-9)
            latency.add_metric([route, variant], buckets, total)
        yield requests
        yield failures
        yield latency
        shadow = CounterMetricFamily(
            "tensorgate_shadow_requests",
            "Mirrored requests by outcome (ok, failed, skipped: too many in flight)",
            labels=labels + ["outcome"])
        compared = CounterMetricFamily(
            "tensorgate_shadow_compared", "Shadow answers compared with the primary's",
            labels=labels + ["result"])
        top1 = CounterMetricFamily(
            "tensorgate_shadow_top1_rows",
            "Rows of classifier-like outputs compared (result: agree, disagree)",
            labels=labels + ["result"])
        worst = GaugeMetricFamily(
            "tensorgate_shadow_max_abs_diff", "Largest absolute difference seen", labels=labels)
        diff = HistogramMetricFamily(
            "tensorgate_shadow_abs_diff", "Max absolute difference per mirrored request",
            labels=labels)
        shadow_latency = HistogramMetricFamily(
            "tensorgate_shadow_duration_seconds", "Shadow candidate latency, seconds",
            labels=labels)
        for (route, variant), s in self._routes.shadow_stats():
            lv = [route, variant]
            ok = s.sent - s.failed
            shadow.add_metric(lv + ["ok"], max(ok, 0))
            shadow.add_metric(lv + ["failed"], s.failed)
            shadow.add_metric(lv + ["skipped"], s.skipped)
            compared.add_metric(lv + ["exact"], s.exact)
            compared.add_metric(lv + ["agree"], s.agree)
            compared.add_metric(lv + ["disagree"], s.compared - s.agree)
            top1.add_metric(lv + ["agree"], s.top1_agree)
            top1.add_metric(lv + ["disagree"], s.top1_rows - s.top1_agree)
            worst.add_metric(lv, s.max_abs_diff)
            buckets, total = histogram_buckets(s.diff_hist, 1)
            diff.add_metric(lv, buckets, total if total == total else 0.0)
            buckets, total = histogram_buckets(s.latency, 1e-9)
            shadow_latency.add_metric(lv, buckets, total)
        yield from (shadow, compared, top1, worst, diff, shadow_latency)
