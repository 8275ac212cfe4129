"""What the tests of every area share and that is no fixture: the programs under test and
where they are (paths), waiting for an event (waiting), the harnesses that start real
processes (daemon, harness for Exim, redis_server, redis_ha), configs, hooks, the
sendmail stand-in's mailbox and the skip marks. No test module lives here."""
