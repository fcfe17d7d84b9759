"""The comparison lab: network namespaces, an impairment router, TCP vs UDP runs."""
