"""The actor runtime, on top of the transport (`actors._wire`): the system and its driver, supervision, spawning
(the fork server), the actor process (worker) and how it dispatches messages to the actor."""
