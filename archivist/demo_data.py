"""Generate realistic CRM records (English, Chinese, identifiers) for demos and benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from archivist.records import format_utc

CATEGORIES = ("support", "sales", "billing", "finance", "medical")
KINDS = ("communication", "process", "transaction", "ticket", "note")
STATUSES = ("open", "closed", "won", "lost", "pending", "resolved")
OWNERS = ("alice", "bob", "chen.jing", "diego", "team-billing", "team-support", "wang.fang")
ENGLISH_SUBJECTS = (
    "Refund requested for order {order}",
    "Invoice {invoice} disputed",
    "Escalation: shipment delayed",
    "Renewal quote for {customer}",
    "Password reset and account access",
    "Follow-up call about the contract",
    "Shipping address changed",
    "Payment failed for invoice {invoice}",
)
ENGLISH_SENTENCES = (
    "The customer asked for a refund because the parcel arrived damaged.",
    "We refunded the first payment and escalated the second one to billing.",
    "Shipping was delayed twice; the customer is escalating the complaint.",
    "Please send the signed contract to {email} before Friday.",
    "Called {phone} and left a message about invoice {invoice}.",
    "The invoice total did not match the quote, so finance is reviewing it.",
    "Customer confirmed the replacement shipped and the ticket can be closed.",
    "Requested an extension of the warranty for the damaged device.",
    "Discussed the renewal pricing and offered a loyalty discount.",
    "The account manager will follow up next week with a revised proposal.",
    "Medical records were requested by the clinic for the annual review.",
    "Chargeback received from the bank; waiting for the customer's statement.",
)
CHINESE_SUBJECTS = (
    "客户申请退款，订单 {order}",
    "发票 {invoice} 金额有误",
    "物流延迟投诉",
    "续约报价：{customer}",
    "账户无法登录",
)
CHINESE_SENTENCES = (
    "客户收到的商品有损坏，要求退款并重新发货。",
    "财务部门正在核对发票金额，预计三个工作日内回复。",
    "已电话联系客户 {phone}，说明了退款流程。",
    "客户希望开具增值税专用发票，请发送到 {email}。",
    "物流公司确认包裹延迟，客服已向客户致歉。",
    "合同续签的价格已经确认，销售经理下周跟进。",
    "客户投诉服务态度，主管已介入处理。",
    "医院要求提供年度体检报告的副本。",
)
SURNAMES = ("li", "wang", "zhang", "liu", "smith", "garcia", "mueller", "tanaka")
GIVEN = ("wei", "fang", "na", "min", "john", "maria", "anna", "ken")


def generate_records(
    count: int,
    *,
    seed: int = 7,
    now: datetime | None = None,
    years: int = 8,
    chinese_share: float = 0.3,
    start: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield `count` valid records as JSON values, spread over the `years` before `now`.

    :param seed: the same seed gives the same records.
    :param start: the number of the first record (ids are `REC-<n>`), for generating in parts.
    """
    rng = random.Random(seed * 1_000_003 + start)
    now = now or datetime(2026, 1, 1, tzinfo=UTC)
    span = int(timedelta(days=365 * years).total_seconds())
    for n in range(start, start + count):
        created = now - timedelta(seconds=rng.randrange(span))
        updated = min(now, created + timedelta(seconds=rng.randrange(90 * 86400)))
        customer = f"C{rng.randrange(1, 5000):05d}"
        fill = {
            "order": f"SO-{rng.randrange(10**6):06d}",
            "invoice": f"INV-{created.year}-{rng.randrange(10**6):06d}",
            "customer": customer,
            "email": f"{rng.choice(GIVEN)}.{rng.choice(SURNAMES)}@example.com",
            "phone": f"+86 138 {rng.randrange(10**4):04d} {rng.randrange(10**4):04d}",
        }
        chinese = rng.random() < chinese_share
        subjects, sentences = (
            (CHINESE_SUBJECTS, CHINESE_SENTENCES)
            if chinese
            else (ENGLISH_SUBJECTS, ENGLISH_SENTENCES)
        )
        body = " ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6)))
        record: dict[str, Any] = {
            "id": f"REC-{n:08d}",
            "kind": rng.choice(KINDS),
            "category": rng.choice(CATEGORIES),
            "customer_id": customer if rng.random() > 0.05 else None,
            "owner": rng.choice(OWNERS) if rng.random() > 0.1 else None,
            "subject": rng.choice(subjects).format(**fill),
            "body": body.format(**fill),
            "status": rng.choice(STATUSES),
            "created_at": format_utc(created.replace(microsecond=0)),
            "updated_at": format_utc(updated.replace(microsecond=0)),
        }
        if rng.random() < 0.5:
            record["attributes"] = {
                "channel": rng.choice(["email", "phone", "chat"]),
                "tags": rng.sample(["vip", "urgent", "b2b", "new"], 2),
            }
        yield record


SHOWCASE_ROOT = "REC-00000042"


def generate_demo_records(count: int, *, now: datetime, seed: int = 7) -> Iterator[dict[str, Any]]:
    """The demo data set: `count` generated records grouped into processes (a process record
    with its tickets, messages and notes), plus one showcase process, all aged, rooted at
    `REC-00000042` with invoice `INV-2023-004512` in it, that the README's examples use.
    """
    rng = random.Random(seed)
    root_of_block: dict[int, str] = {}
    for record in generate_records(count, seed=seed, now=now):
        n = int(record["id"][4:])
        if n == 42:
            continue  # the showcase process takes this id
        block = n // 8
        if n % 8 == 0:
            record["kind"] = "process"
            root_of_block[block] = record["id"]
        elif block in root_of_block and rng.random() < 0.8:
            record["parent_id"] = root_of_block[block]
            record["kind"] = rng.choice(("ticket", "communication", "note"))
        yield record
    yield from _showcase(now)


def _showcase(now: datetime) -> list[dict[str, Any]]:
    """One complete, aged process: a refund case with a ticket, messages (English and
    Chinese) and notes."""
    base = now - timedelta(days=800)

    def at(days: int) -> str:
        return format_utc((base + timedelta(days=days)).replace(microsecond=0))

    def record(record_id: str, kind: str, subject: str, body: str, day: int,
               parent: str | None, **extra: Any) -> dict[str, Any]:  # fmt: skip
        value: dict[str, Any] = {
            "id": record_id, "kind": kind, "category": "billing", "customer_id": "C00042",
            "owner": extra.get("owner", "team-billing"), "subject": subject, "body": body,
            "status": extra.get("status", "closed"), "created_at": at(day),
            "updated_at": at(day + 1),
        }
        if parent is not None:
            value["parent_id"] = parent
        return value

    root = SHOWCASE_ROOT
    ticket = f"{root}-T1"
    return [
        record(root, "process", "Refund case: invoice INV-2023-004512 charged twice",
               "Li Wei (li.wei@example.com, +86 138 0013 8000) was charged twice for invoice "
               "INV-2023-004512. Refund the duplicate payment and confirm in writing.", 0, None,
               status="resolved"),
        record(ticket, "ticket", "Duplicate charge on INV-2023-004512",
               "Billing ticket for the duplicate payment of invoice INV-2023-004512.", 1, root),
        record(f"{root}-M1", "communication", "Charged twice for my invoice",
               "Hello, my card was charged twice for invoice INV-2023-004512. Please refund "
               "one of the payments. Li Wei", 1, ticket),
        record(f"{root}-M2", "communication", "发票 INV-2023-004512 重复扣款",
               "您好，发票 INV-2023-004512 被重复扣款，请退款。联系电话 +86 138 0013 8000。", 2,
               ticket, owner="wang.fang"),
        record(f"{root}-M3", "communication", "Refund issued",
               "We refunded the duplicate payment for invoice INV-2023-004512; it reaches your "
               "card within five working days.", 5, ticket),
        record(f"{root}-N1", "note", "Finance checked the ledger",
               "Finance confirmed the double booking of INV-2023-004512 and approved the refund.",
               3, root, owner="chen.jing"),
        record(f"{root}-N2", "note", "财务备注",
               "财务部门已核对发票金额，同意退款。", 4, root, owner="chen.jing"),
    ]
