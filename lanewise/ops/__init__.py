"""Operating lanewise: the servers a command needs, started and stopped with it."""
