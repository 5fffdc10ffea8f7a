"""R-R9 micro-benchmark: route choice must not slow down as exact-address routes grow.

Builds one connector with 10, 1,000 and 100,000 exact-address routes, a
wildcard band of 5 routes and a fallback on the primary address, then times
``choose_routes`` (timeit, best of 5) for a message to
  (a) an address that has its own route, and
  (b) the primary address, which has none: the band is tried, then the fallback.
The issue's target: 100,000 routes within 2x of 10 routes.

    .venv/bin/python bench/routes.py
"""
from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.model import Connector, Route, RouteRules  # noqa: E402
from gateway.directory.routing import RouteIndex, RoutingFacts, choose_routes  # noqa: E402

PRIMARY = "support@example.test"
SIZES = (10, 1_000, 100_000)
BAND = 5
REPEAT = 5
TARGET_RATIO = 2.0


def directory(size: int) -> tuple[Connector, RouteIndex]:
    aliases = tuple(f"desk{i}@example.test" for i in range(size))
    connector = Connector(name="support", service="lmtp", primary_address=PRIMARY,
                          aliases=aliases)
    routes = [Route(id=i, name=f"desk {i}", connector="support", email_address=address,
                    order=i) for i, address in enumerate(aliases)]
    routes += [Route(id=size + i, name=f"vendor {i}", connector="support", email_address="*",
                     order=size + i,
                     rules=RouteRules(sender_list_includes=f"*@vendor{i}.test"))
               for i in range(BAND)]
    routes.append(Route(id=size + BAND, name="fallback", connector="support",
                        email_address=PRIMARY, order=size + BAND, fallback=True))
    return connector, RouteIndex(routes)


def per_message_us(connector: Connector, index: RouteIndex, visible: list[str],
                   facts: RoutingFacts, expect: str) -> float:
    result = choose_routes(index, connector, visible, facts)
    assert [r.name for _, r in result.winners] == [expect], result
    timer = timeit.Timer(lambda: choose_routes(index, connector, visible, facts))
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=REPEAT, number=number)) / number * 1e6


def main() -> int:
    facts = RoutingFacts(subject="printer on fire", sender="alice@customer.test",
                         recipients=[PRIMARY, "desk7@example.test"])
    rows = []
    for size in SIZES:
        connector, index = directory(size)
        own = per_message_us(connector, index, ["desk7@example.test"], facts, "desk 7")
        fallback = per_message_us(connector, index, [PRIMARY], facts, "fallback")
        rows.append((size, own, fallback))
    print(f"choose_routes, one connector, wildcard band {BAND}, best of {REPEAT} (µs/message)")
    print(f"{'exact routes':>12} {'(a) own route':>14} {'(b) fallback':>13}")
    for size, own, fallback in rows:
        print(f"{size:>12,} {own:>14.2f} {fallback:>13.2f}")
    (_, own_small, fb_small), (_, own_big, fb_big) = rows[0], rows[-1]
    ratios = own_big / own_small, fb_big / fb_small
    met = max(ratios) <= TARGET_RATIO
    print(f"ratio {SIZES[-1]:,} vs {SIZES[0]}: (a) {ratios[0]:.2f}x  (b) {ratios[1]:.2f}x"
          f"  (target <= {TARGET_RATIO:.0f}x: {'met' if met else 'MISSED'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
