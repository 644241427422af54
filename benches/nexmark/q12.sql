-- Bids per bidder in processing-time windows; Eddy counts per bidder per 10-second event-time window.
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
