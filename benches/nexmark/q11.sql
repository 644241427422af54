-- User sessions: bids per bidder per session (a gap of 10 seconds ends a session).
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM SESSION(bid, date_time, INTERVAL '10' SECOND, bidder)
GROUP BY bidder, window_start, window_end
