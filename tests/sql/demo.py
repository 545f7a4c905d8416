"""Facts of supabase/seed.sql that tests (here and elsewhere) rely on. Keep in step with the seed."""

from __future__ import annotations

AWA = "11111111-1111-4111-8111-111111111111"  # owner, Dakar
IBRAHIMA = "22222222-2222-4222-8222-222222222222"  # owner, Thiès / Saint-Louis / Mbour
MOUSSA = "33333333-3333-4333-8333-333333333333"  # tenant of lease 123 (and of ended lease 124)
FATOU = "44444444-4444-4444-8444-444444444444"  # tenant without a lease; one booked visit on 102

USERS = {
    AWA: ("awa.ndiaye@example.sn", "Awa Ndiaye", "owner"),
    IBRAHIMA: ("ibrahima.fall@example.sn", "Ibrahima Fall", "owner"),
    MOUSSA: ("moussa.diop@example.sn", "Moussa Diop", "tenant"),
    FATOU: ("fatou.sarr@example.sn", "Fatou Sarr", "tenant"),
}
PASSWORD = "dousell-demo"

PROPERTY_123 = 123  # Awa, Dakar (Médina), published, 50 000 XOF, rented by Moussa
VILLA_789 = 789  # Awa, Dakar (Almadies), published, 12 free future slots
MERMOZ_102 = 102  # Awa, published; slots tomorrow and the day after at 11:00, the second booked by Fatou
THIES_201 = 201  # Ibrahima, published; one slot tomorrow at 15:00
THIES_202 = 202  # Ibrahima, published; property of ended lease 124
AWA_UNPUBLISHED = {117: "draft", 118: "draft", 119: "archived"}
IBRAHIMA_DRAFTS = {210, 309}

PUBLISHED_BY_CITY = {"Dakar": 18, "Thiès": 9, "Saint-Louis": 8, "Mbour": 9}
PUBLISHED = sum(PUBLISHED_BY_CITY.values())  # 44
AWA_PROPERTIES = 18 + len(AWA_UNPUBLISHED)  # 21
IBRAHIMA_PROPERTIES = 9 + 8 + 9 + len(IBRAHIMA_DRAFTS)  # 28
ALL_PROPERTIES = AWA_PROPERTIES + IBRAHIMA_PROPERTIES  # 49

LEASE_123 = 123  # property 123, Moussa, active, 50 000 XOF; previous two months completed
LEASE_124 = 124  # property 202, Moussa, ended, 120 000 XOF; one completed payment 3 months ago
RENT_123 = 50_000

FREE_SLOTS_789 = 12  # days 1-4 at 10:00, 14:00, 16:00 Africa/Dakar, one hour each (+ one past slot)
SLOT_HOURS_789 = (10, 14, 16)
