CREATE TABLE bids (auction bigint, price bigint, ts timestamp) APPEND ONLY;
CREATE MATERIALIZED VIEW hot AS SELECT auction, count(*) AS n, max(price) AS top FROM bids GROUP BY auction;
INSERT INTO bids VALUES (1, 100, '2026-11-23 10:00:00'), (1, 120, '2026-11-23 10:00:01'), (2, 80, '2026-11-23 10:00:02');
SELECT * FROM hot ORDER BY auction;
\d hot
\dm
\d
SHOW MATERIALIZED VIEWS;
