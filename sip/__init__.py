"""stirscope.sip: a sans-IO SIP message layer (RFC 3261 and friends); standard library only."""
