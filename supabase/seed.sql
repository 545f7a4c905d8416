-- Demo data of docs/api.md ("The local stack"), for `supabase db reset`, the local stack and tests.
--
-- Ids are fixed: code, tests and the contract name them (users, properties 123 and 789,
-- lease 123). Everything dated is relative to now() so the demo never goes stale: visit
-- slots are always in the coming days, the lease's past months are paid and the current
-- month is not (so POST /api/payments works out of the box).
-- Every user's password is `dousell-demo`.

-- Users ------------------------------------------------------------------------------------
-- The token columns are '' rather than NULL because GoTrue fails to sign in users whose
-- tokens are NULL. Profiles come from the on_auth_user_created trigger, role and all.

insert into auth.users (
  instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
  raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
  confirmation_token, recovery_token, email_change_token_new, email_change
)
select
  '00000000-0000-0000-0000-000000000000', u.id, 'authenticated', 'authenticated', u.email,
  extensions.crypt('dousell-demo', extensions.gen_salt('bf')), now(),
  '{"provider": "email", "providers": ["email"]}'::jsonb,
  jsonb_build_object('full_name', u.full_name, 'role', u.role, 'phone', u.phone),
  now() - interval '400 days', now() - interval '400 days',
  '', '', '', ''
from (values
  ('11111111-1111-4111-8111-111111111111'::uuid, 'awa.ndiaye@example.sn', 'Awa Ndiaye', 'owner', '+221771234501'),
  ('22222222-2222-4222-8222-222222222222'::uuid, 'ibrahima.fall@example.sn', 'Ibrahima Fall', 'owner', '+221772345602'),
  ('33333333-3333-4333-8333-333333333333'::uuid, 'moussa.diop@example.sn', 'Moussa Diop', 'tenant', '+221763456703'),
  ('44444444-4444-4444-8444-444444444444'::uuid, 'fatou.sarr@example.sn', 'Fatou Sarr', 'tenant', '+221784567804')
) as u (id, email, full_name, role, phone);

-- GoTrue signs in through an email identity.
insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
select u.id::text, u.id,
       jsonb_build_object('sub', u.id::text, 'email', u.email, 'email_verified', true),
       'email', now(), u.created_at, u.created_at
from auth.users u
where u.id in ('11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222',
               '33333333-3333-4333-8333-333333333333', '44444444-4444-4444-8444-444444444444');

-- Properties -------------------------------------------------------------------------------
-- Awa Ndiaye (Dakar): 18 published (123, 789, 101-116), drafts 117 and 118, archived 119.
-- Ibrahima Fall: Thiès 201-209 (draft 210), Saint-Louis 301-308 (draft 309), Mbour 401-409.
-- 44 published in all: Dakar 18, Thiès 9, Saint-Louis 8, Mbour 9.
-- age_days orders them (created_at = now() - age_days): 789 is the newest listing.

insert into public.properties (id, owner_id, title, description, city, district, type, price, bedrooms, status, created_at, updated_at)
select p.id, p.owner_id, p.title, p.description, p.city, p.district, p.type, p.price, p.bedrooms, p.status,
       now() - p.age_days * interval '1 day', now() - p.age_days * interval '1 day'
from (values
  -- Awa Ndiaye, Dakar
  (123, '11111111-1111-4111-8111-111111111111'::uuid, 'Appartement chambre-salon à la Médina',
   'Chambre-salon au deuxième étage, cuisine équipée, toilettes intérieures. À deux pas du marché Tilène et des cars rapides.',
   'Dakar', 'Médina', 'apartment', 50000, 1, 'published', 40.0),
  (789, '11111111-1111-4111-8111-111111111111', 'Villa 4 chambres avec piscine aux Almadies',
   'Grande villa lumineuse à 5 minutes de la corniche : 4 chambres avec salle de bain, piscine, jardin arboré, groupe électrogène et gardiennage. Visites sur rendez-vous.',
   'Dakar', 'Almadies', 'villa', 1200000, 4, 'published', 0.5),
  (101, '11111111-1111-4111-8111-111111111111', 'Studio meublé au Point E',
   'Studio entièrement meublé et climatisé, wifi inclus, dans une rue calme proche de l''UCAD. Idéal pour un étudiant ou un jeune actif.',
   'Dakar', 'Point E', 'studio', 175000, 0, 'published', 2),
  (102, '11111111-1111-4111-8111-111111111111', 'Appartement F4 standing à Mermoz',
   'Trois chambres dont une suite parentale, grand salon, balcon, parking sécurisé. Résidence avec ascenseur et gardien.',
   'Dakar', 'Mermoz', 'apartment', 450000, 3, 'published', 3),
  (103, '11111111-1111-4111-8111-111111111111', 'Duplex avec vue sur mer à Ouakam',
   'Duplex de trois chambres face aux Mamelles, terrasse sur le toit avec vue sur l''océan, cuisine américaine.',
   'Dakar', 'Ouakam', 'house', 650000, 3, 'published', 4),
  (104, '11111111-1111-4111-8111-111111111111', 'Appartement 3 pièces au Plateau',
   'En plein centre-ville, près de la place de l''Indépendance : deux chambres, salon, cuisine fermée. Proche des ministères et des banques.',
   'Dakar', 'Plateau', 'apartment', 400000, 2, 'published', 5),
  (105, '11111111-1111-4111-8111-111111111111', 'Plateau de bureaux au Plateau',
   'Open space de 180 m² avec trois bureaux fermés, salle de réunion, fibre optique et climatisation centrale.',
   'Dakar', 'Plateau', 'office', 900000, 0, 'published', 6),
  (106, '11111111-1111-4111-8111-111111111111', 'Maison familiale à Sacré-Cœur 3',
   'Maison de quatre chambres avec cour intérieure, deux salles d''eau, quartier résidentiel calme et bien desservi.',
   'Dakar', 'Sacré-Cœur', 'house', 350000, 4, 'published', 7),
  (107, '11111111-1111-4111-8111-111111111111', 'Studio neuf à Ouakam',
   'Studio neuf avec kitchenette et douche, compteur Woyofal individuel, à cinq minutes du rond-point de Ouakam.',
   'Dakar', 'Ouakam', 'studio', 120000, 0, 'published', 8),
  (108, '11111111-1111-4111-8111-111111111111', 'Villa R+1 aux Mamelles',
   'Villa à étage de cinq chambres, grand jardin, garage pour deux voitures, vue dégagée sur le phare des Mamelles.',
   'Dakar', 'Mamelles', 'villa', 1000000, 5, 'published', 9),
  (109, '11111111-1111-4111-8111-111111111111', 'Appartement meublé à Ngor',
   'Deux chambres meublées avec goût, à 200 mètres de la plage de Ngor. Ménage hebdomadaire inclus.',
   'Dakar', 'Ngor', 'apartment', 550000, 2, 'published', 10),
  (110, '11111111-1111-4111-8111-111111111111', 'Chambre-salon à Grand Yoff',
   'Chambre-salon au rez-de-chaussée, cour commune, proche de l''arrêt Dakar Dem Dikk. Eau comprise.',
   'Dakar', 'Grand Yoff', 'apartment', 90000, 1, 'published', 11),
  (111, '11111111-1111-4111-8111-111111111111', 'Appartement lumineux à Fann Résidence',
   'Trois chambres, double séjour, cuisine équipée et grande terrasse dans l''un des quartiers les plus prisés de Dakar.',
   'Dakar', 'Fann', 'apartment', 500000, 3, 'published', 12),
  (112, '11111111-1111-4111-8111-111111111111', 'Terrain clôturé à Yoff',
   'Terrain de 300 m² clôturé, accès bitumé, idéal pour un dépôt ou un parking. Bail de longue durée possible.',
   'Dakar', 'Yoff', 'land', 250000, 0, 'published', 13),
  (113, '11111111-1111-4111-8111-111111111111', 'Villa avec jardin à Mermoz Pyrotechnie',
   'Villa de cinq chambres sur un terrain de 600 m², jardin paysager, logement de gardien et forage.',
   'Dakar', 'Mermoz', 'villa', 1500000, 5, 'published', 14),
  (114, '11111111-1111-4111-8111-111111111111', 'Appartement F3 à Liberté 6',
   'Deux chambres, salon, balcon, au troisième étage d''un immeuble récent proche du rond-point JVC.',
   'Dakar', 'Liberté 6', 'apartment', 225000, 2, 'published', 15),
  (115, '11111111-1111-4111-8111-111111111111', 'Studio proche de l''UCAD à Fann',
   'Petit studio fonctionnel à dix minutes à pied de l''université, idéal pour étudiant.',
   'Dakar', 'Fann', 'studio', 100000, 0, 'published', 16),
  (116, '11111111-1111-4111-8111-111111111111', 'Local commercial à Sacré-Cœur',
   'Local de 90 m² en bordure de la VDN avec vitrine, réserve et toilettes. Forte visibilité.',
   'Dakar', 'Sacré-Cœur', 'office', 600000, 0, 'published', 17),
  (117, '11111111-1111-4111-8111-111111111111', 'Appartement en rénovation aux Almadies',
   'Travaux en cours, annonce à compléter.', 'Dakar', 'Almadies', 'apartment', 700000, 3, 'draft', 1),
  (118, '11111111-1111-4111-8111-111111111111', 'Maison à Ouakam (annonce en préparation)',
   '', 'Dakar', 'Ouakam', 'house', 300000, 3, 'draft', 1.5),
  (119, '11111111-1111-4111-8111-111111111111', 'Studio au Plateau (loué)',
   'Studio loué, annonce archivée.', 'Dakar', 'Plateau', 'studio', 150000, 0, 'archived', 90),

  -- Ibrahima Fall, Thiès
  (201, '22222222-2222-4222-8222-222222222222', 'Maison 4 chambres à Randoulène',
   'Maison de plain-pied avec grande cour, quatre chambres, salon spacieux. Quartier calme près de la gare.',
   'Thiès', 'Randoulène', 'house', 200000, 4, 'published', 2.5),
  (202, '22222222-2222-4222-8222-222222222222', 'Appartement 2 chambres à Cité Lamy',
   'Appartement au premier étage, deux chambres, salon, cuisine, balcon. Eau et électricité avec compteurs séparés.',
   'Thiès', 'Cité Lamy', 'apartment', 120000, 2, 'published', 18),
  (203, '22222222-2222-4222-8222-222222222222', 'Villa avec cour à Hersent',
   'Villa de quatre chambres entourée d''une cour plantée de manguiers, garage et logement annexe.',
   'Thiès', 'Hersent', 'villa', 300000, 4, 'published', 19),
  (204, '22222222-2222-4222-8222-222222222222', 'Studio meublé à Médina Fall',
   'Studio meublé avec ventilateur et kitchenette, proche du marché central de Thiès.',
   'Thiès', 'Médina Fall', 'studio', 75000, 0, 'published', 20),
  (205, '22222222-2222-4222-8222-222222222222', 'Bureau au centre-ville de Thiès',
   'Bureau de 60 m² en étage, deux pièces et accueil, à proximité de la préfecture.',
   'Thiès', 'Escale', 'office', 250000, 0, 'published', 21),
  (206, '22222222-2222-4222-8222-222222222222', 'Appartement F3 à Grand Thiès',
   'Deux chambres et un salon dans une petite résidence sécurisée, parking dans la cour.',
   'Thiès', 'Grand Thiès', 'apartment', 110000, 2, 'published', 22),
  (207, '22222222-2222-4222-8222-222222222222', 'Terrain à louer à Diakhao',
   'Terrain de 500 m² avec accès à l''eau, adapté au maraîchage ou au stockage.',
   'Thiès', 'Diakhao', 'land', 80000, 0, 'published', 23),
  (208, '22222222-2222-4222-8222-222222222222', 'Maison de plain-pied à Nguinth',
   'Trois chambres, salon, cuisine extérieure, cour carrelée. Proche des écoles.',
   'Thiès', 'Nguinth', 'house', 150000, 3, 'published', 24),
  (209, '22222222-2222-4222-8222-222222222222', 'Appartement neuf à Som',
   'Appartement neuf de deux chambres avec carrelage, placards et salle de bain moderne.',
   'Thiès', 'Som', 'apartment', 130000, 2, 'published', 25),
  (210, '22222222-2222-4222-8222-222222222222', 'Villa à Thiès (photos à venir)',
   '', 'Thiès', 'Cité Malick Sy', 'villa', 350000, 4, 'draft', 1),

  -- Ibrahima Fall, Saint-Louis
  (301, '22222222-2222-4222-8222-222222222222', 'Maison coloniale rénovée sur l''Île',
   'Belle demeure à balcons en fer forgé au cœur de l''île classée au patrimoine mondial, quatre chambres, patio.',
   'Saint-Louis', 'Île de Saint-Louis', 'house', 450000, 4, 'published', 26),
  (302, '22222222-2222-4222-8222-222222222222', 'Appartement avec vue sur le fleuve à Sor',
   'Deux chambres, séjour ouvert sur le fleuve Sénégal, à cinq minutes du pont Faidherbe.',
   'Saint-Louis', 'Sor', 'apartment', 180000, 2, 'published', 27),
  (303, '22222222-2222-4222-8222-222222222222', 'Villa à l''Hydrobase',
   'Villa de quatre chambres sur la Langue de Barbarie, entre fleuve et océan, grande terrasse.',
   'Saint-Louis', 'Hydrobase', 'villa', 500000, 4, 'published', 28),
  (304, '22222222-2222-4222-8222-222222222222', 'Studio à Ndar Toute',
   'Studio simple et propre, douche intérieure, proche du marché de Ndar Toute.',
   'Saint-Louis', 'Ndar Toute', 'studio', 85000, 0, 'published', 29),
  (305, '22222222-2222-4222-8222-222222222222', 'Appartement 3 chambres à Sor',
   'Grand appartement familial de trois chambres, salon double, proche de la gare routière.',
   'Saint-Louis', 'Sor', 'apartment', 200000, 3, 'published', 30),
  (306, '22222222-2222-4222-8222-222222222222', 'Maison familiale à Pikine',
   'Maison de quatre chambres avec cour, compteur individuel, quartier animé.',
   'Saint-Louis', 'Pikine', 'house', 140000, 4, 'published', 31),
  (307, '22222222-2222-4222-8222-222222222222', 'Bureau près du pont Faidherbe',
   'Deux bureaux et une salle d''attente au rez-de-chaussée d''un immeuble colonial rénové.',
   'Saint-Louis', 'Île de Saint-Louis', 'office', 350000, 0, 'published', 32),
  (308, '22222222-2222-4222-8222-222222222222', 'Terrain à Bango',
   'Terrain de 400 m² en bordure de route, viabilisé, à la sortie de Saint-Louis.',
   'Saint-Louis', 'Bango', 'land', 90000, 0, 'published', 33),
  (309, '22222222-2222-4222-8222-222222222222', 'Appartement à Balacoss (brouillon)',
   '', 'Saint-Louis', 'Balacoss', 'apartment', 120000, 2, 'draft', 1),

  -- Ibrahima Fall, Mbour
  (401, '22222222-2222-4222-8222-222222222222', 'Villa pieds dans l''eau à Saly Portudal',
   'Villa de cinq chambres directement sur la plage, piscine à débordement, personnel de maison disponible.',
   'Mbour', 'Saly Portudal', 'villa', 1500000, 5, 'published', 34),
  (402, '22222222-2222-4222-8222-222222222222', 'Appartement en résidence à Saly Niakhniakhal',
   'Deux chambres dans une résidence avec piscine commune et gardiennage 24 h/24.',
   'Mbour', 'Saly Niakhniakhal', 'apartment', 350000, 2, 'published', 35),
  (403, '22222222-2222-4222-8222-222222222222', 'Maison 3 chambres à Tefess',
   'Maison avec cour et terrasse, à dix minutes de la plage et du quai de pêche.',
   'Mbour', 'Tefess', 'house', 180000, 3, 'published', 36),
  (404, '22222222-2222-4222-8222-222222222222', 'Studio près de la plage à Saly',
   'Studio climatisé avec coin cuisine, à 100 mètres de la plage. Location au mois.',
   'Mbour', 'Saly Portudal', 'studio', 150000, 0, 'published', 37),
  (405, '22222222-2222-4222-8222-222222222222', 'Villa avec piscine à Warang',
   'Villa de quatre chambres dans un quartier résidentiel paisible, piscine et barbecue.',
   'Mbour', 'Warang', 'villa', 700000, 4, 'published', 38),
  (406, '22222222-2222-4222-8222-222222222222', 'Appartement F2 au centre de Mbour',
   'Une chambre, salon, cuisine, au cœur de Mbour près de la gare routière.',
   'Mbour', 'Escale', 'apartment', 100000, 1, 'published', 39),
  (407, '22222222-2222-4222-8222-222222222222', 'Local commercial près du marché central',
   'Boutique de 40 m² avec rideau métallique, idéale pour un commerce de détail.',
   'Mbour', 'Escale', 'office', 200000, 0, 'published', 41),
  (408, '22222222-2222-4222-8222-222222222222', 'Terrain viabilisé à Mbour 4',
   'Terrain de 250 m² viabilisé (eau, électricité), en zone d''habitation.',
   'Mbour', 'Mbour 4', 'land', 75000, 0, 'published', 42),
  (409, '22222222-2222-4222-8222-222222222222', 'Maison de vacances à Saly Joseph',
   'Trois chambres, jardin tropical, à cinq minutes à pied de la plage de Saly.',
   'Mbour', 'Saly Joseph', 'house', 400000, 3, 'published', 43)
) as p (id, owner_id, title, description, city, district, type, price, bedrooms, status, age_days);

-- Later inserts must not collide with the explicit ids.
select setval(pg_get_serial_sequence('public.properties', 'id'), (select max(id) from public.properties));

-- Leases -----------------------------------------------------------------------------------
-- 123: Moussa rents property 123 from Awa, active since the first day of the month before
--      last, 50 000 XOF a month; the two past months are paid, the current one is not.
-- 124: Moussa's earlier lease with Ibrahima in Thiès (property 202), ended.
-- Fatou Sarr has no lease.

insert into public.leases (id, property_id, tenant_id, monthly_rent, status, starts_on, ends_on)
select 123, 123, '33333333-3333-4333-8333-333333333333'::uuid, 50000, 'active',
       (date_trunc('month', now() at time zone 'Africa/Dakar') - interval '2 months')::date, null
union all
select 124, 202, '33333333-3333-4333-8333-333333333333'::uuid, 120000, 'ended',
       (date_trunc('month', now() at time zone 'Africa/Dakar') - interval '14 months')::date,
       (date_trunc('month', now() at time zone 'Africa/Dakar') - interval '2 months' - interval '1 day')::date;

select setval(pg_get_serial_sequence('public.leases', 'id'), (select max(id) from public.leases));

-- Payments ---------------------------------------------------------------------------------
-- months_ago: the period is that many months before the current Dakar month; paid on
-- the 3rd of that month at 10:00 Dakar time.

insert into public.rental_payments (lease_id, period, amount, status, provider_token, checkout_url, paid_at, created_at, updated_at)
select x.lease_id,
       to_char(m.month, 'YYYY-MM'),
       x.amount,
       'completed',
       'seed-' || x.lease_id || '-' || to_char(m.month, 'YYYY-MM'),
       null,
       (m.month + interval '2 days 10 hours') at time zone 'Africa/Dakar',
       (m.month + interval '2 days 9 hours 50 minutes') at time zone 'Africa/Dakar',
       (m.month + interval '2 days 10 hours') at time zone 'Africa/Dakar'
from (values (123, 50000, 2), (123, 50000, 1), (124, 120000, 3)) as x (lease_id, amount, months_ago)
cross join lateral (
  select date_trunc('month', now() at time zone 'Africa/Dakar') - x.months_ago * interval '1 month' as month
) as m;

-- Visit slots ------------------------------------------------------------------------------
-- Property 789: 12 free future slots, one hour each, on the next 4 days (day 1 = tomorrow,
-- Dakar time) at 10:00, 14:00 and 16:00 Africa/Dakar (= UTC, no daylight saving), plus
-- one slot yesterday at 10:00 (past: never offered, cannot be booked).
-- Property 102: tomorrow and the day after at 11:00; the second is booked by Fatou.
-- Property 201 (Ibrahima, Thiès): tomorrow at 15:00.

insert into public.visit_slots (property_id, starts_at, ends_at)
select s.property_id, t.starts_at, t.starts_at + interval '1 hour'
from (values
  (789, 1, 10), (789, 1, 14), (789, 1, 16),
  (789, 2, 10), (789, 2, 14), (789, 2, 16),
  (789, 3, 10), (789, 3, 14), (789, 3, 16),
  (789, 4, 10), (789, 4, 14), (789, 4, 16),
  (789, -1, 10),
  (102, 1, 11), (102, 2, 11),
  (201, 1, 15)
) as s (property_id, day, hour)
cross join lateral (
  select (date_trunc('day', now() at time zone 'Africa/Dakar') + make_interval(days => s.day, hours => s.hour))
         at time zone 'Africa/Dakar' as starts_at
) as t;

insert into public.visits (slot_id, property_id, visitor_id, starts_at, ends_at, created_at, updated_at)
select s.id, s.property_id, '44444444-4444-4444-8444-444444444444', s.starts_at, s.ends_at,
       now() - interval '1 day', now() - interval '1 day'
from public.visit_slots s
where s.property_id = 102
  and s.starts_at = (date_trunc('day', now() at time zone 'Africa/Dakar') + interval '2 days 11 hours') at time zone 'Africa/Dakar';

-- Notifications ----------------------------------------------------------------------------

insert into public.notifications (user_id, kind, title, body, data, read_at, created_at)
select n.user_id, n.kind, n.title, n.body, n.data, n.read_at, n.created_at
from (
  select '33333333-3333-4333-8333-333333333333'::uuid as user_id, 'welcome' as kind,
         'Bienvenue sur Dousell Immo' as title,
         'Votre compte locataire est prêt : payez votre loyer en ligne avec PayDunya.' as body,
         '{}'::jsonb as data, now() - interval '60 days' as read_at, now() - interval '61 days' as created_at
  union all
  select '33333333-3333-4333-8333-333333333333', 'payment_completed', 'Paiement reçu',
         format('Votre loyer %s pour « Appartement chambre-salon à la Médina » (50 000 FCFA) a bien été payé. Merci !',
                private.of_period(r.period)),
         jsonb_build_object('payment_id', r.id, 'lease_id', 123, 'property_id', 123, 'period', r.period, 'amount', 50000, 'currency', 'XOF'),
         r.paid_at + interval '1 hour', r.paid_at
  from public.rental_payments r where r.lease_id = 123
  union all
  select '11111111-1111-4111-8111-111111111111', 'rent_received', 'Loyer reçu',
         format('Moussa Diop a payé le loyer %s pour « Appartement chambre-salon à la Médina » : 50 000 FCFA.',
                private.of_period(r.period)),
         jsonb_build_object('payment_id', r.id, 'lease_id', 123, 'property_id', 123, 'period', r.period, 'amount', 50000, 'currency', 'XOF'),
         null, r.paid_at
  from public.rental_payments r where r.lease_id = 123
  union all
  select '44444444-4444-4444-8444-444444444444', 'visit_booked', 'Visite confirmée',
         format('Votre visite de « Appartement F4 standing à Mermoz » est confirmée le %s à %s.',
                to_char(v.starts_at at time zone 'Africa/Dakar', 'DD/MM/YYYY'),
                to_char(v.starts_at at time zone 'Africa/Dakar', 'HH24"h"MI')),
         jsonb_build_object('visit_id', v.id, 'property_id', v.property_id, 'starts_at', v.starts_at),
         null, v.created_at
  from public.visits v where v.visitor_id = '44444444-4444-4444-8444-444444444444'
  union all
  select '22222222-2222-4222-8222-222222222222', 'welcome', 'Bienvenue sur Dousell Immo',
         'Votre espace propriétaire est prêt : publiez vos annonces et suivez vos loyers.',
         '{}'::jsonb, null, now() - interval '30 days'
) as n;
