"""The adapters: UDP sockets (GSO/GRO, batch send and receive), files on disk, and the driver
that runs a session against a socket, a clock and the files."""
