-- Each bidder's last bid on each auction (ties broken by price and extra, so the result is
-- deterministic and can be checked).
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, price DESC, extra) AS rank_number
    FROM bid
) t
WHERE rank_number <= 1
