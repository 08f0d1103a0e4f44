"""Request and token budgets per rolling minute (SPEC §6.2): per model and per account key.

A budget allows at most ``limit`` units (requests for ``rpm``, tokens for ``tpm``) inside any
window of ``window_seconds`` (60 s). :class:`RollingBudget` is pure bookkeeping driven by ``now``
arguments: a log of charges, ``used(now) = sum of charges made after now - window``.
:class:`RequestBudgets` holds each charge for its window plus a margin (2% of it, at least
0.1 s): the endpoint counts a request when it arrives, a little after its lease was granted
(later still on a busy event loop), so a charge counted out exactly one window after the grant
could let the next request arrive while the endpoint still counts the old one. The margin costs
2% of the budget's rate when it binds (a minute's window). The
controller charges a budget in the same synchronous step that grants the lease (never check
first and count later); a token charge starts at an estimate and is settled at release to the
usage the provider reported. A charge that already left the window is not corrected (it can no
longer hold anyone back). A single request larger than the whole budget is admitted only into
an empty window, so it cannot wait forever.

``ready_at(amount, now)``: the end of the window of the oldest charges that must expire before
``amount`` fits, so a waiter held by a budget is woken by a timer at that instant, never by polling.

:func:`estimate_request_tokens` is the reservation made for a request: prompt characters / 4
(rounded up) plus the completion budget the request asks for (``max_tokens`` or
``max_completion_tokens``), or :data:`DEFAULT_COMPLETION_TOKENS` when it names none.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sluiceway.errors import EngineError
from sluiceway.providers.base import ModelRequest
from sluiceway.requests.keys import ProviderModelKey

BUDGET_WINDOW_SECONDS = 60.0
WINDOW_MARGIN = 0.02
WINDOW_MARGIN_MIN_SECONDS = 0.1
DEFAULT_COMPLETION_TOKENS = 256
_CHARS_PER_TOKEN = 4


class BudgetKind(enum.Enum):
    """What a budget counts."""

    REQUESTS = "rpm"
    TOKENS = "tpm"


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetLimits:
    """Requests and tokens per minute; ``None`` leaves that dimension unbounded."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value < 1:
                raise EngineError(f"a {name} budget must be >= 1 or unset, got {value}")

    @property
    def is_empty(self) -> bool:
        return self.rpm is None and self.tpm is None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestBudgets:
    """The budgets request admission enforces.

    ``models`` bounds each provider/model on its own; ``accounts`` are budgets shared by every
    provider/model that ``account_of`` maps to that key (a lease then charges both).
    """

    models: Mapping[ProviderModelKey, BudgetLimits] = field(
        default_factory=lambda: MappingProxyType({})
    )
    accounts: Mapping[str, BudgetLimits] = field(default_factory=lambda: MappingProxyType({}))
    account_of: Mapping[ProviderModelKey, str] = field(default_factory=lambda: MappingProxyType({}))
    window_seconds: float = BUDGET_WINDOW_SECONDS

    @property
    def held_seconds(self) -> float:
        """How long a charge counts: the window plus its margin (see the module docstring)."""
        window = self.window_seconds
        return window + max(window * WINDOW_MARGIN, WINDOW_MARGIN_MIN_SECONDS)

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise EngineError(
                f"RequestBudgets.window_seconds must be > 0, got {self.window_seconds}"
            )
        for key, account in self.account_of.items():
            if account not in self.accounts:
                known = ", ".join(sorted(self.accounts)) or "none"
                raise EngineError(
                    f"{key} is mapped to budget key {account!r}, which has no limits; known "
                    f"budget keys: {known}"
                )

    @property
    def is_empty(self) -> bool:
        return all(limits.is_empty for limits in self.models.values()) and all(
            limits.is_empty for limits in self.accounts.values()
        )


class BudgetCharge:
    """One charge in a budget's window; the controller keeps it until the lease is released."""

    __slots__ = ("amount", "at", "in_window")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount
        self.in_window = True


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatistics:
    kind: BudgetKind
    limit: int
    used: int
    charges_in_window: int
    charged_total: int
    settled_total: int  # sum of (reported - estimated) over settled charges


class RollingBudget:
    """At most ``limit`` units in any ``window_seconds``; see the module docstring.

    Pure bookkeeping: every method takes ``now`` and nothing reads a clock. A ``now`` earlier
    than one already seen is read as that one: readings taken at different points of one step,
    or by a timer that fires a hair early, may interleave, and the window never moves back.
    """

    __slots__ = (
        "_charged_total",
        "_charges",
        "_last_now",
        "_settled_total",
        "_used",
        "kind",
        "limit",
        "window_seconds",
    )

    def __init__(
        self, kind: BudgetKind, limit: int, window_seconds: float = BUDGET_WINDOW_SECONDS
    ) -> None:
        if limit < 1 or window_seconds <= 0:
            raise EngineError(
                f"a rolling budget needs limit >= 1 and window_seconds > 0, got {limit} and "
                f"{window_seconds}"
            )
        self.kind = kind
        self.limit = limit
        self.window_seconds = window_seconds
        # Mutable state, all of it:
        self._charges: deque[BudgetCharge] = deque()
        self._used = 0
        self._last_now = -math.inf
        self._charged_total = 0
        self._settled_total = 0

    def _expire(self, now: float) -> float:
        """Drop the charges that left the window at ``now``; returns the ``now`` in force."""
        if now < self._last_now:
            now = self._last_now
        self._last_now = now
        charges = self._charges
        window = self.window_seconds
        while charges and now >= charges[0].at + window:
            charge = charges.popleft()
            charge.in_window = False
            self._used -= charge.amount
        return now

    def used(self, now: float) -> int:
        self._expire(now)
        return self._used

    def fits(self, amount: int, now: float) -> bool:
        """Whether ``amount`` more units may be charged now."""
        self._expire(now)
        return self._used + amount <= self.limit or not self._charges

    def ready_at(self, amount: int, now: float) -> float:
        """The earliest time ``amount`` fits (``now`` if it fits already)."""
        now = self._expire(now)
        if self._used + amount <= self.limit or not self._charges:
            return now
        excess = self._used + amount - self.limit
        freed = 0
        for charge in self._charges:
            freed += charge.amount
            if freed >= excess or freed == self._used:
                return charge.at + self.window_seconds
        raise EngineError(
            f"a {self.kind.value} budget's charges add up to {freed}, not its used {self._used}"
        )

    def charge(self, amount: int, now: float) -> BudgetCharge:
        if amount < 0:
            raise EngineError(f"a budget charge must be >= 0, got {amount}")
        now = self._expire(now)
        charge = BudgetCharge(now, amount)
        self._charges.append(charge)
        self._used += amount
        self._charged_total += amount
        return charge

    def settle(self, charge: BudgetCharge, amount: int, now: float) -> int:
        """Correct ``charge`` to ``amount``; returns the change of ``used`` (0 once expired)."""
        if amount < 0:
            raise EngineError(f"a settled budget charge must be >= 0, got {amount}")
        self._expire(now)
        delta = amount - charge.amount
        self._settled_total += delta
        if not charge.in_window:
            return 0
        charge.amount = amount
        self._used += delta
        return delta

    def statistics(self, now: float) -> BudgetStatistics:
        self._expire(now)
        return BudgetStatistics(
            kind=self.kind,
            limit=self.limit,
            used=self._used,
            charges_in_window=len(self._charges),
            charged_total=self._charged_total,
            settled_total=self._settled_total,
        )


def estimate_request_tokens(request: ModelRequest) -> int:
    """Tokens reserved for ``request`` before the provider reports its usage."""
    chars = sum(len(message.content) for message in request.messages)
    chars += sum(len(text) for text in request.inputs)
    prompt = -(-chars // _CHARS_PER_TOKEN)
    if request.inputs and not request.messages:
        return max(1, prompt)  # embeddings produce no completion tokens
    completion = DEFAULT_COMPLETION_TOKENS
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.parameters.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            completion = value
            break
    return max(1, prompt + completion)
