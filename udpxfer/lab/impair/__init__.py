"""What an impaired link does to datagrams, without sockets or clocks (sans-IO).

``models`` says what one direction of the emulated link does (loss, Gilbert-Elliott bursts,
delay and jitter, reordering, duplication, corruption, a rate bottleneck) and parses their
option values; ``policy`` applies a model to each datagram that arrives and says when it leaves;
``records`` keeps the ground truth, a record per datagram and counters per direction.
``udpxfer.lab.relay`` and ``udpxfer.lab.tunrouter`` are the socket loops around two policies.
"""
