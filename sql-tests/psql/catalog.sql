-- psql's describe commands over every kind of relation Eddy has (pg_catalog depth).
CREATE TABLE bids (auction bigint PRIMARY KEY, price bigint NOT NULL, bidder text, note varchar(20), amount numeric(10,2), at timestamptz);
CREATE TABLE clicks (id int, at timestamp) APPEND ONLY;
CREATE MATERIALIZED VIEW top_bids AS SELECT auction, max(price) AS top, count(*) AS n FROM bids GROUP BY auction;
CREATE VIEW big_bids AS SELECT auction, price FROM bids WHERE price > 100;
INSERT INTO bids VALUES (1, 150, 'ann', 'first', 1.50, '2025-01-01 10:00:00+00'), (2, 90, 'bob', NULL, NULL, NULL);
\d
\dt
\dv
\dm
\di
\dt+
\dm+
\dv+
\d+ bids
\d clicks
\d+ top_bids
\d+ big_bids
\sv big_bids
\dn
\dn+
\l
\du
\dp
\dT
\dx
\db
\d eddy_catalog.memory
\dv eddy_catalog.*
\dS pg_am
\d nowhere
