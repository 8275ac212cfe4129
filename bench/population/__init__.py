"""The detection benchmark's parts (bench/detection.py runs them): the compressed clock
and limits (scale), the internet's MTAs (internet), SMTP sessions and their schedule
(traffic), what every member shares (actors), the honest senders (honest) and the bots
(bots), what became of them (outcome) and the table (report)."""
