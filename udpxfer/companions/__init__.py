"""The classic TCP/UDP lab programs, rebuilt: echo, palindrome, UDP echo, TCP file transfer.

``palindrome`` and ``rtt`` are pure (no sockets, no clocks); ``runtime`` holds what every
server shares (binding, client numbering, clean shutdown); the other modules are the thin
network programs. No typer here: the CLI lives in ``udpxfer.cli.companions`` and
``udpxfer.cli.tcp_transfer``.
"""
