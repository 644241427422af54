-- The ten highest bids of each auction (ties broken by time, bidder and extra, so the result
-- is deterministic and can be checked).
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, date_time, bidder, extra) AS rank_number
    FROM bid
) t
WHERE rank_number <= 10
