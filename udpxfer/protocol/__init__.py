"""The sans-IO core: wire format, sessions and their state, pacing and congestion control.

Nothing here touches a socket, a file, a clock or a random source: bytes and the current time
go in, datagrams, chunks to store and events come out.
"""
