"""The adapters: UDP sockets (sockets, offload, transport), files on disk (files, hashing, resume,
source), and the drivers that run a session against them and a clock (sending, receiving with
receiver_files)."""
