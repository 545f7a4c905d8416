"""A large generated catalogue (owners, listings, visit slots) grown in SQL, for the scale bench and the EXPLAIN tests.

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        grow(conn, 50_000)          # published listings in all, demo seed's included; ~10 % more unpublished
        add_slots(conn, 789, 1_500)  # one property with many free visit slots

Deterministic: every value is drawn from a hash of the row's number (`hashtextextended`), so two
runs make the same catalogue and a plan seen once is seen again. The shape follows what the demo
seed shows of the market, at scale: a third of the listings in Dakar, a long tail of towns, a few
agencies owning hundreds of listings, French titles and descriptions of 100 to 1,500 characters
(the words a tenant searches for: piscine, meublé, climatisé, plage...), some cities stored as
owners type them (`dakar`, `THIES`: the web app writes what it is given), created over three years.

Listings are inserted with `session_replication_role = replica` (superuser): a bulk seed is not a
change anyone must be told about (no outbox row, no webhook per listing), and the foreign keys it
would check are to owners made just before. Owners go in with triggers on, so their profiles are
made as for any sign-up. VACUUM ANALYZE at the end gives the planner the statistics and the
visibility map autovacuum would have given a live database.
"""

from __future__ import annotations

import psycopg

# (city as most owners type it, weight, districts). Weights: Dakar's share of the demo seed, spread
# over the towns lib/domain/properties knows.
CITIES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("Dakar", 0.36, ("Almadies", "Mermoz", "Point E", "Plateau", "Médina", "Ngor", "Ouakam", "Yoff",
                     "Sacré-Cœur", "Fann", "Liberté 6", "HLM", "Grand Dakar", "Parcelles Assainies")),
    ("Thiès", 0.08, ("Randoulène", "Cité Senghor", "Grand Thiès", "Mbour 1", "Nguinth")),
    ("Saint-Louis", 0.06, ("Île Nord", "Sor", "Guet Ndar", "Ndioloffène", "Balacoss")),
    ("Mbour", 0.07, ("Mbour 4", "Saly Joseph", "Tefess", "Grand Mbour")),
    ("Saly", 0.05, ("Saly Portudal", "Saly Niakh Niakhal", "Saly Carrefour")),
    ("Rufisque", 0.05, ("Centre", "Keury Souf", "Diokoul")),
    ("Touba", 0.04, ("Darou Marnane", "Touba Mosquée", "Ndamatou")),
    ("Kaolack", 0.04, ("Léona", "Médina Baye", "Kasnack")),
    ("Ziguinchor", 0.04, ("Boucotte", "Lyndiane", "Santhiaba")),
    ("Pikine", 0.05, ("Guinaw Rail", "Thiaroye", "Dalifort")),
    ("Guédiawaye", 0.04, ("Golf Sud", "Sam Notaire", "Wakhinane")),
    ("Diamniadio", 0.03, ("Pôle urbain", "Cité des Nations")),
    ("Somone", 0.02, ("Lagune", "Village")),
    ("Louga", 0.015, ("Artillerie", "Keur Serigne Louga")),
    ("Tambacounda", 0.01, ("Médina Coura", "Pont")),
    ("Kolda", 0.01, ("Sikilo", "Doumassou")),
    ("Fatick", 0.01, ("Ndiaye Ndiaye", "Peulgha")),
    ("Matam", 0.01, ("Soubalo", "Tantadji")),
)

# (type, weight, French noun for titles, bedrooms lowest..highest, base monthly price in XOF)
TYPES: tuple[tuple[str, float, str, int, int, int], ...] = (
    ("apartment", 0.45, "Appartement", 1, 4, 250_000),
    ("house", 0.15, "Maison", 2, 6, 400_000),
    ("villa", 0.10, "Villa", 3, 8, 1_000_000),
    ("studio", 0.15, "Studio", 0, 0, 120_000),
    ("land", 0.08, "Terrain", 0, 0, 90_000),
    ("office", 0.07, "Bureau", 0, 0, 350_000),
)

FEATURES = ("meublé", "climatisé", "avec piscine", "vue mer", "avec jardin", "neuf", "lumineux", "calme",
            "proche de la plage", "avec parking", "sécurisé", "rénové")

SENTENCES = (
    "Situé dans un quartier calme et sécurisé, proche des commerces et des écoles.",
    "Cuisine équipée, salon spacieux et toilettes intérieures.",
    "Climatisation dans toutes les chambres, eau chaude et groupe électrogène.",
    "Piscine commune et jardin arboré entretenu par le syndic.",
    "À cinq minutes à pied de la plage et des restaurants.",
    "Gardiennage jour et nuit, parking pour deux voitures.",
    "Idéal pour un couple, un étudiant ou un jeune actif.",
    "Disponible immédiatement, caution de deux mois et un mois d'avance.",
    "Accès facile aux transports : cars rapides, Dakar Dem Dikk et TER à proximité.",
    "Grande terrasse avec vue dégagée sur la mer et le coucher du soleil.",
    "Appartement entièrement meublé et décoré, wifi inclus dans le loyer.",
    "Construction récente, finitions soignées, carrelage et menuiserie aluminium.",
    "Quartier résidentiel prisé des expatriés, ambassades et grandes écoles à proximité.",
    "Terrain viabilisé (eau, électricité), titre foncier disponible, zone d'habitation.",
    "Bureaux en open space avec salle de réunion, fibre optique et ascenseur.",
    "Maison familiale avec cour intérieure, puits et dépendance pour le personnel.",
    "Visites sur rendez-vous du lundi au samedi, contactez le propriétaire.",
    "Loyer négociable pour un bail de longue durée.",
    "La marché, la mosquée et le centre de santé sont à deux pas.",
    "Au deuxième étage d'un immeuble bien tenu, sans vis-à-vis.",
    "Chambres avec placards intégrés et salle de bain attenante.",
    "Compteurs d'eau et d'électricité individuels (Woyofal).",
    "Parfait pour des vacances à Saly ou à la Somone, location au mois possible.",
    "Quartier animé, proche du marché Sandaga et du centre-ville.",
)

# Of every 100 listings, these many are published; the rest are drafts (two thirds) or archived.
PUBLISHED_PERCENT = 90
LISTINGS_PER_OWNER = 25
AGENCIES = 5  # the first owners are agencies...
AGENCY_SHARE = 0.12  # ...and hold this share of the listings between them


def _weighted(items: tuple[tuple, ...]) -> tuple[list[str], list[float]]:
    names, bounds, total = [], [], 0.0
    scale = sum(item[1] for item in items)
    for item in items:
        total += item[1] / scale
        names.append(item[0])
        bounds.append(round(total, 6))
    bounds[-1] = 1.0
    return names, bounds


# r(n, salt): a deterministic draw in [0, 1) for row n.
_DRAW = "(abs(hashtextextended({n}::text || '{salt}', 0)) %% 1000000) / 1000000.0"


def _draw(n: str, salt: str) -> str:
    return _DRAW.format(n=n, salt=salt)


_OWNERS_SQL = """
insert into auth.users (instance_id, id, aud, role, email, encrypted_password, raw_app_meta_data,
                        raw_user_meta_data, created_at, updated_at,
                        confirmation_token, recovery_token, email_change_token_new, email_change)
select '00000000-0000-0000-0000-000000000000', md5('dousell-catalogue-owner-' || n)::uuid, 'authenticated',
       'authenticated', 'proprietaire' || n || '@catalogue.example.sn', '', '{}'::jsonb,
       jsonb_build_object('full_name', 'Propriétaire ' || n, 'role', 'owner'),
       now() - interval '3 years', now() - interval '3 years', '', '', '', ''
from generate_series(0, %(owners)s::int - 1) as n
on conflict (id) do nothing
"""

# One listing per n in [first, last]. Draws are salted per column; `k` numbers catalogue listings.
_LISTINGS_SQL = """
with drawn as (
  select n,
         {r_city} as r_city, {r_district} as r_district, {r_type} as r_type, {r_bed} as r_bed,
         {r_price} as r_price, {r_age} as r_age, {r_status} as r_status, {r_owner} as r_owner,
         {r_agency} as r_agency, {r_len} as r_len, {r_feature} as r_feature, {r_spelling} as r_spelling
  from generate_series(%(first)s, %(last)s::int) as n
), picked as (
  select d.*,
         (select i from unnest(%(city_bounds)s::float8[]) with ordinality as b(bound, i)
          where d.r_city < b.bound order by i limit 1) as city_i,
         (select i from unnest(%(type_bounds)s::float8[]) with ordinality as b(bound, i)
          where d.r_type < b.bound order by i limit 1) as type_i
  from drawn d
), shaped as (
  select p.n, p.r_price, p.r_age, p.r_status, p.r_len, p.r_feature,
         (%(cities)s::text[])[p.city_i] as city,
         ((%(districts)s::text[][])[p.city_i][1 + floor(p.r_district * (%(district_counts)s::int[])[p.city_i])::int])
           as district,
         (%(types)s::text[])[p.type_i] as type,
         (%(nouns)s::text[])[p.type_i] as noun,
         (%(bed_low)s::int[])[p.type_i]
           + floor(p.r_bed * (1 + (%(bed_high)s::int[])[p.type_i] - (%(bed_low)s::int[])[p.type_i]))::int as bedrooms,
         (%(base_price)s::int[])[p.type_i] as base_price,
         case when p.r_agency < %(agency_share)s then floor(p.r_owner * %(agencies)s::int)::int
              else %(agencies)s::int + floor(p.r_owner * greatest(%(owners)s::int - %(agencies)s::int, 1))::int end as owner_n,
         p.r_spelling
  from picked p
)
insert into public.properties (owner_id, title, description, city, district, type, price, bedrooms, status,
                               created_at, updated_at)
select md5('dousell-catalogue-owner-' || s.owner_n)::uuid,
       s.noun || case when s.bedrooms > 0 then ' ' || s.bedrooms || ' chambres' else '' end
         || ' ' || (%(features)s::text[])[1 + floor(s.r_feature * array_length(%(features)s::text[], 1))::int]
         || ' à ' || s.district,
       array_to_string(array(
         select (%(sentences)s::text[])[1 + (abs(hashtextextended(s.n::text || ':' || k, 0))
                                            %% array_length(%(sentences)s::text[], 1))]
         from generate_series(1, 1 + floor(s.r_len * 18)::int) as k), ' '),
       case when s.r_spelling < 0.01 then lower(s.city)
            when s.r_spelling < 0.02 then upper(s.city)
            else s.city end,
       s.district, s.type,
       greatest(5000, round(s.base_price * (0.5 + s.r_price * 1.5) / 5000) * 5000)::int,
       s.bedrooms,
       case when s.r_status * 100 < %(published_percent)s then 'published'
            when s.r_status * 100 < %(published_percent)s + (100 - %(published_percent)s) * 2 / 3.0 then 'draft'
            else 'archived' end,
       now() - s.r_age * interval '1095 days', now() - s.r_age * interval '1095 days'
from shaped s
"""


def _listings_sql() -> str:
    salts = {name: _draw("n", name) for name in ("city", "district", "type", "bed", "price", "age", "status",
                                                    "owner", "agency", "len", "feature", "spelling")}
    return _LISTINGS_SQL.format(**{f"r_{name}": expr for name, expr in salts.items()})


def published(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from public.properties where status = 'published'").fetchone()[0]


def grow(conn: psycopg.Connection, target_published: int) -> int:
    """Add generated listings until `target_published` are published (never removes any); the count
    reached. `conn` is a superuser connection in autocommit mode."""
    have = published(conn)
    if have >= target_published:
        return have
    owners = max(AGENCIES + 1, -(-target_published // LISTINGS_PER_OWNER))
    cities, city_bounds = _weighted(CITIES)
    types, type_bounds = _weighted(TYPES)
    width = max(len(c[2]) for c in CITIES)
    districts = [list(c[2]) + [c[2][0]] * (width - len(c[2])) for c in CITIES]  # a rectangular array
    params = {
        "owners": owners, "agencies": AGENCIES, "agency_share": AGENCY_SHARE,
        "cities": cities, "city_bounds": city_bounds, "districts": districts,
        "district_counts": [len(c[2]) for c in CITIES],
        "types": types, "type_bounds": type_bounds, "nouns": [t[2] for t in TYPES],
        "bed_low": [t[3] for t in TYPES], "bed_high": [t[4] for t in TYPES], "base_price": [t[5] for t in TYPES],
        "features": list(FEATURES), "sentences": list(SENTENCES), "published_percent": PUBLISHED_PERCENT,
    }
    conn.execute(_OWNERS_SQL, {"owners": owners})
    first = conn.execute("select count(*) from public.properties where owner_id in "
                         "(select md5('dousell-catalogue-owner-' || n)::uuid from generate_series(0, %s::int - 1) n)",
                         (owners,)).fetchone()[0]
    while have < target_published:
        # About PUBLISHED_PERCENT of each batch is published: ask for a little more than the gap.
        batch = max(10, int((target_published - have) * 100 / PUBLISHED_PERCENT * 1.02))
        with conn.transaction():
            conn.execute("set local session_replication_role = replica")
            conn.execute(_listings_sql(), {**params, "first": first, "last": first + batch - 1})
            first += batch
            excess = published(conn) - target_published
            if excess > 0:  # unpublish the newest extras, so the count is exact
                conn.execute("update public.properties set status = 'draft' where id in (select id from "
                             "public.properties where status = 'published' order by id desc limit %s)", (excess,))
        have = published(conn)
    conn.execute("vacuum analyze public.properties")
    conn.execute("vacuum analyze private.published_listings")  # what published_properties reads
    conn.execute("vacuum analyze public.profiles")
    return have


def add_slots(conn: psycopg.Connection, property_id: int, count: int) -> None:
    """`count` one-hour visit slots for the property, every hour from 08:00 to 18:00 Dakar time,
    starting tomorrow (the slots of a busy agency's listing)."""
    conn.execute("""
        insert into public.visit_slots (property_id, starts_at, ends_at)
        select %(id)s, t, t + interval '1 hour'
        from (select (date_trunc('day', now() at time zone 'Africa/Dakar') + interval '1 day'
                      + (h / 10) * interval '1 day' + (8 + h %% 10) * interval '1 hour') at time zone 'Africa/Dakar' as t
              from generate_series(0, %(count)s::int - 1) as h) as s
        on conflict (property_id, starts_at) do nothing
    """, {"id": property_id, "count": count})
    conn.execute("analyze public.visit_slots")
