"""Helpers shared by the tests, each written once: `processes` (running a system with a deadline, the `actors`
command in the background, processes from /proc, retrying and polling with deadlines), `actors` (the actor classes
the runtime tests spawn: importable by reference in every actor process, since pytest puts tests/ on sys.path and
the fork server gets the driver's sys.path) and `codec`."""
