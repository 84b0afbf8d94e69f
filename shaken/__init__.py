"""stirscope.shaken: sans-IO STIR/SHAKEN verification core (RFC 8224/8225/8226/8588/8946).

No sockets, no files, no clock: time, trust and the certificate source are parameters.
"""
