-- What docker/compose.yaml's Grafana dashboard reads: a Nexmark source generating auction
-- events, and views over it that Eddy keeps current.
CREATE SOURCE IF NOT EXISTS nexmark FROM NEXMARK WITH (events_per_second = 1000);
CREATE MATERIALIZED VIEW IF NOT EXISTS bids_per_second AS
  SELECT date_bin(INTERVAL '1 second', date_time) AS time, count(*) AS bids, avg(price) AS avg_price
  FROM bid GROUP BY 1;
CREATE MATERIALIZED VIEW IF NOT EXISTS hot_auctions AS
  SELECT auction, count(*) AS bids, max(price) AS top_price
  FROM bid GROUP BY auction ORDER BY bids DESC LIMIT 10;
