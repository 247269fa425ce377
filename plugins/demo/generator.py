"""Deterministic demo data: behaviour events of a synthetic outdoor-gear shop.

``generate(people, seed=..., days=..., end=...)`` yields canonical segflow event
dicts (see ``core.ingestion.Event``). Everything comes from one ``random.Random``
seeded with ``seed``, consumed in a fixed order, so the same arguments always
give the same sequence of dicts -- including ``message_id``s, so re-ingesting a
demo run is a no-op thanks to de-duplication.

Shape of the simulated world, chosen so segmentation has something to find:

- per-person activity is lognormal (a few heavy users, a long tail of
  one-visit people), each person favours one or two categories;
- sessions follow a weekday x local-hour profile with a Sunday/Monday evening
  peak and quiet nights in the person's own timezone;
- a session is a browse path (page/product views, searches, engagement
  signals) with a cart that persists between sessions, so abandonment is
  common and "cart-reminder" emails bring some people back to buy;
- a weekly newsletter goes to identified people who accept marketing, with
  open/click rates per person, and clicks start a session tagged with the
  campaign; one in ten of them is held out of each newsletter at random
  (``campaign_assigned`` events record every arm), so campaign results have
  a holdout to measure the newsletter's lift against;
- ~30% of people browse anonymously first and identify later (at sign-up or
  at checkout); ~15% extra anonymous visitors never identify.

Events are yielded person by person; each person's events are in time order.
Pure standard library and fast enough for ~10^6 events in a few seconds.
"""

from __future__ import annotations

import heapq
import math
import random
import zlib
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import accumulate
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["CATEGORIES", "Product", "catalogue", "generate"]

CATEGORIES: tuple[str, ...] = (
    "tents",
    "sleeping_bags",
    "backpacks",
    "footwear",
    "jackets",
    "climbing",
    "cooking",
    "navigation",
    "headlamps",
    "socks",
)

BASE_URL = "https://shop.example.com"
CURRENCY = "USD"
PRODUCTS_PER_CATEGORY = 20


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    category: str
    price: float


# Price bands per product kind rather than per category: a carabiner and a rope
# are both "climbing" but a $240 carabiner would look fake in a demo.
_KINDS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "tents": (
        ("Ultralight 1P Tent", 180, 450),
        ("2P Backpacking Tent", 150, 520),
        ("3P Dome Tent", 160, 420),
        ("4-Season Expedition Tent", 380, 600),
        ("Family Cabin Tent", 220, 560),
        ("Trekking Pole Shelter", 120, 380),
    ),
    "sleeping_bags": (
        ("Down Sleeping Bag -5C", 220, 450),
        ("Synthetic Sleeping Bag 0C", 80, 200),
        ("Summer Sleeping Bag 10C", 60, 140),
        ("Winter Mummy Bag -15C", 280, 450),
        ("Down Quilt 5C", 180, 380),
    ),
    "backpacks": (
        ("28L Daypack", 45, 140),
        ("35L Alpine Pack", 110, 220),
        ("45L Trekking Pack", 140, 260),
        ("65L Expedition Pack", 200, 320),
        ("12L Running Vest", 60, 160),
    ),
    "footwear": (
        ("Hiking Boot", 130, 240),
        ("Mid GTX Boot", 150, 260),
        ("Trail Runner", 100, 180),
        ("Approach Shoe", 110, 190),
        ("Camp Sandal", 80, 120),
    ),
    "jackets": (
        ("Hardshell Jacket", 180, 480),
        ("Down Jacket", 160, 420),
        ("Softshell Jacket", 110, 240),
        ("Fleece Hoodie", 60, 140),
        ("Rain Jacket", 90, 220),
    ),
    "climbing": (
        ("Dynamic Rope 9.8mm", 150, 260),
        ("Harness", 55, 130),
        ("Locking Carabiner", 12, 30),
        ("Quickdraw Set", 90, 180),
        ("Climbing Helmet", 55, 140),
        ("Belay Device", 25, 60),
        ("Climbing Shoe", 90, 190),
        ("Chalk Bag", 15, 40),
    ),
    "cooking": (
        ("Canister Stove", 40, 130),
        ("Titanium Pot 750ml", 35, 70),
        ("Nesting Cook Set", 45, 160),
        ("Titanium Spork", 8, 15),
        ("Water Filter", 25, 120),
        ("Insulated Mug", 20, 40),
    ),
    "navigation": (
        ("Baseplate Compass", 15, 60),
        ("Handheld GPS", 180, 450),
        ("GPS Watch", 200, 450),
        ("Satellite Messenger", 250, 400),
        ("Waterproof Map Case", 15, 35),
    ),
    "headlamps": (
        ("Headlamp 400lm", 30, 60),
        ("Rechargeable Headlamp 600lm", 45, 90),
        ("Camp Lantern", 25, 70),
        ("Running Headlamp", 35, 80),
        ("Backup Headlamp 200lm", 20, 35),
    ),
    "socks": (
        ("Merino Hiking Sock", 18, 25),
        ("Liner Sock", 10, 15),
        ("Crew Sock 2-Pack", 16, 25),
        ("Ski Sock", 20, 25),
        ("Trail Running Sock", 14, 22),
    ),
}
_BRANDS = (
    "Northpeak",
    "Ridgeline",
    "Alpenglow",
    "Trailcraft",
    "Cairn",
    "Timberline",
    "Basecamp",
    "Kestrel",
    "Scree",
    "Fjellwood",
)
_MODELS = (
    "Pro",
    "Lite",
    "UL",
    "Trek",
    "Storm",
    "Aero",
    "Venture",
    "Flux",
    "Ascent",
    "Tundra",
    "Ember",
    "Summit",
)

# How often each category is browsed; footwear and jackets sell to everyone,
# navigation gadgets to a niche.
_CATEGORY_WEIGHT: dict[str, float] = {
    "tents": 1.0,
    "sleeping_bags": 0.8,
    "backpacks": 1.1,
    "footwear": 1.6,
    "jackets": 1.5,
    "climbing": 0.7,
    "cooking": 0.8,
    "navigation": 0.4,
    "headlamps": 0.6,
    "socks": 1.0,
}
_SEARCHES: dict[str, tuple[str, ...]] = {
    "tents": ("2 person tent", "ultralight tent", "backpacking tent", "family tent"),
    "sleeping_bags": ("down sleeping bag", "sleeping bag", "winter sleeping bag", "quilt"),
    "backpacks": ("daypack", "hiking backpack", "65l pack", "running vest"),
    "footwear": ("hiking boots", "trail running shoes", "waterproof boots", "sandals"),
    "jackets": ("rain jacket", "down jacket", "gore-tex", "fleece"),
    "climbing": ("harness", "climbing rope", "carabiner", "climbing shoes"),
    "cooking": ("stove", "water filter", "titanium pot", "cook set"),
    "navigation": ("compass", "gps", "gps watch", "satellite messenger"),
    "headlamps": ("headlamp", "rechargeable headlamp", "lantern"),
    "socks": ("merino socks", "hiking socks", "liner socks", "ski socks"),
}

_FIRST_NAMES = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Oliver", "Sophia", "Elijah", "Isabella",
    "James", "Mia", "Lucas", "Amelia", "Mason", "Harper", "Ethan", "Evelyn", "Logan",
    "Abigail", "Jacob", "Ella", "Henry", "Grace", "Jack", "Chloe", "Leo", "Freya",
    "Oscar", "Hannah", "Felix", "Ingrid", "Lars", "Sofie", "Mateo", "Clara", "Hugo",
    "Maya", "Aiden", "Zoe", "Samuel", "Nora", "Finn", "Ruby", "Theo", "Isla", "Max",
    "Lena", "Jonas", "Alice", "Ben",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson",
    "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White",
    "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott",
    "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts",
    "Carter", "Phillips", "Evans", "Turner", "Parker", "Collins", "Edwards", "Stewart",
    "Morris", "Murphy", "Cook", "Rogers", "Berg", "Larsen", "Schmidt", "Muller", "Dubois",
)  # fmt: skip

# (city, ISO country, IANA timezone, weight): a US-heavy shop with a European
# and antipodean tail, so local-hour seasonality smears across UTC hours.
_LOCATIONS: tuple[tuple[str, str, str, float], ...] = (
    ("New York", "US", "America/New_York", 9),
    ("Boston", "US", "America/New_York", 4),
    ("Chicago", "US", "America/Chicago", 5),
    ("Denver", "US", "America/Denver", 6),
    ("Salt Lake City", "US", "America/Denver", 3),
    ("Seattle", "US", "America/Los_Angeles", 6),
    ("Portland", "US", "America/Los_Angeles", 4),
    ("San Francisco", "US", "America/Los_Angeles", 5),
    ("Toronto", "CA", "America/Toronto", 4),
    ("Vancouver", "CA", "America/Vancouver", 4),
    ("London", "GB", "Europe/London", 7),
    ("Manchester", "GB", "Europe/London", 3),
    ("Edinburgh", "GB", "Europe/London", 2),
    ("Munich", "DE", "Europe/Berlin", 4),
    ("Berlin", "DE", "Europe/Berlin", 3),
    ("Lyon", "FR", "Europe/Paris", 2),
    ("Zurich", "CH", "Europe/Zurich", 2),
    ("Amsterdam", "NL", "Europe/Amsterdam", 2),
    ("Stockholm", "SE", "Europe/Stockholm", 2),
    ("Oslo", "NO", "Europe/Oslo", 2),
    ("Sydney", "AU", "Australia/Sydney", 3),
    ("Melbourne", "AU", "Australia/Melbourne", 2),
    ("Auckland", "NZ", "Pacific/Auckland", 1),
)

# Monday=0 .. Sunday=6. Sunday/Monday are planning days for weekend trips.
_WEEKDAY_WEIGHT = (1.3, 1.05, 1.0, 0.95, 0.8, 0.85, 1.35)
_HOUR_WEIGHT = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.08, 0.25, 0.5, 0.7, 0.8, 0.85, 0.9,
    1.1, 1.0, 0.85, 0.85, 0.9, 1.0, 1.2, 1.5, 1.7, 1.5, 1.0, 0.5,
)  # fmt: skip

_WEEKLY_SUBJECTS = (
    "New in {c}: fresh gear for the season",
    "Staff picks: our favourite {c}",
    "Up to 20% off {c} this week",
    "Trail-tested {c} you'll love",
    "Weekend ready? Top-rated {c}",
)
_REMINDER_SUBJECT = "You left something in your cart"
_REMINDER_CAMPAIGN = "cart-reminder"

# Weekly newsletter: Mondays 15:00 UTC (afternoon in Europe, morning in the US).
_SEND_WEEKDAY = 0
_SEND_SECOND_OF_DAY = 15 * 3600

# Share of a newsletter's audience held out (drawn by a hash: no random draw).
_HOLDOUT_PERCENT = 10
_HOLDOUT_ARM, _EMAIL_ARM = "holdout", "email"

_SHARE_ANON_FIRST = 0.30
_SHARE_ANON_ONLY = 0.15
_SHARE_MARKETING = 0.65

# Heap trigger kinds, processed in time order per person.
_SESSION, _SEND, _OPEN, _CLICK, _REMINDER, _REFUND = range(6)
# Page kinds inside a session.
_HOME, _CATEGORY, _PRODUCT, _SEARCH, _CART = range(5)
# Persons.
_KNOWN, _ANON_FIRST, _ANON_ONLY = range(3)


# -- catalogue -------------------------------------------------------------------


def _round_price(x: float) -> float:
    # Shop prices end in .99, big-ticket items in 4.99/9.99; both stay inside
    # [lo, hi] as long as the band's limits are whole (and multiples of 5 >= 100).
    if x >= 100:
        return math.floor(x / 5) * 5 + 4.99
    return math.floor(x) + 0.99


@cache
def _catalogue(seed: int) -> tuple[Product, ...]:
    rng = random.Random(f"catalogue-{seed}")
    products: list[Product] = []
    names: set[str] = set()
    n = 0
    for cat in CATEGORIES:
        kinds = _KINDS[cat]
        for i in range(PRODUCTS_PER_CATEGORY):
            noun, lo, hi = kinds[i % len(kinds)]
            while True:
                name = f"{rng.choice(_BRANDS)} {rng.choice(_MODELS)} {noun}"
                if name not in names:
                    names.add(name)
                    break
            # Squared draw: most products sit in the cheaper half of the band.
            price = _round_price(lo + (hi - lo) * rng.random() ** 1.5)
            price = min(max(price, float(lo)), float(hi))
            n += 1
            products.append(Product(f"P{n:04d}", name, cat, round(price, 2)))
    return tuple(products)


def catalogue(seed: int = 42) -> list[Product]:
    """The shop's ~200 products (20 per category), deterministic per ``seed``.

    Ids are stable across seeds (P0001-P0020 are tents, P0021-P0040 sleeping
    bags, ... in ``CATEGORIES`` order); names and prices depend on ``seed``.
    ``generate(seed=s)`` uses ``catalogue(s)``.
    """
    return list(_catalogue(seed))


# -- timestamps ---------------------------------------------------------------------


@cache
def _clock_tables() -> tuple[tuple[str, ...], tuple[str, ...]]:
    # Formatting with datetime.isoformat costs ~1 us per event; string tables
    # indexed by minute-of-day and second make it a couple of concatenations.
    minutes = tuple(f"T{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
    seconds = tuple(f"{s:02d}+00:00" for s in range(60))
    return minutes, seconds


def day_start(moment: datetime) -> datetime:
    """The start (UTC) of ``moment``'s day: where a store generated then ends."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _default_end() -> datetime:
    return day_start(datetime.now(UTC))


# -- simulation ---------------------------------------------------------------------


class _Person:
    """Mutable per-person state while their timeline is simulated."""

    num: int
    kind: int
    user_id: str | None
    anon_id: str | None
    email: str
    first: str
    last: str
    loc: tuple[str, str, str, float]
    tz_off: list[int]
    marketing: bool
    signup: date | None
    identified_t: int | None
    head: dict[str, Any]
    identify_session: int
    sessions: int
    primary: str
    secondary: str
    add_p: float
    log_stay: float
    dwell: float
    open_p: float
    click_p: float
    cart: dict[str, list[Any]]
    cart_t: int
    last_end: int
    last_reminder: int
    orders: int

    __slots__ = (
        "num",
        "kind",
        "user_id",
        "anon_id",
        "email",
        "first",
        "last",
        "loc",
        "tz_off",
        "marketing",
        "signup",
        "identified_t",
        "head",
        "identify_session",
        "sessions",
        "primary",
        "secondary",
        "add_p",
        "log_stay",
        "dwell",
        "open_p",
        "click_p",
        "cart",
        "cart_t",
        "last_end",
        "last_reminder",
        "orders",
    )

    def __init__(self) -> None:
        self.identified_t: int | None = None
        self.sessions = 0
        self.cart: dict[str, list[Any]] = {}
        self.cart_t = 0
        self.last_end = -(10**12)
        self.last_reminder = -(10**12)
        self.orders = 0


class _Simulation:
    def __init__(self, people: int, seed: int, days: int, end: datetime) -> None:
        self.people = people
        self.seed = seed
        self.rng = random.Random(seed)
        end_f = end.timestamp()
        self.end_ts = math.floor(end_f)
        # Exclusive lower bound; int-vs-float comparison is exact in Python.
        self.lower = end_f - days * 86400
        self.days = days
        base_date = datetime.fromtimestamp(self.lower, UTC).date()
        self.base_date = base_date
        self.base = int(datetime(*base_date.timetuple()[:3], tzinfo=UTC).timestamp())
        ncal = (self.end_ts - self.base) // 86400 + 1
        self.ncal = ncal
        dates = [base_date + timedelta(days=d) for d in range(ncal)]
        self.day_prefix = [d.isoformat() for d in dates]
        self.minute_s, self.second_s = _clock_tables()

        self.day_weekday = [d.weekday() for d in dates]
        self.day_cum = list(accumulate(_WEEKDAY_WEIGHT[w] for w in self.day_weekday))
        self.hour_cum = [list(accumulate(_hour_weights(w))) for w in range(7)]
        # Offsets per calendar day, so DST changes inside the window are honoured
        # without a zoneinfo lookup per event.
        self.tz_offsets: dict[str, list[int]] = {}
        for tz in sorted({loc[2] for loc in _LOCATIONS}):
            zone = ZoneInfo(tz)
            self.tz_offsets[tz] = [
                int(
                    datetime.fromtimestamp(self.base + d * 86400 + 43200, zone)
                    .utcoffset()
                    .total_seconds()  # type: ignore[union-attr]
                )
                for d in range(ncal)
            ]
        self.loc_cum = list(accumulate(loc[3] for loc in _LOCATIONS))

        self.products = _catalogue(seed)
        self.by_cat: dict[str, list[tuple[Product, str, dict[str, Any], bool]]] = {
            c: [] for c in CATEGORIES
        }
        for i, p in enumerate(self.products):
            props = {"category": p.category, "name": p.name, "price": p.price}
            # Every third product page carries a demo video.
            self.by_cat[p.category].append((p, f"{BASE_URL}/p/{p.id}", props, i % 3 == 0))
        # Zipf-like popularity inside a category: a few bestsellers.
        self.rank_cum = list(accumulate(1 / (r + 1) ** 0.9 for r in range(PRODUCTS_PER_CATEGORY)))
        self.cat_cum = list(accumulate(_CATEGORY_WEIGHT[c] for c in CATEGORIES))

        self.campaigns = self._weekly_campaigns(dates)

    def _weekly_campaigns(self, dates: list[date]) -> list[tuple[int, tuple[Any, ...]]]:
        out = []
        rng = self.rng
        for d, day in enumerate(dates):
            if day.weekday() != _SEND_WEEKDAY:
                continue
            t = self.base + d * 86400 + _SEND_SECOND_OF_DAY
            cat = CATEGORIES[rng.randrange(len(CATEGORIES))]
            subject = rng.choice(_WEEKLY_SUBJECTS).format(c=cat.replace("_", " "))
            if self.lower < t <= self.end_ts:
                out.append((t, (f"weekly-{day.isoformat()}", subject, cat, False)))
        return out

    # -- people ---------------------------------------------------------------

    def run(self) -> Iterator[dict[str, Any]]:
        people = self.people
        extra = people * round(_SHARE_ANON_ONLY * 100) // 100
        day_prefix, minute_s, second_s = self.day_prefix, self.minute_s, self.second_s
        base, end_ts = self.base, self.end_ts
        # Every argument is in the id: two runs that differ in any of them make
        # different events, which must never be mistaken for duplicates.
        prefix = f"demo-{self.seed}-{people}-{self.days}-{end_ts}-"
        counter = 0
        for i in range(people):
            # Spread never-identifying visitors evenly between known people so
            # any prefix of the stream has the same mix.
            batches = [self._person(i + 1, _KNOWN)]
            if (i * extra) // people != ((i + 1) * extra) // people:
                batches.append(self._person(people + 1 + (i * extra) // people, _ANON_ONLY))
            for events in batches:
                for t, ev in events:
                    if t > end_ts:
                        break
                    day, sec = divmod(t - base, 86400)
                    ev["ts"] = day_prefix[day] + minute_s[sec // 60] + second_s[sec % 60]
                    ev["message_id"] = prefix + str(counter)
                    counter += 1
                    yield ev

    def _new_person(self, num: int, kind: int) -> _Person:
        rng = self.rng
        random = rng.random
        p = _Person()
        p.num = num
        if kind == _KNOWN and random() < _SHARE_ANON_FIRST:
            kind = _ANON_FIRST
        p.kind = kind
        p.user_id = None if kind == _ANON_ONLY else f"u{num:06d}"
        p.anon_id = None if kind == _KNOWN else f"a-{rng.getrandbits(64):016x}"
        p.first = _FIRST_NAMES[int(random() * len(_FIRST_NAMES))]
        p.last = _LAST_NAMES[int(random() * len(_LAST_NAMES))]
        p.email = f"{p.first.lower()}.{p.last.lower()}{num}@example.com"
        p.loc = _LOCATIONS[bisect(self.loc_cum, random() * self.loc_cum[-1])]
        p.tz_off = self.tz_offsets[p.loc[2]]
        p.marketing = kind != _ANON_ONLY and random() < _SHARE_MARKETING
        # Long-standing customers signed up before the window; anonymous-first
        # people sign up when they identify (set then).
        p.signup = (
            self.base_date - timedelta(days=1 + int(random() * 1500)) if kind == _KNOWN else None
        )
        p.head = {"user_id": p.user_id} if kind == _KNOWN else {"anonymous_id": p.anon_id}
        cat_cum = self.cat_cum
        p.primary = CATEGORIES[bisect(cat_cum, random() * cat_cum[-1])]
        p.secondary = CATEGORIES[bisect(cat_cum, random() * cat_cum[-1])]
        p.add_p = min(0.25, 0.055 * rng.lognormvariate(0.0, 0.6))
        # Pages per session are geometric; heavier browsers stay longer.
        stay = min(0.92, max(0.3, 0.72 * rng.lognormvariate(0.0, 0.15)))
        p.log_stay = math.log(stay)
        p.dwell = 45.0 * rng.lognormvariate(0.0, 0.4)
        p.open_p = rng.betavariate(2.0, 6.0)
        p.click_p = rng.betavariate(2.0, 12.0)
        return p

    def _session_starts(self, p: _Person, n: int) -> list[int]:
        random = self.rng.random
        day_cum, hour_cum, day_weekday = self.day_cum, self.hour_cum, self.day_weekday
        total = day_cum[-1]
        base, lower, end_ts, tz_off = self.base, self.lower, self.end_ts, p.tz_off
        out = []
        for _ in range(n):
            for _attempt in range(8):
                d = bisect(day_cum, random() * total)
                hc = hour_cum[day_weekday[d]]
                h = bisect(hc, random() * hc[-1])
                t = base + d * 86400 + h * 3600 + int(random() * 3600) - tz_off[d]
                if lower < t <= end_ts:
                    break
            else:
                # Only reachable for tiny windows; uniform keeps it in bounds.
                lo = math.floor(lower) + 1
                t = lo + int(random() * (end_ts - lo + 1))
            out.append(t)
        out.sort()
        return out

    def _person(self, num: int, kind: int) -> list[tuple[int, dict[str, Any]]]:
        rng = self.rng
        random = rng.random
        p = self._new_person(num, kind)
        scale = self.days / 90.0
        if p.kind == _ANON_ONLY:
            lam = rng.lognormvariate(-0.2, 0.9) * scale
        else:
            # sigma 1.7 puts well over half of all sessions on the top 10% of
            # people; mu keeps the mean near 4.5 sessions per 90 days.
            lam = rng.lognormvariate(0.05, 1.7) * scale
        # Stochastic rounding instead of Poisson: O(1) for heavy users too.
        # Capped at two visits a day: beyond that it would look like a bot.
        n = max(1, min(int(lam + random()), 2 * self.days))
        if p.kind == _ANON_FIRST:
            p.identify_session = 0 if n == 1 else 1 + int(random() * (n - 1))

        out: list[tuple[int, dict[str, Any]]] = []
        seq = 0
        heap: list[tuple[int, int, int, Any]] = []
        for t in self._session_starts(p, n):
            heap.append((t, seq, _SESSION, None))
            seq += 1
        if p.marketing:
            for t, payload in self.campaigns:
                # Bulk sends trickle out over ~30 minutes.
                heap.append((t + int(random() * 1800), seq, _SEND, payload))
                seq += 1
        heapq.heapify(heap)

        end_ts = self.end_ts
        heappush, heappop = heapq.heappush, heapq.heappop
        while heap:
            t, _, what, payload = heappop(heap)
            if t > end_ts:
                break
            if p.kind == _KNOWN and p.identified_t is None:
                self._identify(p, t, out)
            if what == _SESSION:
                min_gap = 1800 if payload is None else 20
                if t < p.last_end + min_gap:
                    # Sessions never overlap: a trigger during a session waits.
                    heappush(heap, (p.last_end + min_gap + int(random() * 600), seq, what, payload))
                    seq += 1
                    continue
                seq = self._session(p, t, payload, out, heap, seq)
            elif what in (_SEND, _REMINDER):
                if p.identified_t is None or t < p.identified_t:
                    continue
                campaign, subject, cat, reminder = payload
                if reminder and not p.cart:
                    continue
                if not reminder:
                    held = zlib.crc32(f"{campaign}:{p.user_id}".encode()) % 100
                    held_out = held < _HOLDOUT_PERCENT
                    out.append((t, self._assigned(p, campaign, held_out)))
                    if held_out:
                        continue
                out.append((t, self._email(p, "email_sent", campaign, subject)))
                open_p = min(0.9, p.open_p * 1.6) if reminder else p.open_p
                if random() < open_p:
                    delay = int(rng.lognormvariate(7.5, 1.3))
                    heappush(heap, (t + 30 + delay, seq, _OPEN, payload))
                    seq += 1
            elif what == _OPEN:
                campaign, subject, cat, reminder = payload
                out.append((t, self._email(p, "email_open", campaign, subject)))
                click_p = 0.35 if reminder else p.click_p
                if random() < click_p:
                    heappush(heap, (t + 3 + int(random() * 90), seq, _CLICK, payload))
                    seq += 1
            elif what == _CLICK:
                campaign, subject, cat, reminder = payload
                if reminder:
                    landing = (_CART, None, None)
                    url = f"{BASE_URL}/cart"
                else:
                    item = self._product_in(cat)
                    landing = (_PRODUCT, cat, item)
                    url = item[1]
                ev = self._email(p, "email_click", campaign, subject)
                ev["url"] = url
                out.append((t, ev))
                heappush(heap, (t + 2 + int(random() * 12), seq, _SESSION, (campaign, landing)))
                seq += 1
            elif what == _REFUND:
                out.append((t, payload))
        out.sort(key=itemgetter(0))
        return out

    def _identify(self, p: _Person, t: int, out: list[tuple[int, dict[str, Any]]]) -> None:
        p.identified_t = t
        if p.signup is None:
            p.signup = datetime.fromtimestamp(t, UTC).date()
        ev: dict[str, Any] = {"type": "identify", "ts": None, "user_id": p.user_id}
        if p.anon_id is not None:
            ev["anonymous_id"] = p.anon_id
            # Same browser after login: keep the cookie id alongside the user id.
            p.head = {"user_id": p.user_id, "anonymous_id": p.anon_id}
        ev["email"] = p.email
        city, country, tz, _ = p.loc
        ev["traits"] = {
            "email": p.email,
            "first_name": p.first,
            "last_name": p.last,
            "city": city,
            "country": country,
            "timezone": tz,
            "signup_date": p.signup.isoformat(),
            "accepts_marketing": p.marketing,
        }
        out.append((t, ev))

    def _assigned(self, p: _Person, campaign: str, held_out: bool) -> dict[str, Any]:
        return {
            "type": "campaign_assigned",
            "ts": None,
            "user_id": p.user_id,
            "campaign": campaign,
            "properties": {"arm": _HOLDOUT_ARM if held_out else _EMAIL_ARM, "holdout": held_out},
        }

    def _email(self, p: _Person, typ: str, campaign: str, subject: str) -> dict[str, Any]:
        return {
            "type": typ,
            "ts": None,
            "user_id": p.user_id,
            "email": p.email,
            "campaign": campaign,
            "properties": {"subject": subject},
        }

    def _product_in(self, cat: str) -> tuple[Product, str, dict[str, Any], bool]:
        cum = self.rank_cum
        return self.by_cat[cat][bisect(cum, self.rng.random() * cum[-1])]

    def _pick_category(self, p: _Person, current: str | None) -> str:
        r = self.rng.random()
        if current is not None and r < 0.4:
            return current
        if r < 0.7:
            return p.primary
        if r < 0.82:
            return p.secondary
        cum = self.cat_cum
        return CATEGORIES[bisect(cum, self.rng.random() * cum[-1])]

    def _session(
        self,
        p: _Person,
        t: int,
        origin: tuple[str, tuple[int, str | None, Any]] | None,
        out: list[tuple[int, dict[str, Any]]],
        heap: list[tuple[int, int, int, Any]],
        seq: int,
    ) -> int:
        """Simulate one visit starting at ``t``; returns the next heap sequence number."""
        rng = self.rng
        random = rng.random
        append = out.append
        sid = f"s-{rng.getrandbits(64):016x}"
        if origin is None:
            campaign = None
            extra: dict[str, Any] = {"session_id": sid}
            r = random()
            if r < 0.3:
                landing: tuple[int, str | None, Any] = (_HOME, None, None)
            elif r < 0.55:
                landing = (_CATEGORY, self._pick_category(p, None), None)
            elif r < 0.9:
                landing = (_PRODUCT, None, None)
            else:
                landing = (_SEARCH, None, None)
        else:
            campaign, landing = origin
            extra = {"session_id": sid, "campaign": campaign}

        # Carts untouched for two weeks have expired server-side.
        if p.cart and t - p.cart_t > 14 * 86400:
            p.cart = {}
        from_reminder = landing[0] == _CART
        if from_reminder and not p.cart:
            landing = (_HOME, None, None)
            from_reminder = False

        steps = 0 if from_reminder else 1 + min(39, int(math.log(1.0 - random()) / p.log_stay))
        identify_at = -1
        if p.kind == _ANON_FIRST and p.identified_t is None and p.sessions == p.identify_session:
            # In their first visit they must have browsed before signing up.
            if p.sessions == 0:
                identify_at = 1 + int(random() * steps)
            else:
                identify_at = int(random() * (steps + 1))
        p.sessions += 1

        head = {**p.head, **extra}
        cur_cat: str | None = landing[1]
        added = False
        force_product = False
        dwell_mean = p.dwell
        kind = _HOME
        for i in range(steps):
            if i == identify_at:
                self._identify(p, t, out)
                head = {**p.head, **extra}
            if i == 0:
                kind = landing[0]
            elif force_product:
                kind = _PRODUCT
            else:
                r = random()
                kind = (
                    _PRODUCT
                    if r < 0.58
                    else _CATEGORY
                    if r < 0.8
                    else _SEARCH
                    if r < 0.9
                    else _HOME
                )
            force_product = False
            dwell = 3 + int(-math.log(1.0 - random()) * dwell_mean)

            if kind == _SEARCH:
                cat = self._pick_category(p, cur_cat)
                queries = _SEARCHES[cat]
                query = queries[int(random() * len(queries))]
                append(
                    (
                        t,
                        {
                            "type": "search",
                            "ts": None,
                            **head,
                            "url": f"{BASE_URL}/search?q={query.replace(' ', '+')}",
                            "properties": {"query": query},
                        },
                    )
                )
                cur_cat = cat
                force_product = True
                t += 4 + int(random() * 20)
                continue

            product = None
            if kind == _PRODUCT:
                item = landing[2] if i == 0 and landing[2] is not None else None
                if item is None:
                    cur_cat = self._pick_category(p, cur_cat)
                    item = self._product_in(cur_cat)
                product, url, props, has_video = item
                pid = product.id
                append(
                    (
                        t,
                        {
                            "type": "product_view",
                            "ts": None,
                            **head,
                            "product_id": pid,
                            "url": url,
                            "properties": dict(props),
                        },
                    )
                )
            else:
                if kind == _CATEGORY:
                    if cur_cat is None or i > 0:
                        cur_cat = self._pick_category(p, cur_cat)
                    url = f"{BASE_URL}/c/{cur_cat}"
                    page: dict[str, Any] = {
                        "type": "page_view",
                        "ts": None,
                        **head,
                        "url": url,
                        "properties": {"category": cur_cat},
                    }
                else:
                    url = f"{BASE_URL}/"
                    page = {"type": "page_view", "ts": None, **head, "url": url}
                append((t, page))

            if product is None:
                on_page = {**head, "url": url}
            else:
                on_page = {**head, "product_id": pid, "url": url}
            if random() < 0.45:
                pct = (25, 50, 50, 75, 75, 100)[int(random() * 6)]
                append(
                    (
                        t + 1 + dwell * pct // 130,
                        {
                            "type": "scroll_depth",
                            "ts": None,
                            **on_page,
                            "properties": {"percent": pct},
                        },
                    )
                )
            if product is not None:
                if has_video and random() < 0.3:
                    length = 60 + int(random() * 120)
                    reached = (25, 25, 50, 50, 75, 100)[int(random() * 6)]
                    vid = f"v-{pid}"
                    for pct in (25, 50, 75, 100):
                        if pct > reached:
                            break
                        append(
                            (
                                t + 5 + length * pct // 100,
                                {
                                    "type": "video_progress",
                                    "ts": None,
                                    **on_page,
                                    "properties": {"percent": pct, "video_id": vid},
                                },
                            )
                        )
                    dwell = max(dwell, 8 + length * reached // 100)
                if random() < p.add_p:
                    r = random()
                    qty = 1 if r < 0.85 else 2 if r < 0.97 else 3
                    if product.category == "socks" and random() < 0.4:
                        qty += 1
                    line = p.cart.get(pid)
                    if line is None:
                        p.cart[pid] = [item, qty]
                    else:
                        line[1] += qty
                    p.cart_t = t
                    added = True
                    append(
                        (
                            t + dwell * 3 // 4,
                            {
                                "type": "add_to_cart",
                                "ts": None,
                                **on_page,
                                "value": round(product.price * qty, 2),
                                "currency": CURRENCY,
                                "properties": {**props, "quantity": qty},
                            },
                        )
                    )
                elif random() < 0.03:
                    append(
                        (
                            t + dwell * 3 // 4,
                            {
                                "type": "wishlist_add",
                                "ts": None,
                                **on_page,
                                "properties": dict(props),
                            },
                        )
                    )
            if random() < 0.55:
                append(
                    (
                        t + dwell,
                        {
                            "type": "time_on_page",
                            "ts": None,
                            **on_page,
                            "properties": {"seconds": dwell},
                        },
                    )
                )
            t += dwell + 1 + int(random() * 5)

        if identify_at == steps:
            # Signed up for an account right at the end of the visit.
            self._identify(p, t, out)
            head = {**p.head, **extra}

        purchased = False
        if from_reminder:
            view_p, checkout_p, buy_p = 1.0, 0.7, 0.65
        elif p.kind == _ANON_ONLY:
            # Never-identifying visitors look at their cart but never log in to pay.
            view_p, checkout_p, buy_p = 0.3, 0.0, 0.0
        else:
            view_p, checkout_p, buy_p = 0.45, 0.5, 0.5
        if p.cart and random() < view_p:
            url = f"{BASE_URL}/cart"
            append((t, {"type": "page_view", "ts": None, **head, "url": url}))
            t += 5 + int(random() * 40)
            if random() < min(0.6, 0.1 + 0.12 * len(p.cart)):
                # Second thoughts, likelier the fuller the cart: drop one line.
                pid = next(iter(p.cart))
                item, qty = p.cart.pop(pid)
                append(
                    (
                        t,
                        {
                            "type": "remove_from_cart",
                            "ts": None,
                            **head,
                            "product_id": pid,
                            "url": url,
                            "properties": {**item[2], "quantity": qty},
                        },
                    )
                )
                t += 3 + int(random() * 20)
            if p.cart and random() < checkout_p:
                if p.identified_t is None:
                    # Checkout needs an account: this is where the visitor logs in.
                    self._identify(p, t, out)
                    head = {**p.head, **extra}
                url = f"{BASE_URL}/checkout"
                lines = list(p.cart.values())
                append(
                    (
                        t,
                        {
                            "type": "checkout_started",
                            "ts": None,
                            **head,
                            "url": url,
                            "properties": {"items": len(lines)},
                        },
                    )
                )
                t += 30 + int(random() * 240)
                if random() < buy_p:
                    purchased = True
                    p.orders += 1
                    order_id = f"ord-{p.num:06d}-{p.orders}"
                    url = f"{BASE_URL}/checkout/complete"
                    for item, qty in lines:
                        product, _, props, _ = item
                        value = round(product.price * qty, 2)
                        line_props = {
                            **props,
                            "quantity": qty,
                            "order_id": order_id,
                            "items": len(lines),
                        }
                        append(
                            (
                                t,
                                {
                                    "type": "purchase",
                                    "ts": None,
                                    **head,
                                    "product_id": product.id,
                                    "url": url,
                                    "value": value,
                                    "currency": CURRENCY,
                                    "properties": line_props,
                                },
                            )
                        )
                        # Returns are rare, and come within a fortnight.
                        if random() < 0.05:
                            refund = {
                                "type": "refund",
                                "ts": None,
                                "user_id": p.user_id,
                                "product_id": product.id,
                                "value": value,
                                "currency": CURRENCY,
                                "properties": dict(line_props),
                            }
                            when = t + (2 + int(random() * 12)) * 86400 + int(random() * 86400)
                            heapq.heappush(heap, (when, seq, _REFUND, refund))
                            seq += 1
                    p.cart = {}
        p.last_end = t
        if (
            added
            and not purchased
            and p.cart
            and p.marketing
            and p.identified_t is not None
            and t - p.last_reminder > 3 * 86400
        ):
            p.last_reminder = t
            when = t + 2 * 3600 + int(random() * 22 * 3600)
            payload = (_REMINDER_CAMPAIGN, _REMINDER_SUBJECT, None, True)
            heapq.heappush(heap, (when, seq, _REMINDER, payload))
            seq += 1
        return seq


def _hour_weights(weekday: int) -> list[float]:
    w = list(_HOUR_WEIGHT)
    if weekday in (6, 0):
        # Sunday and Monday evenings: planning next weekend's trip.
        for h in range(18, 23):
            w[h] *= 1.4
    if weekday in (5, 6):
        # Weekend mornings are spent outdoors, not shopping.
        for h in range(8, 13):
            w[h] *= 0.7
    return w


def generate(
    people: int = 5000,
    *,
    seed: int = 42,
    days: int = 90,
    end: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the demo shop's events for ``people`` customers over ``days`` days.

    ``end`` must be timezone-aware (default: today's midnight UTC); every event
    has ``end - days < ts <= end``. About 15% more anonymous-only visitors are
    added on top of ``people``. Output is a pure function of the arguments.
    Events come person by person, each person's in time order (the stream as
    a whole is not sorted by time).
    """
    if people < 0:
        raise ValueError(f"people must be >= 0, got {people}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if end is None:
        end = _default_end()
    elif end.tzinfo is None or end.utcoffset() is None:
        raise ValueError("end must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    return _Simulation(people, seed, days, end.astimezone(UTC)).run()
